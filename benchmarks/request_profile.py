"""Where the milliseconds of one n = 1 request go, run by hand (not a test).

    python -m benchmarks.request_profile [--checkpoint checkpoints/fashion_mnist_cgan] [--requests 400]
        [--backend auto] [--out benchmarks/results/request_profile]

Serves one checkpoint with `bentoml serve` on 127.0.0.1 (a temporary BENTOML_HOME), sends `--requests`
sequential n = 1 /generate requests from one client, and samples the worker with py-spy (`pip install
py-spy`; 250 Hz, idle threads left out) while it does. Prints the client's p50/p99 and the share of the
worker's busy samples in each part of the path (the leaf-most ganforge / BentoML / library frame that
matches a bucket below), and writes the raw py-spy output (flamegraph SVG + collapsed stacks) to --out.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# (bucket, substrings of a frame "function (file:line)"), checked from the leaf up; first match wins.
BUCKETS = [
    ("forward pass (backend)", ("onnxruntime", "torch/nn/", "backends/engines.py")),
    ("noise (torch.randn per seed)", ("sampling.py:noise", "noise (models/sampling.py")),
    ("uint8 conversion", ("to_uint8",)),
    ("PNG encode", ("PngImagePlugin", "png_bytes", "PIL/Image.py")),
    ("base64", ("base64",)),
    ("pydantic validation / serialisation", ("pydantic",)),
    ("batcher (BentoML dispatcher)", ("marshal/dispatcher.py",)),
    ("ganforge service code", ("service/service.py", "service/limits.py", "service/served.py", "service/codec.py")),
    ("BentoML request handling", ("_bentoml_impl", "bentoml/_internal")),
    ("HTTP server (uvicorn, starlette)", ("uvicorn", "starlette", "httptools", "h11")),
    ("asyncio / event loop", ("asyncio", "uvloop")),
    ("threading / thread pool", ("threading.py", "concurrent/futures", "anyio")),
]


def bucket_of(stack: list[str]) -> str:
    for frame in reversed(stack):  # leaf first
        for name, keys in BUCKETS:
            if any(k in frame for k in keys):
                return name
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "fashion_mnist_cgan"))
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--backend", default="auto")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "request_profile"))
    args = p.parse_args()
    import httpx

    from service.store import export
    from service.testing import Server

    home = Path(tempfile.mkdtemp(prefix="ganforge-profile-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"BENTOML_HOME": str(home / "bentoml"), "BENTOML_DO_NOT_TRACK": "True", "GANFORGE_MODELS": "bench",
           "GANFORGE_BACKEND": args.backend, "PROMETHEUS_MULTIPROC_DIR": str(home / "prom")}
    (home / "prom").mkdir()
    os.environ.update(env)
    export(args.checkpoint, "bench")
    try:
        with Server(env, home / "server.log") as server:
            http = httpx.Client(base_url=server.url, timeout=60)
            for i in range(30):  # warm-up (batcher calibration, allocator)
                http.post("/generate", json={"n": 1, "class_name": i % 10, "seed": i})
            backend = http.post("/models", json={}).json()["models"][0]["backend"]
            worker = server.workers()[0].pid
            raw = out / "pyspy.txt"
            spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(worker), "--rate", "250", "--format", "raw",
                                    "--output", str(raw), "--nonblocking"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            times = []
            for i in range(args.requests):
                t = time.perf_counter()
                r = http.post("/generate", json={"n": 1, "class_name": i % 10, "seed": 1000 + i})
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            spy.send_signal(2)
            spy.wait(timeout=60)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    counts: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not n.isdigit() or any(idle in stack for idle in ("_worker (concurrent", "select (selectors", "epoll")):
            continue
        counts[bucket_of(frames)] += int(n)
        total += int(n)
    ms = 1000 * np.asarray(times)
    report = {"requests": args.requests, "backend": backend["by_batch_size"], "p50_ms": round(float(np.median(ms)), 2),
              "p99_ms": round(float(np.percentile(ms, 99)), 2), "busy_samples": total,
              "share": {k: round(v / total, 3) for k, v in counts.most_common()} if total else {}}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
