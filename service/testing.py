"""A real `bentoml serve` of this service in a subprocess, for the tests and the benchmarks.

`tests/service` (the over-HTTP tests) and `benchmarks/` (`service_bench`, `augment_benefit --latency`) both
start servers through `Server`, so there is one way to start, probe and stop one. It lives in the service
package because it serves `service.service:Generator` and both callers import the installed package (no
`sys.path` edits); it imports no project code itself (the server process imports the service), and
`bentofile.yaml` leaves it out of the Bento.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HTTP_CONNECTIONS = 64  # Server.http's pool: more than the most threads a caller shares it between


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve` on a free loopback port, in its own process group (so closing it ends its workers).

    `env` is added to this process's environment; output goes to `log`. Blocks until /readyz answers 200
    (RuntimeError with the log's tail if the server exits or is not ready after `ready_timeout` s).
    """

    def __init__(self, env: dict[str, str], log: Path, ready_timeout: float = 300.0):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log)
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.service:Generator", "--host", "127.0.0.1",
             "--port", str(self.port)],
            cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True)
        # Shared by the tests' request threads (up to 48). httpx's default pool keeps 20 idle connections and,
        # once it holds more than 20, closes "idle" ones outside its lock; a connection just handed to another
        # thread is still idle until that thread sends, so the client could close a socket another thread was
        # about to use (a client-side `ReadError: [Errno 9] Bad file descriptor`, seen once in a clean-clone
        # run). Keep-alive >= max connections means the pool never closes a connection by itself.
        self.http = httpx.Client(base_url=self.url, timeout=60, limits=httpx.Limits(
            max_connections=HTTP_CONNECTIONS, max_keepalive_connections=HTTP_CONNECTIONS))
        deadline = time.monotonic() + ready_timeout  # ~8 s normally; generous for a CPU starved by other jobs
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._release()
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.close()
        raise RuntimeError(f"bentoml serve not ready after {ready_timeout:.0f} s:\n{self.tail()}")

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the server's output."""
        if not self._out.closed:
            self._out.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def workers(self) -> list:
        """The server's worker processes (psutil.Process), which hold the models."""
        import psutil

        found = []
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if "_bentoml_impl.worker" in " ".join(p.cmdline()):
                    found.append(p)
            except psutil.Error:
                continue
        return found

    def http_stack(self) -> str:
        """Which event loop and HTTP parser the workers loaded (Linux: C extensions show in /proc/PID/maps)."""
        stacks = set()
        for p in self.workers():
            maps = Path(f"/proc/{p.pid}/maps").read_text()
            loop = "uvloop" if "uvloop" in maps else "asyncio"
            stacks.add(f"{loop} + {'httptools' if 'httptools' in maps else 'h11'}")
        return ", ".join(sorted(stacks))

    def worker_peak_rss_mb(self) -> list[float]:
        """Peak resident memory (VmHWM, Linux) of each worker, in MB."""
        peaks = []
        for p in self.workers():
            try:
                status = Path(f"/proc/{p.pid}/status").read_text()
                hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
                peaks.append(int(hwm.split()[1]) / 1024)
            except (OSError, StopIteration):
                continue
        return peaks

    def close(self) -> None:
        """SIGTERM the process group (graceful: jobs stop after their batch), SIGKILL after 15 s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._release()

    def _release(self) -> None:
        self.http.close()
        self._out.close()
