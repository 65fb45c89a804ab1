"""Does synthetic data help a classifier? Fashion-MNIST, real test set (issue 5). Run by hand, not a test.

    .venv/bin/python -m benchmarks.augment_benefit [--checkpoint checkpoints/fashion_mnist_cgan] \
        [--results benchmarks/RESULTS.md] [--json out.json]
    .venv/bin/python -m benchmarks.augment_benefit --quick              # smoke run: tiny budget, one seed
    .venv/bin/python -m benchmarks.augment_benefit --latency [--results benchmarks/RESULTS.md]
                                                    # online /generate latency idle vs while a job runs

Every condition trains the same classifier from scratch (--evaluator: the small CNN models.DomainClassifier,
width --width; or, networks of other families than the filter's, an MLP or torchvision's ResNet-18 with a
1-channel stem) with the same recipe as `ganforge train-classifier` (`training.classifier.fit_classifier`:
optimiser, random flip + 2-pixel shift, label smoothing) and number of steps, so all get the same compute;
each is repeated for --seeds seeds and tested on the 10,000 real test images:
  real N            N real training images per class (--sizes, default 50, 200, 1000), a subset per seed
  real N + syn 1:r  the same subset plus r*N synthetic images per class (--ratios, default 1, 4)
  syn only M        M synthetic images per class and no real one: the Classification Accuracy Score
  real full         the whole real training set (6000 per class): the ceiling
and, with --recipes, the recipes of the literature at every --sizes N (issue 20):
  mix:a             every batch a fraction a synthetic, drawn from the whole pool (--pool-per-class images per
                    class, much larger than the real set below 6000), the rest real: class-balanced mixing at a
                    fixed ratio, however few the real images
  filtered:a        the same from the pool filtered by classifier confidence (--filter-p under --filter, the
                    bundled classifier by default: a different network from the one each row trains and tests)
  dfiltered:a       the same from the pool filtered by the run's own discriminator (the top --d-keep fraction of
                    each class by D's logit; the checkpoint must have been exported with its discriminator)
  KIND:a:anneal     mix, filtered or dfiltered with the synthetic fraction falling linearly from a on the first
                    batch to 0 on the last (synthetic early, real at the end, in one run and one schedule)
  pretrain          half the steps on the synthetic pool, then half on the real images (a fresh optimiser and
                    schedule for each half: the same total compute); pretrain:filtered / pretrain:dfiltered
                    pretrain on that filtered pool instead
Synthetic images come from npz jobs of `augment` (the engine of `ganforge augment` and the service's jobs,
with its sample selection for the filtered pool), cached and resumable under --cache; every seed draws its own
subset of that pool. The fixed 1:r rows draw batches uniformly from the union (a fraction r/(1+r) synthetic).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
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
POOL_LABELS = {"mix": "mix", "filtered": "filtered mix", "dfiltered": "D-filtered mix"}  # recipe -> row name


# --- the classifier benefit -----------------------------------------------------------------------------

def domain_cnn(width: int, resolution: int):
    """The project's small CNN (models.DomainClassifier), the architecture of the bundled classifier that filters."""
    from models import DomainClassifier, DomainClassifierConfig

    return DomainClassifier(DomainClassifierConfig(num_classes=10, img_resolution=resolution, img_channels=1,
                                                   width=width))


def resnet18(width: int, resolution: int):
    """torchvision's ResNet-18 (random init, 11 M parameters), its stem taking one channel: an evaluator of
    another family than the filter's network, for gains that are not one architecture's taste. `width` unused."""
    import torch
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=10)
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def mlp(width: int, resolution: int):
    """A multilayer perceptron (pixels -> 512 -> 256 -> 10, ReLU): no convolution, so no prior shared with the
    filter's CNN; cheap enough for every row on 2 cores. `width` unused."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(resolution * resolution, 512), nn.ReLU(),
                         nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))


# --evaluator: the network every row trains from scratch and tests (ResNet-18: ~4 min a row on 2 CPU cores)
EVALUATORS = {"domain": domain_cnn, "mlp": mlp, "resnet18": resnet18}
EVALUATOR_NAMES = {"domain": "DomainClassifier width {width}", "mlp": "MLP 512-256 (no convolution)",
                   "resnet18": "torchvision ResNet-18 (1-channel stem)"}


def fit_and_test(stages, test, width: int, seed: int, device, evaluator: str = "domain") -> float:
    """Train a fresh classifier (EVALUATORS[evaluator]) through `stages` and return its real test accuracy.

    `stages`: a list of (sampler, steps); sampler(gen, batch_count) yields that many (uint8 images (B, 1, H, W),
    labels) batches. Each stage is one `fit_classifier` run (`ganforge train-classifier`'s recipe: optimiser,
    one-cycle schedule, flip + shift, label smoothing), so a condition's compute is the sum of its steps."""
    import torch

    from training.classifier import accuracy, fit_classifier

    torch.manual_seed(seed)
    model = EVALUATORS[evaluator](width, test.images.shape[-1]).to(device)
    gen = torch.Generator().manual_seed(seed)
    for sampler, steps in stages:
        fit_classifier(model, sampler(gen, steps), steps, gen, lr=2e-3)
    return accuracy(model, test)


def uniform(images, labels, batch_size: int):
    """Batches drawn uniformly with replacement from one set (any set size gets the same compute)."""
    from training.classifier import random_batches

    def sampler(gen, steps):
        return ((images[idx], labels[idx]) for idx in random_batches(len(images), batch_size, steps, gen))

    return sampler


def mixed(real, syn, fraction: float, batch_size: int, anneal: bool = False):
    """Batches of round(fraction * batch_size) synthetic rows (uniform over the pool, balanced by class as the
    pool is) and the rest real (uniform over the real subset, balanced by class as the subset is). `anneal`:
    the fraction falls linearly from `fraction` on the first batch to 0 on the last."""
    import torch

    def sampler(gen, steps):
        for t in range(steps):
            share = fraction * (1 - t / max(steps - 1, 1)) if anneal else fraction
            k = int(round(share * batch_size))
            r = torch.randint(len(real[0]), (batch_size - k,), generator=gen)
            s = torch.randint(len(syn[0]), (k,), generator=gen)
            yield torch.cat([real[0][r], syn[0][s]]), torch.cat([real[1][r], syn[1][s]])

    return sampler


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
                   device: str, select: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """(images uint8 (N, 28, 28), labels, selection summary) of a cached `augment` npz job
    (with `select`: the job's sample selection, e.g. {"classifier": path, "min_confidence": 0.5}); resumes."""
    from augment import augment_checkpoint, checkpoint_job

    job = checkpoint_job(checkpoint, per_class=per_class, seed=seed, truncation=truncation, format="npz",
                         select=select)
    tag = ""
    if select and select.get("min_confidence") is not None:
        tag += f"-p{select['min_confidence']}-{job.selection.classifier_sha256[:8]}"
    if select and select.get("d_keep_fraction") is not None:
        tag += f"-d{select['d_keep_fraction']}-{job.selection.discriminator_sha256[:8]}"
    out = cache / f"pool-{job.checkpoint_sha256[:12]}-{per_class}-s{seed}-t{truncation}{tag}"
    t = time.perf_counter()
    report = augment_checkpoint(checkpoint, out, device, per_class=per_class, seed=seed, truncation=truncation,
                                format="npz", select=select)
    print(f"synthetic pool: {report['total']} images in {out} ({report['generated']} generated now, "
          f"{time.perf_counter() - t:.0f} s)", flush=True)
    data = np.load(out / "images.npz")
    summary = json.loads((out / "selection.json").read_text()) if select else None
    return data["images"], data["labels"], summary


RECIPES_ALLOWED = "mix:A, filtered:A, dfiltered:A (each optionally :anneal), pretrain[:filtered|:dfiltered]"


_PRETRAIN = re.compile(r"pretrain(?::(filtered|dfiltered))?")
_MIX = re.compile(r"(mix|filtered|dfiltered):(\d*\.?\d+)(:anneal)?")


def _recipe_row(recipe: str, n: int) -> dict:
    """A --recipes entry -> its row's name and training recipe (see the module docstring)."""
    if m := _PRETRAIN.fullmatch(recipe):
        pool = m[1]
        return {"name": f"real {n}: pretrain {pool + ' ' if pool else ''}syn, finetune", "recipe": "pretrain",
                **({"pool": pool} if pool else {})}
    if (m := _MIX.fullmatch(recipe)) and 0 < float(m[2]) <= 1:
        kind, a, anneal = m[1], float(m[2]), bool(m[3])
        return {"name": f"real {n} + {POOL_LABELS[kind]} {a:g}" + ("→0" if anneal else ""), "recipe": "mix",
                "fraction": a, **({"anneal": True} if anneal else {}), **({"pool": kind} if kind != "mix" else {})}
    raise ValueError(f"unknown recipe {recipe!r}; allowed: {RECIPES_ALLOWED} (0 < A <= 1)")


def conditions(sizes: list[int], ratios: list[float], syn_only: list[int], full: bool,
               recipes: list[str] = (), pool: int = 0) -> list[dict]:
    """The rows to train. `recipes`: mix:A (a fraction A of every batch from the pool), filtered:A / dfiltered:A
    (the same from the classifier- / discriminator-filtered pool), any of them with :anneal (the fraction falls
    from A to 0 over the run), pretrain[:filtered|:dfiltered]; `ratios` (fixed 1:r sets) only where the real set
    is below 1000."""
    out = []
    for n in sizes:
        out.append({"name": f"real {n}", "real": n, "syn": 0, "recipe": "union"})
        if n < 1000:
            out += [{"name": f"real {n} + syn 1:{r:g}", "real": n, "syn": int(round(r * n)), "recipe": "union"}
                    for r in ratios]
        for recipe in recipes:
            out.append({"real": n, "syn": pool, **_recipe_row(recipe, n)})
    out += [{"name": f"syn only {m}", "real": 0, "syn": m, "recipe": "union"} for m in syn_only]
    for kind in dict.fromkeys(_recipe_row(r, 0).get("pool") for r in recipes):
        if kind in ("filtered", "dfiltered"):
            out += [{"name": f"{kind} syn only {m}", "real": 0, "syn": m, "recipe": "union", "pool": kind}
                    for m in syn_only]
    if full and FULL not in sizes:
        out.append({"name": "real full", "real": FULL, "syn": 0, "recipe": "union"})
    return out


def benefit(args: argparse.Namespace) -> dict:
    import torch

    from models.checkpoint import file_hash
    from models.sampling import pick_device
    from training.data import load_dataset

    device = pick_device(args.device)
    sha = file_hash(args.checkpoint)  # the weights every pool's job records
    if args.threads:
        torch.set_num_threads(args.threads)
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    real_labels = train.labels.numpy()
    recipes = [r for r in args.recipes.split(",") if r]
    plan = conditions(args.sizes, args.ratios, args.syn_only, not args.no_full, recipes, args.pool_per_class)
    pools = {}
    for kind in dict.fromkeys(c.get("pool", "plain") for c in plan if c["syn"]):
        need = max(c["syn"] for c in plan if c["syn"] and c.get("pool", "plain") == kind)
        select = {"filtered": {"classifier": args.filter, "min_confidence": args.filter_p},
                  "dfiltered": {"d_keep_fraction": args.d_keep}}.get(kind)
        images, labels, summary = synthetic_pool(args.checkpoint, need, Path(args.cache), args.syn_seed,
                                                 args.truncation, args.device, select)
        pools[kind] = (torch.from_numpy(images)[:, None], torch.from_numpy(labels), summary)
    rows = []
    for cond in plan:
        accs = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            real = syn = None
            if cond["real"]:
                idx = np.arange(len(real_labels)) if cond["real"] == FULL else \
                    per_class_subset(real_labels, cond["real"], rng)
                real = (train.images[idx], train.labels[idx])
            if cond["syn"]:
                images, labels, _ = pools[cond.get("pool", "plain")]
                idx = per_class_subset(labels.numpy(), cond["syn"], rng)
                syn = (images[idx], labels[idx])
            B, steps = args.batch_size, args.steps
            if cond["recipe"] == "mix":
                stages = [(mixed(real, syn, cond["fraction"], B, cond.get("anneal", False)), steps)]
            elif cond["recipe"] == "pretrain":
                stages = [(uniform(*syn, B), steps // 2), (uniform(*real, B), steps - steps // 2)]
            else:
                parts = [p for p in (real, syn) if p is not None]
                stages = [(uniform(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), B), steps)]
            t = time.perf_counter()
            acc = fit_and_test(stages, test, args.width, seed, device, args.evaluator)
            accs.append(acc)
            print(f"{cond['name']:>36} seed {seed}: test accuracy {acc:.4f} ({time.perf_counter() - t:.0f} s)",
                  flush=True)
        rows.append({**cond, "accuracies": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))})
    filtered, dfiltered = pools.get("filtered"), pools.get("dfiltered")
    return {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "device": str(device), "checkpoint": args.checkpoint, "checkpoint_sha256": sha, "steps": args.steps,
            "batch_size": args.batch_size, "width": args.width, "evaluator": args.evaluator, "seeds": args.seeds,
            "truncation": args.truncation, "rows": rows,
            "filter": {"classifier": args.filter, "min_confidence": args.filter_p,
                       "acceptance": filtered[2]["total"]} if filtered else None,
            "d_filter": {"d_keep_fraction": args.d_keep, "acceptance": dfiltered[2]["total"]} if dfiltered else None}


def benefit_markdown(result: dict) -> str:
    base = {r["real"]: r for r in result["rows"] if r["syn"] == 0}
    lines = [f"### Synthetic augmentation benefit ({result['when']}, {result['machine']}, {result['device']})", "",
             f"Checkpoint `{result['checkpoint']}` (sha256 {result['checkpoint_sha256'][:12]}…), truncation "
             f"{result['truncation']}; classifier: "
             f"{EVALUATOR_NAMES[result.get('evaluator', 'domain')].format(width=result['width'])}, {result['steps']} steps "
             f"of batch {result['batch_size']} for every condition; seeds: {result['seeds']}; "
             "real Fashion-MNIST test set (10,000 images)." + filter_line(result.get("filter"))
             + d_filter_line(result.get("d_filter")), "",
             "| condition | real / class | synthetic / class | test accuracy (mean ± std) | vs same real alone |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        ref = base.get(r["real"]) if r["real"] and r["syn"] else None
        delta = f"{100 * (r['mean'] - ref['mean']):+.1f} pt" if ref else ""
        if ref and abs(r["mean"] - ref["mean"]) <= r["std"] + ref["std"]:
            delta += " (within the spread)"
        lines.append(f"| {r['name']} | {r['real']} | {r['syn']} | {100 * r['mean']:.1f}% ± {100 * r['std']:.1f} "
                     f"| {delta} |")
    return "\n".join(lines) + "\n"


def filter_line(f: dict | None) -> str:
    if not f:
        return ""
    acc = f["acceptance"]
    return (f" Filtered pool: candidates kept when `{f['classifier']}` gives the requested class probability >= "
            f"{f['min_confidence']} ({acc['accepted']} of {acc['drawn']} drawn, {100 * acc['acceptance_rate']:.1f} %);"
            " each row's own classifier (trained from scratch on that row's data) is what is tested.")


def d_filter_line(f: dict | None) -> str:
    if not f:
        return ""
    acc = f["acceptance"]
    return (f" Discriminator-filtered pool: the top {f['d_keep_fraction']} of each class by the run's own D "
            f"({acc['accepted']} of {acc['drawn']} drawn kept).")


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
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[50, 200, 1000],
                   help="real images per class, comma-separated")
    p.add_argument("--ratios", type=lambda s: [float(x) for x in s.split(",") if x], default=[1, 4],
                   help="synthetic per real image, comma-separated (1:r)")
    p.add_argument("--syn-only", type=lambda s: [int(x) for x in s.split(",") if x], default=[1000, 4000],
                   help="synthetic images per class for the synthetic-only (CAS) rows")
    p.add_argument("--no-full", action="store_true", help="skip the full real training set row")
    p.add_argument("--recipes", default="", help=f"comma-separated: {RECIPES_ALLOWED} (A: the synthetic fraction "
                                                 "of every batch; see the docstring)")
    p.add_argument("--pool-per-class", type=int, default=4000, help="synthetic pool size per class for the recipes")
    p.add_argument("--filter", default=str(ROOT / "checkpoints" / "fashion_mnist_classifier"),
                   help="classifier checkpoint of the filtered pool")
    p.add_argument("--filter-p", type=float, default=0.5, help="the filtered pool's min_confidence")
    p.add_argument("--d-keep", type=float, default=0.5, help="the dfiltered pool's d_keep_fraction")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps per condition (the same for all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=16)  # ~50 s per condition and seed on 2 cores
    p.add_argument("--evaluator", choices=list(EVALUATORS), default="domain",
                   help="the classifier every row trains from scratch and tests: the project's CNN (--width), an "
                        "MLP, or torchvision's ResNet-18 (slow on a CPU)")
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
        args.pool_per_class = 100
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
