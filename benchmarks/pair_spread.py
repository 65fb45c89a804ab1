"""Same-class spread in pixel space: the mean L1 distance between two images of one class, generated vs real.

Run by hand:  .venv/bin/python -m benchmarks.pair_spread CHECKPOINT [CHECKPOINT …] [--per-class 200] [--json out.json]
The capped mode-seeking term (`mode_seeking_cap`, training/regularizers.py) pushes same-class pairs apart in
pixel space up to the real data's own spread. This reports how far each class got: per class, the mean L1
distance (pixels in [0, 1]) over all pairs of `--per-class` generated images (seeds --seed, --seed + 1, …),
the same over all pairs of that class's real test images (all of them: a 200-image draw moves the real figure
by up to 7 %), and their ratio. A ratio at or above 1 in a class whose feature-space
diversity ratio (`ganforge evaluate`) stays below 1 means the missing variety is not pixel spread.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from benchmarks.saturated_share import parser, sources
from models.checkpoint import atomic_write


def mean_pair_l1(images: np.ndarray) -> float:
    """Mean over all unordered pairs of the per-pixel L1 distance of uint8 images (N, ...), pixels scaled to [0, 1]."""
    if len(images) < 2:
        raise ValueError(f"a pair spread needs at least 2 images, got {len(images)}")
    x = torch.from_numpy(images.reshape(len(images), -1)).float() / 255
    return float(torch.pdist(x, p=1).mean()) / x.shape[1]  # pdist: the N(N-1)/2 pairs' L1 distances


def spread_per_class(images: np.ndarray, labels: np.ndarray, classes: int) -> list[float]:
    return [mean_pair_l1(images[labels == c]) for c in range(classes)]


def main() -> None:
    args = parser(__doc__.split("\n")[0], 200).parse_args()
    samples, names, dataset, real = sources(args)
    real_spread = spread_per_class(real.images.numpy(), real.labels.numpy(), len(names))  # every test image
    rows = {f"real {dataset} test": real_spread}
    rows.update({ck: spread_per_class(images, lab, len(names)) for ck, (images, lab, _, _) in samples.items()})
    print("source".ljust(40), " ".join(n[:7].rjust(7) for n in names))
    for source, spread in rows.items():
        print(source[-40:].ljust(40), " ".join(f"{s:7.3f}" for s in spread))
        if not source.startswith("real "):
            print("  / real".ljust(40), " ".join(f"{s / r:7.2f}" for s, r in zip(spread, real_spread)))
    if args.json:
        text = json.dumps({"per_class": args.per_class, "seed": args.seed, "classes": names, "rows": rows}, indent=1)
        atomic_write(args.json, lambda tmp: tmp.write_text(text + "\n"))


if __name__ == "__main__":
    main()
