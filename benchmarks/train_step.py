"""One cGAN training step (a D step and a G step, the bundled config's networks and losses) under the CPU
speed-ups issue 20 asks about, side by side: float32 eager, bf16 autocast, and torch.compile of G (of D it
fails: spectral norm's power iteration updates its vector in place between the two D passes, which the
compiled backward refuses). Images through the networks per second, median of `--rounds` interleaved rounds.

Run by hand, alone on the machine:  .venv/bin/python -m benchmarks.train_step [--batch 64] [--compile] [--no-bf16]
The loop-level figure (data, EMA, grids included) is benchmarks/train_throughput.py --amp off,always.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import torch

from models import build
from models.checkpoint import to_device
from training.config import load_config
from training.losses import get_loss
from training.precision import training_autocast
from training.regularizers import mode_seeking_loss

CONFIG = "configs/fashion_mnist_cgan.yaml"


def make_step(cfg, batch: int, amp: bool, compile_g: bool) -> Callable[[], None]:
    common = {"num_classes": 10, "img_resolution": cfg.data.resolution, "img_channels": 1}
    g_cfg, d_cfg = dict(cfg.generator), dict(cfg.discriminator)
    cpu = torch.device("cpu")
    G = to_device(build(g_cfg.pop("architecture"), {**g_cfg, **common}), cpu).train()
    D = to_device(build(d_cfg.pop("architecture"), {**d_cfg, **common}), cpu).train()
    G_run = torch.compile(G) if compile_g else G
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    d_loss, g_loss = get_loss(cfg.loss)
    real = torch.rand(batch, 1, 32, 32).mul(2).sub(1).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    ctx = training_autocast("always" if amp else "off", cpu, warn=False)  # the loop's own context

    def step() -> None:
        z = torch.randn(batch, G.z_dim)
        with ctx:
            with torch.no_grad():
                fake = G_run(z, labels)
            loss = d_loss(D(real, labels).float(), D(fake, labels).float())
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
        with ctx:
            fake = G_run(z, labels)
            loss = g_loss(D(fake, labels).float()) + cfg.mode_seeking * mode_seeking_loss(fake, z, labels)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per round")
    p.add_argument("--compile", action="store_true", help="also torch.compile(G), float32 and bf16")
    p.add_argument("--no-bf16", action="store_true", help="float32 variants only (bf16 is emulated, and ~10x "
                                                          "slower, on CPUs without bf16 instructions)")
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = load_config(CONFIG)
    variants = {"fp32 eager": (False, False), "bf16 autocast": (True, False)}
    if args.compile:
        variants |= {"fp32 compile(G)": (False, True), "bf16 compile(G)": (True, True)}
    if args.no_bf16:
        variants = {name: v for name, v in variants.items() if not v[0]}
    steps = {}
    for name, (amp, compile_g) in variants.items():
        steps[name] = make_step(cfg, args.batch, amp, compile_g)
        t = time.perf_counter()
        steps[name](), steps[name]()  # warm-up (compilation included)
        print(f"# {name}: warm-up {time.perf_counter() - t:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[name].append(2 * args.batch * args.steps / (time.perf_counter() - t))
    base = statistics.median(rates["fp32 eager"])
    print(json.dumps({"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
                      "date": time.strftime("%Y-%m-%d %H:%M"), "batch": args.batch,
                      "images_per_s": {n: round(statistics.median(r)) for n, r in rates.items()},
                      "vs_fp32_eager": {n: round(statistics.median(r) / base, 2) for n, r in rates.items()}}))


if __name__ == "__main__":
    main()
