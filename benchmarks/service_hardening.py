"""Issue 16's closing figures, measured against a real `bentoml serve` of the bundled checkpoints (run by hand):

    .venv/bin/python -m benchmarks.service_hardening [--requests 20000] [--concurrency 64] [--uploads 200]

1. mixed load: `--requests` requests at `--concurrency` (60% /generate n=1, 20% /generate_image n=4,
   10% /translate of a 64x64 upload, 10% /models): errors, p50/p99 latency, worker RSS before and after;
2. concurrent uploads: `--uploads` simultaneous /translate uploads of a 1024x1024 greyscale PNG (~1 MiB, the
   largest the bundled 1-channel model takes under GANFORGE_MAX_PIXELS): worker RSS before, peak (VmHWM)
   and after, with GANFORGE_MAX_UPLOADS at its default.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from service.testing import Server

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("fashion_mnist_cgan", "fashion_mnist_edges2image")


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def rss_mb(server: Server) -> list[float]:
    return [round(p.memory_info().rss / 2**20, 1) for p in server.workers()]


async def mixed(url: str, requests: int, concurrency: int) -> dict:
    import aiohttp

    small = png(np.where(np.random.default_rng(0).random((64, 64)) > 0.8, 0, 255).astype(np.uint8))
    rng = random.Random(0)
    kinds = rng.choices(["generate", "generate_image", "translate", "models"], [60, 20, 10, 10], k=requests)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(enumerate(kinds))

    async def one(session, i: int, kind: str) -> None:
        start = time.perf_counter()
        if kind == "generate":
            call = session.post(f"{url}/generate", json={"class_name": i % 10, "seed": i})
        elif kind == "generate_image":
            call = session.post(f"{url}/generate_image", json={"class_name": i % 10, "n": 4, "seed": i})
        elif kind == "translate":
            form = aiohttp.FormData()
            form.add_field("image", small, filename="edges.png", content_type="image/png")
            call = session.post(f"{url}/translate", data=form)
        else:
            call = session.post(f"{url}/models")
        async with call as r:
            await r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
        latencies.append(time.perf_counter() - start)

    async def worker(session) -> None:
        for i, kind in queue:
            await one(session, i, kind)

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    return {"requests": len(ms), "concurrency": concurrency, "statuses": statuses,
            "errors": sum(n for s, n in statuses.items() if s != 200), "seconds": round(wall, 1),
            "p50_ms": round(ms[len(ms) // 2], 1), "p99_ms": round(ms[int(len(ms) * 0.99)], 1)}


async def uploads(url: str, count: int) -> dict:
    import aiohttp

    big = png(np.random.default_rng(1).integers(0, 256, (1024, 1024), dtype=np.uint8))
    statuses: dict[int, int] = {}

    async def one(session) -> None:
        form = aiohttp.FormData()
        form.add_field("image", big, filename="big.png", content_type="image/png")
        async with session.post(f"{url}/translate", data=form) as r:
            await r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=count),
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(one(session) for _ in range(count)))
    return {"uploads": count, "upload_bytes": len(big), "statuses": statuses,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--uploads", type=int, default=200)
    p.add_argument("--malloc-arena-max", type=int, default=0, help="glibc MALLOC_ARENA_MAX for the server (0: unset)")
    args = p.parse_args()
    from service.store import export

    with tempfile.TemporaryDirectory(prefix="ganforge-hardening-") as tmp:
        home = Path(tmp)
        os.environ["BENTOML_HOME"] = str(home / "bentoml")
        for name in MODELS:
            export(ROOT / "checkpoints" / name, name)
        env = {"BENTOML_HOME": str(home / "bentoml"), "GANFORGE_MODELS": ",".join(MODELS),
               "GANFORGE_JOBS_DIR": str(home / "jobs"), "BENTOML_DO_NOT_TRACK": "True"}
        if args.malloc_arena_max:
            env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
        out: dict = {"malloc_arena_max": args.malloc_arena_max or "unset", "machine": f"{os.cpu_count()} CPUs (shared with other work)", "date": time.strftime("%Y-%m-%d")}
        with Server(env, home / "server.log") as server:
            out["rss_idle_mb"] = rss_mb(server)
            out["mixed"] = asyncio.run(mixed(server.url, args.requests, args.concurrency))
            out["rss_after_mixed_mb"] = rss_mb(server)
            out["rss_peak_after_mixed_mb"] = [round(x, 1) for x in server.worker_peak_rss_mb()]
            if args.uploads:
                out["uploads"] = asyncio.run(uploads(server.url, args.uploads))
                out["rss_peak_mb"] = [round(x, 1) for x in server.worker_peak_rss_mb()]
                out["rss_after_uploads_mb"] = rss_mb(server)
            log = server.tail(10**6)
            out["tracebacks_in_log"] = log.count("Traceback")
            out["log_lines"] = len(log.splitlines())
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
