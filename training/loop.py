"""The GAN training loop: D-steps, G-step, EMA; resume state, TensorBoard, sample grids, final export."""
from __future__ import annotations

import copy
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from models import build, save
from models.checkpoint import atomic_write
from models.sampling import generate, grid, pick_device, to_uint8

from .config import TrainConfig, to_dict, write_config
from .data import NORMALIZATION, ImageData, geometry, load_dataset, prepare
from .diffaugment import diff_augment
from .losses import get_loss
from .regularizers import gradient_penalty, r1_penalty

STATE_NAME = "state.pt"


class BatchSampler:
    """Deterministic shuffled batches: draw k covers positions k*B..(k+1)*B-1 of an endless sequence of
    per-epoch permutations seeded by (seed, epoch), so a resumed run sees exactly the same batches."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def indices(self, draw: int) -> torch.Tensor:
        pos = torch.arange(draw * self.batch_size, (draw + 1) * self.batch_size)
        epochs, offsets = pos // self.n, pos % self.n
        return torch.stack([self._permutation(int(e))[o] for e, o in zip(epochs, offsets)])


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN statistics) are copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@torch.no_grad()
def recalibrate_batchnorm(generator: nn.Module, num_classes: int, batches: int = 32, batch_size: int = 64,
                          seed: int = 0) -> None:
    """Re-estimate BatchNorm running statistics for the (EMA) weights by averaging over random batches
    ("standing statistics", BigGAN), so eval-mode samples match what the weights actually produce."""
    bns = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    device = next(generator.parameters()).device
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    generator.train()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        z = torch.randn(batch_size, generator.z_dim, generator=gen).to(device)
        y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
        generator(z, y)
    for bn, m in zip(bns, saved):
        bn.momentum = m
    generator.eval()


def grad_norm(module: nn.Module) -> float:
    """L2 norm of all parameter gradients of `module`."""
    norms = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return torch.stack(norms).norm().item() if norms else 0.0


def build_networks(cfg: TrainConfig, data: ImageData) -> tuple[nn.Module, nn.Module]:
    """G and D from the config, with num_classes / img_resolution / img_channels taken from the data."""
    common = {"num_classes": len(data.class_names), "img_resolution": cfg.data.resolution,
              "img_channels": int(data.images.shape[1])}
    g_cfg, d_cfg = dict(cfg.generator), dict(cfg.discriminator)
    return (build(g_cfg.pop("architecture"), {**g_cfg, **common}),
            build(d_cfg.pop("architecture"), {**d_cfg, **common}))


def checkpoint_metadata(cfg: TrainConfig, data: ImageData, step: int, extra: dict[str, Any]) -> dict[str, Any]:
    """The self-description stored with an exported conditional generator."""
    _, native = geometry(data.native_size, cfg.data.resolution)
    return {
        "kind": "conditional",
        "class_names": data.class_names,
        "img_resolution": cfg.data.resolution,
        "img_channels": int(data.images.shape[1]),
        "native_size": native,
        "normalization": NORMALIZATION,
        "provenance": {"dataset": cfg.data.name, "split": "train", "steps": step, "seed": cfg.seed,
                       "command": " ".join(sys.argv), "config": to_dict(cfg), **extra},
        "metrics": {},
    }


def save_grid(generator: nn.Module, meta: dict[str, Any], path: Path, columns: int, max_rows: int = 16) -> None:
    """PNG of fixed-seed samples, one row per class (first `max_rows` classes)."""
    from PIL import Image

    rows = min(len(meta["class_names"]), max_rows)
    labels = [r for r in range(rows) for _ in range(columns)]
    images = to_uint8(generate(generator, labels, list(range(len(labels)))), meta)
    atomic_write(path, lambda tmp: Image.fromarray(grid(images, columns)).save(tmp, format="PNG"))


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train a class-conditional GAN as configured; returns the exported checkpoint's path."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, workdir / "config.yaml")

    data = load_dataset(cfg.data.name, "train", cfg.data.root, cfg.data.resolution, cfg.data.channels)
    G, D = build_networks(cfg, data)
    G, D = G.to(device).train(), D.to(device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    d_loss_fn, g_loss_fn = get_loss(cfg.loss)
    sampler = BatchSampler(len(data), cfg.batch_size, cfg.seed)
    noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.amp and device.type == "cuda") else nullcontext()
    step, images_seen, train_seconds = 0, 0, 0.0

    state_path = workdir / STATE_NAME
    if resume:
        if not state_path.exists():
            raise FileNotFoundError(f"--resume: no resume state at {state_path}")
        state = torch.load(state_path, map_location="cpu", weights_only=True)  # tensors only, no code
        G.load_state_dict(state["G"]), D.load_state_dict(state["D"]), G_ema.load_state_dict(state["G_ema"])
        opt_g.load_state_dict(state["opt_g"]), opt_d.load_state_dict(state["opt_d"])
        step, images_seen, train_seconds = int(state["step"]), int(state["images_seen"]), float(state["seconds"])
        torch.set_rng_state(state["rng"])
        noise_gen.set_state(state["noise_rng"])
        print(f"resumed from {state_path} at step {step}", file=sys.stderr)

    def save_state() -> None:
        state = {"G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
                 "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step,
                 "images_seen": images_seen, "seconds": train_seconds,
                 "rng": torch.get_rng_state(), "noise_rng": noise_gen.get_state()}
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(workdir / "tb"), purge_step=step)
    grid_meta = checkpoint_metadata(cfg, data, step, {})
    z_dim, num_classes = G.z_dim, G.num_classes
    start = time.time() - train_seconds
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, unit="step", dynamic_ncols=True)
    stopped_by_budget = False
    while step < cfg.steps:
        if budget is not None and time.time() - start >= budget:
            stopped_by_budget = True
            break
        # --- discriminator step(s) ---
        for k in range(cfg.d_steps):
            idx = sampler.indices(step * cfg.d_steps + k)
            real = prepare(data.images[idx], cfg.data.resolution).to(device)
            y = data.labels[idx].to(device)
            z = torch.randn(len(idx), z_dim, generator=noise_gen).to(device)
            with amp:
                with torch.no_grad():
                    fake = G(z, y)
                r = D(diff_augment(real, cfg.diffaugment), y).float()
                f = D(diff_augment(fake, cfg.diffaugment), y).float()
                loss_d = d_loss_fn(r, f)
            critic = lambda x: D(diff_augment(x, cfg.diffaugment), y).float()  # noqa: E731
            penalty = torch.zeros((), device=device)
            if cfg.r1_gamma > 0:
                penalty = penalty + r1_penalty(critic, real, cfg.r1_gamma)
            if cfg.gp_lambda > 0:
                penalty = penalty + gradient_penalty(critic, real, fake, cfg.gp_lambda)
            opt_d.zero_grad(set_to_none=True)
            (loss_d + penalty).backward()
            opt_d.step()
        # --- generator step ---
        y = data.labels[sampler.indices(step * cfg.d_steps)].to(device)  # real label frequencies
        z = torch.randn(len(y), z_dim, generator=noise_gen).to(device)
        with amp:
            f_g = D(diff_augment(G(z, y), cfg.diffaugment), y).float()
            loss_g = g_loss_fn(f_g)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        g_grad = grad_norm(G)
        opt_g.step()
        ema_update(G_ema, G, min(cfg.ema_decay, (1 + step) / (10 + step)))
        step += 1
        images_seen += cfg.batch_size * (cfg.d_steps + 1)
        train_seconds = time.time() - start
        bar.update()

        if step % cfg.log_every == 0 or step == cfg.steps:
            ips = images_seen / max(train_seconds, 1e-9)
            scalars = {"loss/d": loss_d.item(), "loss/g": loss_g.item(), "loss/penalty": penalty.item(),
                       "grad_norm/g": g_grad, "logits/real": r.mean().item(), "logits/fake": f.mean().item(),
                       "speed/images_per_s": ips}
            for key, value in scalars.items():
                writer.add_scalar(key, value, step)
            bar.set_postfix(d=f"{loss_d.item():.3f}", g=f"{loss_g.item():.3f}", gnorm=f"{g_grad:.2f}",
                            img_s=f"{ips:.0f}")
        if step % cfg.sample_every == 0 or step == cfg.steps:
            recalibrate_batchnorm(G_ema, num_classes, batches=4, seed=cfg.seed)  # a preview: 256 samples do
            save_grid(G_ema, grid_meta, workdir / f"grid_{step:07d}.png", cfg.grid_columns)
        if step % cfg.state_every == 0:
            save_state()
    bar.close()
    writer.close()
    save_state()

    recalibrate_batchnorm(G_ema, num_classes, seed=cfg.seed)
    meta = checkpoint_metadata(cfg, data, step, {
        "images_seen": images_seen, "train_seconds": round(train_seconds, 1),
        "images_per_second": round(images_seen / max(train_seconds, 1e-9), 1),
        "stopped_by_time_budget": stopped_by_budget, "device": str(device)})
    export = Path(cfg.export)
    save(G_ema, export, meta)
    if export.suffix != ".safetensors":
        write_config(cfg, export / "config.yaml")
        save_grid(G_ema, meta, export / "grid.png", cfg.grid_columns)
    (workdir / "export.json").write_text(json.dumps({"export": str(export), "step": step}))
    return export
