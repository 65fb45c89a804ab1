"""Acceptance rate of augment's classifier-confidence filter: the share of a generator's candidates whose class
probability under a domain classifier is >= p (docs/selection.md). Candidates j = 0..N-1 of every class, drawn
with seed j through models.sampling and scored by augment.select's scorer on the uint8 images, exactly as a job
scores them.

    python -m benchmarks.selection_acceptance --per-class 100 --p 0.9 0.5
"""
from __future__ import annotations

import argparse
import json

import numpy as np

import models
from augment.select import classifier_scorer
from models.sampling import generate, to_uint8


def acceptance(checkpoint: str, classifier: str, per_class: int, thresholds: list[float]) -> dict:
    G, gmeta = models.load(checkpoint)
    C, cmeta = models.load(classifier)
    score = classifier_scorer(C, cmeta)
    probs = {}
    for c, name in enumerate(gmeta["class_names"]):
        images = to_uint8(generate(G, [c] * per_class, list(range(per_class))), gmeta)
        probs[name] = score(images, np.full(per_class, c))
    every = np.concatenate(list(probs.values()))
    return {"checkpoint": checkpoint, "classifier": classifier, "candidates": int(every.size),
            **{f"p>={p}": {"overall": round(float((every >= p).mean()), 4),
                           "per_class": {n: round(float((v >= p).mean()), 3) for n, v in probs.items()}}
               for p in thresholds}}


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--checkpoint", default="checkpoints/fashion_mnist_cgan")
    a.add_argument("--classifier", default="checkpoints/fashion_mnist_classifier")
    a.add_argument("--per-class", type=int, default=100)
    a.add_argument("--p", type=float, nargs="+", default=[0.9])
    args = a.parse_args()
    print(json.dumps(acceptance(args.checkpoint, args.classifier, args.per_class, args.p), indent=1))


if __name__ == "__main__":
    main()
