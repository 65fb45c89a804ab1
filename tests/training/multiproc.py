"""Real multi-process runs for the distributed tests: `spawn_ranks` starts one process per rank with the
variables torchrun would set (a gloo group on 127.0.0.1), bounded by a timeout; `torchrun` runs the CLI."""
from __future__ import annotations

import io
import multiprocessing as mp
import queue as queue_module
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn: Callable, rank: int, world: int, port: int, args: tuple, queue: Any) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "TQDM_DISABLE": "1"})
    torch.set_num_threads(1)  # two ranks on two cores
    try:
        buf = io.BytesIO()  # tensors as bytes: a queue would pass them as shared memory, gone when the rank exits
        torch.save(fn(*args), buf)
        queue.put((rank, "ok", buf.getvalue()))
    except BaseException:  # noqa: BLE001 - reported to the test, which fails with the traceback
        queue.put((rank, "error", traceback.format_exc()))


def spawn_ranks(fn: Callable, world: int = 2, args: tuple = (), timeout: float = 120) -> list[Any]:
    """Run `fn(*args)` in `world` fresh processes forming a gloo group; returns the results in rank order.
    `fn` must be importable (module level). A rank that fails or hangs fails the call with its traceback."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, args, queue), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while len(results) + len(errors) < world:
            try:
                rank, status, value = queue.get(timeout=1.0)
            except queue_module.Empty:
                if time.monotonic() > deadline:
                    errors.append(f"timed out after {timeout} s waiting for a rank")
                    break
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in results]
                if dead and queue.empty():
                    errors.append(f"rank(s) {dead} exited with {[procs[r].exitcode for r in dead]} before reporting")
                    break
                continue
            if status == "ok":
                results[rank] = torch.load(io.BytesIO(value), weights_only=False)
            else:
                errors.append(f"rank {rank} failed:\n{value}")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world)]


def torchrun(args: list[str], nproc: int = 2, timeout: float = 180, extra: list[str] = (),
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=N ... -m training.cli ARGS` on 127.0.0.1, bounded by `timeout`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", *extra, "-m", "training.cli", *args]
    run_env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=PROJECT_ROOT, env=run_env, capture_output=True, text=True, timeout=timeout)
