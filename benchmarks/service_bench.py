"""Service benchmark, run by hand (not a test): raw generator throughput vs the BentoML service over HTTP.

    .venv/bin/python -m benchmarks.service_bench [--checkpoint checkpoints/fashion_mnist_cgan] \
        [--results benchmarks/RESULTS.md] [--json out.json]

Side by side, on this machine, in one run, for each inference backend of --backends (default: torch,
torch-autocast, onnxruntime and auto; backends/):
  raw      `models.sampling.generate` + uint8 conversion in-process at batch 1, 16, 64 through the backend
           (`backends.choose`, as the service builds it), the backends alternated in ROUNDS rounds
  http     `bentoml serve` on 127.0.0.1 (a temporary BENTOML_HOME holding only the checkpoint), one server per
           backend (GANFORGE_BACKEND) with adaptive batching on, and for --off-backend (default auto) also
           batching off (GANFORGE_BATCHING), n = 1 at concurrency 1/16/64 and n = 16 at concurrency 4;
           with --compare-http-stack also batching on with uvicorn's pure-Python fallbacks (asyncio loop, h11
           parser: uvloop and httptools hidden from the server), to measure what the two C extensions buy;
           with --compare-gc also batching on with Python's default garbage collector (the service's
           `gc.freeze()` and thresholds made no-ops by a `sitecustomize` on the server's PYTHONPATH); with
           --compare-layout also the raw rows with the weights in the contiguous (NCHW) layout instead of
           the channels-last one `models.load` gives on the CPU
After its patterns each server also answers POST /models (no image drawn) at concurrency 64: the requests/s
the HTTP stack and this load generator reach alone, the ceiling of any n = 1 pattern on this machine.
Reports images/s, p50/p99 request latency and peak RSS per server worker, and checks issue 19's targets
(and issue 4's, on the --off-backend servers).
Loopback only; every pattern is bounded by a request count and a time cap.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import write_results
from service.testing import Server  # the same `bentoml serve` harness as the tests

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = [(1, 1), (1, 16), (1, 64), (16, 4)]  # (images per request, concurrent clients)
RAW_BATCHES = (1, 16, 64)
BACKENDS = ("torch", "torch-autocast", "onnxruntime", "auto")
ROUNDS = 3  # raw: each (batch, backend) is timed in ROUNDS slices, the backends alternating
MARK_START, MARK_END = "<!-- service_bench:start -->", "<!-- service_bench:end -->"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def raw_rows(checkpoint: str, backends: tuple[str, ...], seconds: float, layouts: tuple[str, ...]) -> list[dict]:
    """In-process generate + to_uint8 at each RAW_BATCHES size through each backend (the service's ceiling,
    without PNG or HTTP); `auto` is chosen once, timed at RAW_BATCHES, as a server would."""
    import torch

    import models
    from backends import choose
    from models.sampling import generate, to_uint8

    rows = []
    for layout in layouts:
        G, meta = models.load(checkpoint, "cpu")  # channels-last, as the service loads it
        if layout == "NCHW":
            G = G.to(memory_format=torch.contiguous_format)
        runners = {b: choose(G, meta, "cpu", b, RAW_BATCHES) for b in backends}
        for batch in RAW_BATCHES:
            labels = [i % G.num_classes for i in range(batch)]
            times: dict[str, list[float]] = {b: [] for b in backends}
            for b, runner in runners.items():
                for _ in range(3):  # warm-up
                    to_uint8(generate(runner, labels, list(range(batch))), meta)
            for _ in range(ROUNDS):
                for b, runner in runners.items():
                    start = time.perf_counter()
                    while len(times[b]) < (2000 // batch + 20) and time.perf_counter() - start < seconds / ROUNDS:
                        t = time.perf_counter()
                        to_uint8(generate(runner, labels, list(range(batch))), meta)
                        times[b].append(time.perf_counter() - t)
            for b, ts in times.items():
                rows.append({"backend": b, "ran": runners[b].for_batch(batch).name, "batch": batch, "iters": len(ts),
                             "images_per_s": batch * len(ts) / sum(ts), "p50_ms": 1000 * percentile(ts, 50),
                             "p99_ms": 1000 * percentile(ts, 99), "torch_threads": torch.get_num_threads(),
                             "layout": layout})
                print("raw", rows[-1], flush=True)
    return rows


async def load(url: str, n: int, concurrency: int, requests: int, seconds: float, model: str,
               route: str = "/generate") -> dict:
    """`concurrency` clients each sending /generate requests of `n` images back to back (`route="/models"`:
    the cheapest API route instead, no image drawn: requests/s of the HTTP stack and this client alone).

    aiohttp, not httpx: one httpx AsyncClient with 64 connections cost so much CPU on these 2 shared cores
    that it halved the measured throughput at concurrency 64 and put p99 at 3.2 s (aiohttp against the same
    server, same minute: 235 vs 87 images/s, p99 372 ms vs 3.2 s; RESULTS.md)."""
    import aiohttp

    latencies: list[float] = []
    errors: dict[int, int] = {}
    sent = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:
        async def one(i: int) -> None:
            body = {"class_name": i % 10, "n": n, "seed": i * n, "model": model} if route == "/generate" else {}
            t = time.perf_counter()
            async with client.post(route, json=body) as r:
                await r.read()
                if r.status == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[r.status] = errors.get(r.status, 0) + 1

        async def worker() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                await one(sent)

        for i in range(concurrency):  # warm-up: each connection once, and the batcher's calibration
            await one(10**6 + i)
        latencies.clear()
        errors.clear()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"n": n, "concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "images_per_s": n * len(latencies) / elapsed, "p50_ms": 1000 * percentile(latencies, 50),
            "p99_ms": 1000 * percentile(latencies, 99)}


def batch_stats(url: str) -> dict:
    """BentoML's adaptive batch size histogram for render_batch: calls and mean requests per call."""
    import httpx

    total = count = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_") and "render_batch" in line:
            kind = line.split("{")[0].rsplit("_", 1)[1]
            if kind == "sum":
                total += float(line.rsplit(" ", 1)[1])
            elif kind == "count":
                count += float(line.rsplit(" ", 1)[1])
    return {"batcher_calls": count, "mean_requests_per_call": total / count if count else None}


def markdown(result: dict) -> str:
    lines = [f"### Service benchmark ({result['when']}, {result['machine']})", "",
             f"Checkpoint `{result['checkpoint']}`; server: 1 worker, GANFORGE_THREADS={result['threads']}, "
             f"max_batch_size {result['max_batch_size']}; load average (1/5/15 min) before "
             f"{'/'.join(f'{x:.1f}' for x in result['load_before'])}, after "
             f"{'/'.join(f'{x:.1f}' for x in result['load_after'])} (2 cores shared with other work).", "",
             "| path | batch / n x concurrency | images/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for r in sorted(result["raw"], key=lambda r: (r.get("layout", ""), r["batch"])):
        layout = "" if r.get("layout", "channels-last") == "channels-last" else f" ({r['layout']} layout)"
        ran = f" (ran {r['ran']})" if r["backend"] == "auto" else ""
        lines.append(f"| raw in-process{layout}, {r['backend']}{ran} | batch {r['batch']} | {r['images_per_s']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | |")
    for mode in result["http"]:
        for r in result["http"][mode]["patterns"]:
            lines.append(f"| HTTP, {mode} | n={r['n']} x {r['concurrency']} | {r['images_per_s']:.0f} | "
                         f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors'] or ''} |")
    lines.append("")
    for mode, h in result["http"].items():
        ceiling = h.get("stack_ceiling")
        if ceiling:
            lines.append(f"- {mode}: POST /models (no image) at concurrency 64: {ceiling['images_per_s']:.0f} "
                         f"requests/s, p50 {ceiling['p50_ms']:.1f} ms: the HTTP stack's and this client's ceiling")
        lines.append(f"- {mode}: {h['http_stack']}; peak RSS per worker "
                     f"{', '.join(f'{m:.0f} MB' for m in h['rss_mb'])}; batcher, over all patterns: {h['batching']}; "
                     f"backend by batch size: {h.get('backend')}")
    for title, checks in result["targets"].items():
        lines += ["", f"Targets ({title}):"] + [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks]
    return "\n".join(lines) + "\n"


def targets(result: dict, off_backend: str) -> dict[str, list[tuple[str, bool]]]:
    """Issue 19's targets (the auto backend) and, where the batching-off server ran, issue 4's."""
    raw = {(r["backend"], r["batch"]): r["images_per_s"] for r in result["raw"]
           if r.get("layout", "channels-last") == "channels-last"}
    rss = max([m for h in result["http"].values() for m in h["rss_mb"]] or [float("nan")])
    out: dict[str, list[tuple[str, bool]]] = {}
    if ("auto", 1) in raw and ("torch", 1) in raw and "auto" in result["http"]:
        on = {(r["n"], r["concurrency"]): r for r in result["http"]["auto"]["patterns"]}
        best = max(v for (b, _), v in raw.items() if b == "auto")
        s1, s64 = raw[("auto", 1)] / raw[("torch", 1)], raw[("auto", 64)] / raw[("torch", 64)]
        n16 = on[(16, 4)]["images_per_s"] / best
        out["issue 19, auto backend"] = [
            (f"raw auto is {s1:.2f}x torch float32 eager at batch 1 (>= 3x)", s1 >= 3),
            (f"raw auto is {s64:.2f}x torch float32 eager at batch 64 (>= 2x)", s64 >= 2),
            (f"HTTP n=1 x 1 p50 {on[(1, 1)]['p50_ms']:.1f} ms (<= 6 ms)", on[(1, 1)]["p50_ms"] <= 6),
            (f"HTTP n=1 x 64 {on[(1, 64)]['images_per_s']:.0f} images/s (>= 900) with p99 "
             f"{on[(1, 64)]['p99_ms']:.0f} ms (<= 150 ms)",
             on[(1, 64)]["images_per_s"] >= 900 and on[(1, 64)]["p99_ms"] <= 150),
            (f"HTTP n=16 x 4 reaches {100 * n16:.0f}% of auto's best raw throughput (>= 85%)", n16 >= 0.85),
            (f"peak RSS per worker {rss:.0f} MB (<= 1024 MB)", rss <= 1024)]
    if off_backend in result["http"] and f"{off_backend}, batching off" in result["http"]:
        on = {(r["n"], r["concurrency"]): r for r in result["http"][off_backend]["patterns"]}
        off = {(r["n"], r["concurrency"]): r for r in result["http"][f"{off_backend}, batching off"]["patterns"]}
        best = max(v for (b, _), v in raw.items() if b == off_backend)
        n16 = on[(16, 4)]["images_per_s"] / best
        speedup = on[(1, 64)]["images_per_s"] / max(off[(1, 64)]["images_per_s"], 1e-9)
        out[f"issue 4, {off_backend} backend"] = [
            (f"n=16 x 4 reaches {100 * n16:.0f}% of the best raw throughput (>= 70%)", n16 >= 0.7),
            (f"n=1 x 64 with batching is {speedup:.1f}x without (>= 3x)", speedup >= 3),
            (f"p99 at concurrency 64 with batching is {on[(1, 64)]['p99_ms']:.0f} ms (< 250 ms)",
             on[(1, 64)]["p99_ms"] < 250),
            (f"peak RSS per worker {rss:.0f} MB (<= 1536 MB)", rss <= 1536)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "fashion_mnist_cgan"))
    p.add_argument("--name", default="bench_cgan", help="store name used inside the temporary BENTOML_HOME")
    p.add_argument("--requests", type=int, default=4000, help="requests per HTTP pattern (upper bound)")
    p.add_argument("--seconds", type=float, default=20.0, help="time cap per pattern")
    p.add_argument("--threads", default=os.environ.get("GANFORGE_THREADS", "2"))
    p.add_argument("--max-batch-size", default=os.environ.get("GANFORGE_MAX_BATCH_SIZE", "64"))
    p.add_argument("--results", help="update the service section of this markdown file (benchmarks/RESULTS.md)")
    p.add_argument("--json", help="also write the raw numbers here")
    p.add_argument("--compare-http-stack", action="store_true",
                   help="also serve with batching on and uvloop/httptools hidden (asyncio + h11)")
    p.add_argument("--compare-gc", action="store_true",
                   help="also serve with batching on and Python's default garbage collector settings")
    p.add_argument("--compare-layout", action="store_true",
                   help="also measure raw throughput with the weights in the contiguous (NCHW) layout")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated GANFORGE_BACKEND values")
    p.add_argument("--off-backend", default="auto", help="the backend also served with batching off ('' = none)")
    args = p.parse_args()

    home = Path(tempfile.mkdtemp(prefix="ganforge-bench-"))
    os.environ.update(BENTOML_HOME=str(home / "bentoml"), BENTOML_DO_NOT_TRACK="True")
    try:
        from service.store import export

        export(args.checkpoint, args.name)
        result: dict = {"checkpoint": args.checkpoint, "when": time.strftime("%Y-%m-%d %H:%M"),
                        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "threads": args.threads,
                        "max_batch_size": args.max_batch_size, "load_before": os.getloadavg(), "raw": [], "http": {}}
        backends = tuple(b for b in args.backends.split(",") if b)
        layouts = ("channels-last", "NCHW") if args.compare_layout else ("channels-last",)
        result["raw"] = raw_rows(args.checkpoint, backends, args.seconds, layouts)
        # label -> (GANFORGE_BATCHING, extra environment)
        modes = {b: ("on", {"GANFORGE_BACKEND": b}) for b in backends}
        if args.off_backend:
            modes[f"{args.off_backend}, batching off"] = ("off", {"GANFORGE_BACKEND": args.off_backend})
        if args.compare_http_stack:
            hidden = home / "hide-fast-http"
            hidden.mkdir()
            for module in ("uvloop", "httptools"):  # uvicorn falls back to asyncio and h11 on ImportError
                (hidden / f"{module}.py").write_text("raise ImportError('hidden by service_bench.py')\n")
            path = os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")]))
            modes["auto (asyncio + h11)"] = ("on", {"PYTHONPATH": path})
        if args.compare_gc:
            default_gc = home / "default-gc"
            default_gc.mkdir()
            (default_gc / "sitecustomize.py").write_text(
                "import gc  # service_bench.py: keep Python's default GC (the service's tuning is a no-op)\n"
                "gc.freeze = lambda: None\ngc.set_threshold = lambda *a: None\n")
            path = os.pathsep.join(filter(None, [str(default_gc), os.environ.get("PYTHONPATH")]))
            modes["auto (default GC)"] = ("on", {"PYTHONPATH": path})
        for i, (mode, (batching, extra)) in enumerate(modes.items()):
            env = {"GANFORGE_MODELS": args.name, "GANFORGE_BATCHING": batching,
                   "GANFORGE_THREADS": str(args.threads), "GANFORGE_MAX_BATCH_SIZE": str(args.max_batch_size),
                   **extra}
            server = Server(env, home / f"server-{i}-{batching}.log")
            try:
                patterns = []
                for n, concurrency in PATTERNS:
                    patterns.append(asyncio.run(load(server.url, n, concurrency, args.requests, args.seconds,
                                                     args.name)))
                    print(f"http batching={mode}", patterns[-1], flush=True)
                ceiling = asyncio.run(load(server.url, 1, 64, args.requests, args.seconds, args.name, "/models"))
                print(f"http batching={mode} /models", ceiling, flush=True)
                import httpx

                served = httpx.post(f"{server.url}/models", json={}, timeout=30).json()["models"][0]
                result["http"][mode] = {"patterns": patterns, "stack_ceiling": ceiling,
                                        "rss_mb": server.worker_peak_rss_mb(),
                                        "batching": batch_stats(server.url), "http_stack": server.http_stack(),
                                        "backend": served["backend"]["by_batch_size"],
                                        "precision_check": served["precision_check"]}
            finally:
                server.close()
        result["load_after"] = os.getloadavg()
        result["targets"] = targets(result, args.off_backend)
        text = markdown(result)
        print(text)
        if args.results:
            write_results(Path(args.results), text, MARK_START, MARK_END)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
