"""The streamed data path: images/s of the DataLoader alone (0/1/2 workers) against the training step, and
peak memory of a short training run over a large ImageFolder against a small one.

    python benchmarks/data_bench.py make-folder --out /tmp/if200k --images 200000
    python benchmarks/data_bench.py throughput --root /tmp/if200k --workers 0 1 2
    python benchmarks/data_bench.py rss --root /tmp/if200k --steps 20

Writes one JSON line per measurement to stdout (append them to benchmarks/RESULTS.md by hand, with `uptime`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def make_folder(out: Path, images: int, classes: int, size: tuple[int, int], seed: int = 0, start: int = 0) -> None:
    """`images` small non-square JPEGs over `classes` class folders (a coloured block on noise); `start`
    skips the first ones (to finish an interrupted folder)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    t0 = time.time()
    for c in range(classes):
        (out / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    noise = rng.integers(0, 80, (64, h, w, 3), dtype=np.uint8)  # reused tiles: writing is the cost here
    for i in range(start, images):
        c = i % classes
        arr = noise[i % 64].copy()
        x, y = rng.integers(0, w // 2), rng.integers(0, h // 2)
        arr[y : y + h // 2, x : x + w // 2] = ((c * 97) % 256, (c * 53 + 80) % 256, (c * 31 + 160) % 256)
        Image.fromarray(arr).save(out / f"class_{c:02d}" / f"{i:07d}.jpg", quality=85)
    print(json.dumps({"made": str(out), "images": images - start, "classes": classes, "size": [w, h],
                      "seconds": round(time.time() - t0, 1)}))


def throughput(root: str, resolution: int, batch: int, batches: int, workers: list[int]) -> None:
    """Images/s of ImageFolder decoding through the DataLoader, after one warm-up batch."""
    import torch

    sys.path.insert(0, str(PROJECT_ROOT))
    from training.datasets import ImageFolderFiles
    from training.loader import GlobalBatchSampler, batches as iterate, make_loader

    torch.set_num_threads(1)
    t0 = time.time()
    ds = ImageFolderFiles(root, "train", resolution)
    index_s = time.time() - t0
    for w in workers:
        sampler = GlobalBatchSampler(len(ds), batch, seed=0, hflip=True, draws=range(batches + 1))
        it = iterate(make_loader(ds, sampler, workers=w))
        next(it)
        start = time.time()
        n = sum(len(labels) for _, labels in it)
        secs = time.time() - start
        print(json.dumps({"measure": "data_path", "root": root, "images_in_folder": len(ds),
                          "index_seconds": round(index_s, 1), "resolution": resolution, "batch": batch,
                          "workers": w, "images": n, "seconds": round(secs, 2), "images_per_s": round(n / secs, 1)}))


def train_run(root: str, workdir: Path, steps: int, sets: list[str]) -> dict:
    """`ganforge train configs/imagefolder_cgan.yaml` for `steps` steps, polling the process tree's RSS."""
    import psutil

    cmd = [sys.executable, "-m", "training.cli", "train", str(PROJECT_ROOT / "configs" / "imagefolder_cgan.yaml"),
           "--device", "cpu"]
    for s in [f"data.root={root}", f"workdir={workdir}", f"export={workdir / 'export'}", f"steps={steps}",
              "classifier=null", "collapse_check_every=0", "sample_every=100000", "state_every=100000", *sets]:
        cmd += ["--set", s]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    start = time.time()
    proc = psutil.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_main = peak_tree = 0
    while proc.poll() is None:
        try:
            procs = [proc] + proc.children(recursive=True)
            rss = [p.memory_info().rss for p in procs]
        except psutil.Error:
            continue
        peak_main, peak_tree = max(peak_main, rss[0]), max(peak_tree, sum(rss))
        time.sleep(0.05)
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode:
        raise SystemExit(f"training failed ({proc.returncode}):\n{err[-2000:]}")
    sys.path.insert(0, str(PROJECT_ROOT))
    from models import read_metadata

    prov = read_metadata(workdir / "export").get("provenance", {})
    return {"peak_rss_main_mib": round(peak_main / 2**20), "peak_rss_tree_mib": round(peak_tree / 2**20),
            "wall_seconds": round(time.time() - start, 1), "train_seconds": prov.get("train_seconds"),
            "steps": steps}


def rss(root: str, steps: int, workers: int, sets: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        n = sum(len(files) for _, _, files in os.walk(root))
        out = train_run(root, Path(tmp), steps, [f"data.workers={workers}", *sets])
        print(json.dumps({"measure": "train_rss", "root": root, "files": n, "workers": workers, **out}))


SMALL_MODEL = ["generator.base_channels=16", "discriminator.base_channels=16"]


def step_speed(root: str, steps: int, workers: int, sets: list[str]) -> None:
    """The training step's consumption: images per second the D steps read (batch * d_steps per step)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = train_run(root, Path(tmp), steps, [f"data.workers={workers}", *sets])
    import yaml

    cfg = yaml.safe_load((PROJECT_ROOT / "configs" / "imagefolder_cgan.yaml").read_text())
    over = dict(s.split("=", 1) for s in sets)
    batch, d_steps = int(over.get("batch_size", cfg["batch_size"])), int(over.get("d_steps", cfg["d_steps"]))
    per_step = out["train_seconds"] / steps
    print(json.dumps({"measure": "train_step", "root": root, "sets": sets, "batch": batch, "d_steps": d_steps,
                      "seconds_per_step": round(per_step, 3),
                      "data_images_per_s_needed": round(batch * d_steps / per_step, 1), **out}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-folder")
    m.add_argument("--out", required=True)
    m.add_argument("--images", type=int, default=200_000)
    m.add_argument("--classes", type=int, default=10)
    m.add_argument("--size", default="80x60", help="WxH of the JPEGs (non-square)")
    m.add_argument("--start", type=int, default=0, help="first image number (resume an interrupted folder)")
    t = sub.add_parser("throughput")
    t.add_argument("--root", required=True)
    t.add_argument("--resolution", type=int, default=64)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--batches", type=int, default=40)
    t.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    for name in ("rss", "step"):
        r = sub.add_parser(name)
        r.add_argument("--root", required=True)
        r.add_argument("--steps", type=int, default=20)
        r.add_argument("--workers", type=int, default=1)
        r.add_argument("--set", action="append", default=[], help="extra recipe overrides")
        r.add_argument("--small-model", action="store_true", help="G and D at 16 base channels")
    a = p.parse_args()
    if a.cmd == "make-folder":
        w, h = (int(v) for v in a.size.split("x"))
        make_folder(Path(a.out), a.images, a.classes, (w, h), start=a.start)
    elif a.cmd == "throughput":
        throughput(a.root, a.resolution, a.batch, a.batches, a.workers)
    else:
        sets = a.set + (SMALL_MODEL if a.small_model else [])
        (rss if a.cmd == "rss" else step_speed)(a.root, a.steps, a.workers, sets)


if __name__ == "__main__":
    main()
