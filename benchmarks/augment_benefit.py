"""Does synthetic data help a classifier? Fashion-MNIST, real test set (issue 5). Run by hand, not a test.

    .venv/bin/python -m benchmarks.augment_benefit [--checkpoint checkpoints/fashion_mnist_cgan] \
        [--results benchmarks/RESULTS.md] [--json out.json]
    .venv/bin/python -m benchmarks.augment_benefit --quick              # smoke run: tiny budget, one seed
    .venv/bin/python -m benchmarks.augment_benefit --latency [--results benchmarks/RESULTS.md]
                                                    # online /generate latency idle vs while a job runs

Every condition trains the same small CNN (models.DomainClassifier, width --width) from scratch with the
same recipe as `ganforge train-classifier` (`training.classifier.fit_classifier`: optimiser, random flip +
2-pixel shift, label smoothing) and number of steps, so all get the same compute; each is repeated for --seeds seeds and tested on the 10,000 real test
images:
  real N            N real training images per class (--sizes, default 50, 200, 1000), a subset per seed
  real N + syn 1:r  the same subset plus r*N synthetic images per class (--ratios, default 1, 4)
  syn only M        M synthetic images per class and no real one: the Classification Accuracy Score
  real full         the whole real training set (6000 per class): the ceiling
Synthetic images come from one npz job of `augment` (the engine of `ganforge augment` and the
service's jobs), cached and resumable under --cache; every seed draws its own subset of that pool.
Batches are drawn uniformly from the union, so at 1:r a fraction r/(1+r) of each batch is synthetic.
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
from benchmarks.service_bench import load  # the service benchmark's load generator
from service.testing import Server  # the same `bentoml serve` harness as the tests

ROOT = Path(__file__).resolve().parents[1]
MARK_START, MARK_END = "<!-- augment_benefit:start -->", "<!-- augment_benefit:end -->"
LAT_START, LAT_END = "<!-- augment_latency:start -->", "<!-- augment_latency:end -->"
FULL = 6000  # Fashion-MNIST training images per class


# --- the classifier benefit -----------------------------------------------------------------------------

def fit_and_test(images, labels, test, steps: int, batch_size: int, width: int, seed: int, device) -> float:
    """Train a fresh DomainClassifier for `steps` steps on uint8 (N, 1, H, W) images; real test accuracy."""
    import torch

    from models import DomainClassifier, DomainClassifierConfig
    from training.classifier import accuracy, fit_classifier, random_batches  # `ganforge train-classifier`'s recipe

    torch.manual_seed(seed)
    cfg = DomainClassifierConfig(num_classes=10, img_resolution=images.shape[-1], img_channels=1, width=width)
    model = DomainClassifier(cfg).to(device)
    gen = torch.Generator().manual_seed(seed)
    batches = ((images[idx], labels[idx]) for idx in random_batches(len(images), batch_size, steps, gen))
    fit_classifier(model, batches, steps, gen, lr=2e-3)  # with replacement: any set size, the same compute
    return accuracy(model, test)


def per_class_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of n random items of every class (sorted)."""
    picks = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n:
            raise ValueError(f"class {c} has {len(idx)} items, {n} requested")
        picks.append(rng.choice(idx, n, replace=False))
    return np.sort(np.concatenate(picks))


def synthetic_pool(checkpoint: str, per_class: int, cache: Path, seed: int, truncation: float | None,
                   device: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(images uint8 (N, 28, 28), labels) of a cached `augment` npz job; resumes if interrupted."""
    from augment import augment_checkpoint, checkpoint_job

    job = checkpoint_job(checkpoint, per_class=per_class, seed=seed, truncation=truncation, format="npz")
    out = cache / f"pool-{job.checkpoint_sha256[:12]}-{per_class}-s{seed}-t{truncation}"
    t = time.perf_counter()
    report = augment_checkpoint(checkpoint, out, device, per_class=per_class, seed=seed, truncation=truncation,
                                format="npz")
    print(f"synthetic pool: {report['total']} images in {out} ({report['generated']} generated now, "
          f"{time.perf_counter() - t:.0f} s)", flush=True)
    data = np.load(out / "images.npz")
    return data["images"], data["labels"], job.checkpoint_sha256


def conditions(sizes: list[int], ratios: list[float], syn_only: list[int], full: bool) -> list[dict]:
    out = []
    for n in sizes:
        out.append({"name": f"real {n}", "real": n, "syn": 0})
        out += [{"name": f"real {n} + syn 1:{r:g}", "real": n, "syn": int(round(r * n))} for r in ratios]
    out += [{"name": f"syn only {m}", "real": 0, "syn": m} for m in syn_only]
    if full:
        out.append({"name": "real full", "real": FULL, "syn": 0})
    return out


def benefit(args: argparse.Namespace) -> dict:
    import torch

    from models.sampling import pick_device
    from training.data import load_dataset

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    real_labels = train.labels.numpy()
    plan = conditions(args.sizes, args.ratios, args.syn_only, not args.no_full)
    need = max([c["syn"] for c in plan] + [1])
    syn_images, syn_labels, sha = synthetic_pool(args.checkpoint, need, Path(args.cache), args.syn_seed,
                                                 args.truncation, args.device)
    syn_images = torch.from_numpy(syn_images)[:, None]  # (N, 28, 28) -> (N, 1, 28, 28)
    syn_labels_t = torch.from_numpy(syn_labels)
    rows = []
    for cond in plan:
        accs = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            parts_x, parts_y = [], []
            if cond["real"]:
                idx = np.arange(len(real_labels)) if cond["real"] == FULL else \
                    per_class_subset(real_labels, cond["real"], rng)
                parts_x.append(train.images[idx])
                parts_y.append(train.labels[idx])
            if cond["syn"]:
                idx = per_class_subset(syn_labels, cond["syn"], rng)
                parts_x.append(syn_images[idx])
                parts_y.append(syn_labels_t[idx])
            t = time.perf_counter()
            acc = fit_and_test(torch.cat(parts_x), torch.cat(parts_y), test, args.steps, args.batch_size,
                               args.width, seed, device)
            accs.append(acc)
            print(f"{cond['name']:>24} seed {seed}: test accuracy {acc:.4f} ({time.perf_counter() - t:.0f} s)",
                  flush=True)
        rows.append({**cond, "accuracies": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))})
    return {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "device": str(device), "checkpoint": args.checkpoint, "checkpoint_sha256": sha, "steps": args.steps,
            "batch_size": args.batch_size, "width": args.width, "seeds": args.seeds,
            "truncation": args.truncation, "rows": rows}


def benefit_markdown(result: dict) -> str:
    base = {r["real"]: r for r in result["rows"] if r["syn"] == 0}
    lines = [f"### Synthetic augmentation benefit ({result['when']}, {result['machine']}, {result['device']})", "",
             f"Checkpoint `{result['checkpoint']}` (sha256 {result['checkpoint_sha256'][:12]}…), truncation "
             f"{result['truncation']}; classifier: DomainClassifier width {result['width']}, {result['steps']} steps "
             f"of batch {result['batch_size']} for every condition; seeds: {result['seeds']}; "
             "real Fashion-MNIST test set (10,000 images).", "",
             "| condition | real / class | synthetic / class | test accuracy (mean ± std) | vs same real alone |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        ref = base.get(r["real"]) if r["real"] and r["syn"] else None
        delta = f"{100 * (r['mean'] - ref['mean']):+.1f} pt" if ref else ""
        lines.append(f"| {r['name']} | {r['real']} | {r['syn']} | {100 * r['mean']:.1f}% ± {100 * r['std']:.1f} "
                     f"| {delta} |")
    return "\n".join(lines) + "\n"


# --- online latency while a job runs --------------------------------------------------------------------

def latency(args: argparse.Namespace) -> dict:
    """/generate latency on a real `bentoml serve`: idle, then while an augmentation job runs."""
    import httpx

    home = Path(tempfile.mkdtemp(prefix="ganforge-augbench-"))
    os.environ.update(BENTOML_HOME=str(home / "bentoml"), BENTOML_DO_NOT_TRACK="True")
    name = "bench_cgan"
    try:
        from service.store import export

        export(args.checkpoint, name)
        env = {"GANFORGE_MODELS": name, "GANFORGE_JOBS_DIR": str(home / "jobs"),
               "GANFORGE_JOB_MAX_IMAGES": str(max(args.job_images, 1))}
        server = Server(env, home / "server.log")
        patterns = [(1, 1), (1, 16), (16, 4)]
        result: dict = {"when": time.strftime("%Y-%m-%d %H:%M"), "checkpoint": args.checkpoint,
                        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "job_images": args.job_images,
                        "idle": [], "busy": []}
        try:
            for n, c in patterns:
                result["idle"].append(asyncio.run(load(server.url, n, c, args.requests, args.seconds, name)))
                print("idle", result["idle"][-1], flush=True)
            with httpx.Client(base_url=server.url, timeout=60) as http:
                job = http.post("/augment/submit", json={"total": args.job_images, "seed": 0, "format": "npz"}).json()

                def status() -> dict:
                    return http.post("/augment/status", json={"job_id": job["job_id"]}).json()

                while status()["state"] == "queued":
                    time.sleep(0.2)
                t0, done0 = time.perf_counter(), status()["done"]
                for n, c in patterns:
                    result["busy"].append(asyncio.run(load(server.url, n, c, args.requests, args.seconds, name)))
                    print("while job runs", result["busy"][-1], flush=True)
                s = status()
                result["job_state_after"] = s["state"]
                result["job_images_under_load"], result["load_seconds"] = s["done"] - done0, time.perf_counter() - t0
                result["job_images_per_s_under_load"] = result["job_images_under_load"] / result["load_seconds"]
                t1, done1 = time.perf_counter(), s["done"]  # the job alone, for comparison
                time.sleep(min(args.seconds, 10))
                s = status()
                result["job_images_per_s_alone"] = (s["done"] - done1) / (time.perf_counter() - t1) \
                    if s["state"] == "running" else None
        finally:
            server.close()
        return result
    finally:
        shutil.rmtree(home, ignore_errors=True)


def latency_markdown(result: dict) -> str:
    lines = [f"### Online latency while an augmentation job runs ({result['when']}, {result['machine']})", "",
             f"Checkpoint `{result['checkpoint']}`; one `bentoml serve` worker, default settings; a "
             f"{result['job_images']}-image npz job submitted between the two measurements.", "",
             "| /generate n x concurrency | idle p50 / p99 ms | during the job p50 / p99 ms | idle / during img/s |",
             "|---|---|---|---|"]
    for a, b in zip(result["idle"], result["busy"]):
        lines.append(f"| n={a['n']} x {a['concurrency']} | {a['p50_ms']:.1f} / {a['p99_ms']:.1f} | "
                     f"{b['p50_ms']:.1f} / {b['p99_ms']:.1f} | {a['images_per_s']:.0f} / {b['images_per_s']:.0f} |")
    alone = result.get("job_images_per_s_alone")
    from service.config import Settings

    chunk = Settings().job_chunk_size  # the job's progress counter moves in whole chunks
    lines += ["", f"Job progress under that load: {result['job_images_under_load']} images in "
                  f"{result['load_seconds']:.0f} s ({result['job_images_per_s_under_load']:.0f} images/s; progress "
                  f"is counted in finished {chunk}-image chunks, so a job that has not finished one shows 0); "
                  f"alone: {f'{alone:.0f} images/s' if alone else 'finished before it could be measured'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "fashion_mnist_cgan"))
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[50, 200, 1000],
                   help="real images per class, comma-separated")
    p.add_argument("--ratios", type=lambda s: [float(x) for x in s.split(",")], default=[1, 4],
                   help="synthetic per real image, comma-separated (1:r)")
    p.add_argument("--syn-only", type=lambda s: [int(x) for x in s.split(",") if x], default=[1000, 4000],
                   help="synthetic images per class for the synthetic-only (CAS) rows")
    p.add_argument("--no-full", action="store_true", help="skip the full real training set row")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps per condition (the same for all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=16)  # ~50 s per condition and seed on 2 cores
    p.add_argument("--truncation", type=float, default=None)
    p.add_argument("--syn-seed", type=int, default=10**9, help="seed of the synthetic pool's image 0")
    p.add_argument("--cache", default=str(ROOT / "runs" / "augment_benefit"), help="synthetic pool folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 50, ratio 1, syn-only 100, 30 steps, "
                                                        "1 seed, no full set")
    p.add_argument("--latency", action="store_true", help="measure online latency while a job runs instead")
    p.add_argument("--job-images", type=int, default=100_000, help="--latency: size of the background job")
    p.add_argument("--requests", type=int, default=400, help="--latency: requests per pattern (upper bound)")
    p.add_argument("--seconds", type=float, default=15.0, help="--latency: time cap per pattern")
    p.add_argument("--results", help="update this markdown file (benchmarks/RESULTS.md)")
    p.add_argument("--json", help="also write the raw numbers here")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.ratios, args.syn_only, args.steps, args.seeds, args.no_full = [50], [1], [100], 30, 1, True
    if args.latency:
        result = latency(args)
        text, marks = latency_markdown(result), (LAT_START, LAT_END)
    else:
        result = benefit(args)
        text, marks = benefit_markdown(result), (MARK_START, MARK_END)
    print(text)
    if args.results:
        write_results(Path(args.results), text, *marks)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
