"""Share of near-blank bright samples per class: generated vs the real test set.

Run by hand:  .venv/bin/python -m benchmarks.saturated_share CHECKPOINT [CHECKPOINT …] [--per-class 500]
A sample counts as "saturated" when at least half of its pixels are above 200 (of 255): on Fashion-MNIST a
white slab filling the frame. Real trousers, dresses, sandals, sneakers and boots almost never are (0-0.1 %),
coats, pullovers and shirts sometimes are (8-9 %). A generator that draws them far more often than the real
class is drawing an off-class mode the classifier may still label as the class; the feature-space figures of
`ganforge evaluate` can count that spread as diversity and, through the k-NN radii of outliers, as recall.
Prints one row per source, one column per class (the checkpoint's own class order), and `--json` writes them.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from models.checkpoint import atomic_write
from training.data import load_dataset
from training.sample import sample_arrays

THRESHOLD, SHARE = 200, 0.5


def saturated_share(images: np.ndarray, labels: np.ndarray, classes: int) -> list[float]:
    """Per class, the fraction of uint8 images (N, ..., H, W) with at least SHARE of their values above THRESHOLD."""
    bright = (images.reshape(len(images), -1) > THRESHOLD).mean(1) >= SHARE
    return [float(bright[labels == c].mean()) if (labels == c).any() else float("nan") for c in range(classes)]


def parser(description: str, per_class: int) -> argparse.ArgumentParser:
    """The command line of the per-class comparisons (this one and benchmarks/pair_spread.py)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--per-class", type=int, default=per_class)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", help="dataset folder (default: the loader's own)")
    p.add_argument("--json")
    return p


def sources(args: argparse.Namespace):
    """(samples {checkpoint: sample_arrays(...)}, class names, dataset name, the real test split)."""
    samples = {ck: sample_arrays(ck, args.per_class, args.seed) for ck in args.checkpoints}
    meta = samples[args.checkpoints[0]][3]  # the real data and class order are the first checkpoint's
    dataset = meta.get("provenance", {}).get("dataset", "fashion-mnist")
    real = load_dataset(dataset, "test", args.root, channels=meta["img_channels"])
    return samples, meta["class_names"], dataset, real


def main() -> None:
    args = parser(__doc__.split("\n")[0], 500).parse_args()
    samples, names, dataset, real = sources(args)
    rows = {f"real {dataset} test": saturated_share(real.images.numpy(), real.labels.numpy(), len(names))}
    rows.update({ck: saturated_share(images, labels, len(names)) for ck, (images, labels, _, _) in samples.items()})
    print("source".ljust(40), " ".join(n[:7].rjust(7) for n in names))
    for source, shares in rows.items():
        print(source[-40:].ljust(40), " ".join(f"{s:7.3f}" for s in shares))
    if args.json:
        text = json.dumps({"threshold": THRESHOLD, "share": SHARE, "per_class": args.per_class, "seed": args.seed,
                           "classes": names, "rows": rows}, indent=1)
        atomic_write(args.json, lambda tmp: tmp.write_text(text + "\n"))


if __name__ == "__main__":
    main()
