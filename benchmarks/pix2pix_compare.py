"""pix2pix against its L1-only baseline on the Fashion-MNIST test split (issue 3). Run by hand, not a test.

    .venv/bin/python -m benchmarks.pix2pix_compare [--gan checkpoints/fashion_mnist_edges2image] \
        [--l1 checkpoints/fashion_mnist_edges2image_l1only] \
        [--grid benchmarks/results/pix2pix_compare/pix2pix_compare.png] \
        [--results benchmarks/RESULTS.md] [--json out.json]

Both checkpoints are the same U-Net trained by the same config; the baseline was trained with
`--set adversarial_weight=0` (no discriminator). Each is scored by `ganforge evaluate` on all 10,000 test
images (L1/PSNR/SSIM against the targets, FID/KID in the domain classifier's features beside the
real-vs-real floor, class preservation); the input (the edge map) is scored the same way. The grid shows,
per row, input | L1-only | pix2pix | target for the first two test images of every class, upscaled x3.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.report import write_results

MARK_START, MARK_END = "<!-- pix2pix_compare:start -->", "<!-- pix2pix_compare:end -->"
METRICS = [("l1", "L1 ↓", "{:.4f}"), ("psnr", "PSNR dB ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.3f}"),
           ("fid", "FID (domain) ↓", "{:.3f}"), ("kid", "KID ↓", "{:.4f}"),
           ("class_preservation", "class preservation ↑", "{:.3f}")]


def side_by_side(gan: str, l1: str, per_class: int = 2, scale: int = 3) -> np.ndarray:
    """uint8 grid: rows of (input | L1-only | pix2pix | target), `per_class` test images of every class."""
    from models.sampling import grid
    from training.translate import translate_dataset

    a = translate_dataset(gan, None, "test")
    b = translate_dataset(l1, None, "test")
    rows = [i for c in range(len(a["class_names"])) for i in np.flatnonzero(a["labels"] == c)[:per_class]]
    cells = [im for i in rows for im in (a["inputs"][i], b["outputs"][i], a["outputs"][i], a["targets"][i])]
    picture = grid(np.stack(cells), 4)
    return picture.repeat(scale, axis=0).repeat(scale, axis=1)


def recipe(checkpoint: str) -> str:
    """The generator's loss as trained, from the checkpoint's provenance: 'GAN + 100·L1 + 10·FM'."""
    from models.checkpoint import read_metadata

    cfg = read_metadata(checkpoint)["provenance"]["config"]
    terms = [f"{cfg['l1_weight']:g}·L1"]
    if cfg.get("adversarial_weight", 1.0) > 0:
        terms.insert(0, "GAN")
    if cfg.get("feature_matching", 0) > 0:
        terms.append(f"{cfg['feature_matching']:g}·feature matching")
    return " + ".join(terms)


def markdown(gan: dict, l1: dict, command: str, grid_path: str, seconds: float, gan_recipe: str) -> str:
    def row(name: str, report: dict, prefix: str = "") -> str:
        cells = []
        for key, _, fmt in METRICS:
            value = report.get(prefix + key)
            cells.append("–" if value is None else fmt.format(value))
        return f"| {name} | " + " | ".join(cells) + " |"

    header = "| | " + " | ".join(label for _, label, _ in METRICS) + " |\n|---|" + "---|" * len(METRICS)
    lines = [f"## pix2pix vs L1-only (`benchmarks.pix2pix_compare`) — {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"```\n{command}\n```", "",
             f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; {gan['num_images']} Fashion-MNIST "
             f"test images (edges → garment); domain-feature FID floor (real vs real) {gan['fid_floor']:.3f}; "
             f"the classifier's accuracy on the real targets {gan['classifier_accuracy_on_targets']:.3f}. "
             f"Took {seconds:.0f} s.", "", header,
             row("input (edge map)", gan, "input_"), row("L1-only U-Net", l1), row(f"pix2pix ({gan_recipe})", gan), ""]
    fid_ratio = gan["fid"] / l1["fid"]
    dpsnr = gan["psnr"] - l1["psnr"]
    checks = [(f"FID of pix2pix is {fid_ratio:.2f}× the L1-only model's (well below: ≤ 0.5×)", fid_ratio <= 0.5),
              (f"PSNR of pix2pix is {dpsnr:+.2f} dB from L1-only (within ~1 dB)", abs(dpsnr) <= 1.0),
              (f"class preservation of pix2pix {gan['class_preservation']:.3f} (≥ 0.85)",
               gan["class_preservation"] >= 0.85)]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks]
    lines += ["", f"Side by side (input | L1-only | pix2pix | target, two test images per class): `{grid_path}`", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gan", default="checkpoints/fashion_mnist_edges2image")
    p.add_argument("--l1", default="checkpoints/fashion_mnist_edges2image_l1only")
    p.add_argument("--grid", default="benchmarks/results/pix2pix_compare/pix2pix_compare.png")
    p.add_argument("--device", default="auto")
    p.add_argument("--results", help="update this markdown file (benchmarks/RESULTS.md)")
    p.add_argument("--json", help="also write both reports here")
    args = p.parse_args()

    from training.evaluate import evaluate
    from training.sample import save_png

    start = time.time()
    gan = evaluate(args.gan, device=args.device)
    l1 = evaluate(args.l1, device=args.device)
    save_png(Path(args.grid), side_by_side(args.gan, args.l1))
    command = "python -m benchmarks.pix2pix_compare " + " ".join(sys.argv[1:])
    text = markdown(gan, l1, command.strip(), args.grid, time.time() - start, recipe(args.gan))
    print(text)
    if args.results:
        write_results(Path(args.results), text, MARK_START, MARK_END)
    if args.json:
        Path(args.json).write_text(json.dumps({"pix2pix": gan, "l1_only": l1}, indent=2))


if __name__ == "__main__":
    main()
