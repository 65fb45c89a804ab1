"""Training throughput (images/s through G+D per second of wall clock) of the bundled configs on this machine.

Run by hand, alone on the machine:  .venv/bin/python -m benchmarks.train_throughput [--steps 60] [--amp off,always]
    [--variant "" --variant "share_fake=true"]
Each config trains `steps` steps into a temporary folder and reports the loop's own count, as stored in the
checkpoint's provenance: images through the networks (batch_size * (d_steps + 1) per step) per loop second.
`--amp` runs each config once per autocast mode (training.config.AMP_MODES), and `--variant` (repeatable) once per
set of space-separated config overrides, alternating, `--rounds` times; compare variants by steps_per_s (a
variant may change what a step is).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time

import torch

from models import load
from training.config import load_config
from training.loop import train

CONFIGS = ["configs/fashion_mnist_cgan.yaml", "configs/fashion_mnist_mlp_cgan.yaml",
           "configs/fashion_mnist_edges2image.yaml"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--amp", default="cuda", help="comma-separated amp modes to compare (default: cuda, the configs' own)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--variant", action="append", help='space-separated overrides, e.g. "share_fake=true batch_size=32" '
                   '(repeatable; default: one variant, the config as it is)')
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')}")
    for path in args.configs.split(","):
        for _ in range(args.rounds):
            for amp, variant in itertools.product(args.amp.split(","), args.variant or [""]):
                with tempfile.TemporaryDirectory() as tmp:
                    cfg = load_config(path, [f"workdir={tmp}/run", f"export={tmp}/ckpt", f"steps={args.steps}",
                                             "sample_every=1000000", "state_every=1000000", "max_minutes=null",
                                             f"amp={amp}", *variant.split()])
                    _, meta = load(train(cfg))
                prov = meta["provenance"]
                print(json.dumps({"config": path, "amp": amp, "variant": variant, "steps": args.steps,
                                  "loop_seconds": prov["train_seconds"], "images_per_s": prov["images_per_second"],
                                  "steps_per_s": round(args.steps / prov["train_seconds"], 2)}), flush=True)


if __name__ == "__main__":
    main()
