"""The GAN training loop: D-steps, G-step, EMA; resume state, TensorBoard, sample grids, final export.

One loop serves both kinds of model; what differs lives in a task object (training/tasks.py).
The batch order (sampler.py), the EMA and BatchNorm helpers (ema.py), the learning-rate schedule (optim.py)
and the mode-collapse alarm (collapse.py) each have their own module.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models import build, save
from models.checkpoint import CONDITIONAL, IMAGE_TO_IMAGE, atomic_write, to_device
from models.sampling import pick_device

from .collapse import CollapseMonitor
from .config import TrainConfig, write_config
from .diffaugment import diff_augment
from .discriminator import save_discriminator
from .ema import ema_update
from .losses import feature_matching, get_loss
from .optim import grad_norm, lr_scale
from .regularizers import gradient_penalty, r1_penalty
from .sampler import BatchSampler
from .tasks import TASKS

STATE_NAME = "state.pt"


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train a GAN as configured (class-conditional, or image-to-image when `data.paired` is set);
    returns the exported checkpoint's path. `cfg` validated itself on construction; the workdir is written
    only once the data, the networks and the collapse monitor's classifier have loaded."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    task = TASKS[IMAGE_TO_IMAGE if cfg.data.paired else CONDITIONAL](cfg, device)
    g_common, d_common = task.arch_defaults()
    g_cfg, d_cfg = dict(cfg.generator), dict(cfg.discriminator)
    G = to_device(build(g_cfg.pop("architecture"), {**g_cfg, **g_common}), device).train()
    D = to_device(build(d_cfg.pop("architecture"), {**d_cfg, **d_common}), device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    d_loss_fn, g_loss_fn = get_loss(cfg.loss)
    adversarial = cfg.adversarial_weight > 0
    sampler = BatchSampler(len(task), cfg.batch_size, cfg.seed)
    noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.amp and device.type == "cuda") else nullcontext()
    aug = lambda x: diff_augment(x, cfg.diffaugment)  # noqa: E731
    step, images_seen, train_seconds = 0, 0, 0.0

    monitor = CollapseMonitor(cfg, task, device) if cfg.collapse_check_every > 0 else None

    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, workdir / "config.yaml")
    state_path = workdir / STATE_NAME

    def snapshot() -> dict[str, Any]:
        return {"G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step,
                "images_seen": images_seen, "seconds": train_seconds,
                "rng": torch.get_rng_state(), "noise_rng": noise_gen.get_state(),
                "collapse_armed": sorted(monitor.armed) if monitor is not None else []}

    def restore(state: dict[str, Any]) -> None:
        nonlocal step, images_seen, train_seconds
        G.load_state_dict(state["G"]), D.load_state_dict(state["D"]), G_ema.load_state_dict(state["G_ema"])
        opt_g.load_state_dict(state["opt_g"]), opt_d.load_state_dict(state["opt_d"])
        step, images_seen, train_seconds = int(state["step"]), int(state["images_seen"]), float(state["seconds"])
        torch.set_rng_state(state["rng"])
        noise_gen.set_state(state["noise_rng"])
        if monitor is not None:
            monitor.armed = set(state.get("collapse_armed", ()))  # the alarm's memory is part of the run

    if resume:
        if not state_path.exists():
            raise FileNotFoundError(f"--resume: no resume state at {state_path}")
        restore(torch.load(state_path, map_location="cpu", weights_only=True))  # tensors only, no code
        print(f"resumed from {state_path} at step {step}", file=sys.stderr)

    def save_state() -> None:
        state = snapshot()
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(workdir / "tb"), purge_step=step)
    grid_meta = task.metadata(step, {})
    last_good: dict[str, Any] | None = None
    stop_reason = None
    start = time.time() - train_seconds
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, unit="step", dynamic_ncols=True, mininterval=2)
    penalty = loss_d = r = f = torch.zeros(())
    while step < cfg.steps:
        if budget is not None and time.time() - start >= budget:
            stop_reason = "time budget"
            break
        scale = lr_scale(step, cfg.steps, cfg.lr_decay_steps)
        for opt, lr in ((opt_g, cfg.lr_g), (opt_d, cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * scale
        # --- discriminator step(s) ---
        for k in range(cfg.d_steps if adversarial else 0):
            cond, real = task.batch(sampler.indices(step * cfg.d_steps + k))
            with amp:
                with torch.no_grad():
                    fake, _ = task.fake(G, cond, noise_gen)
                r = D(aug(real), cond).float()
                f = D(aug(fake), cond).float()
                loss_d = d_loss_fn(r, f)
            critic = lambda x: D(aug(x), cond).float()  # noqa: E731
            penalty = torch.zeros((), device=device)
            if cfg.r1_gamma > 0:
                penalty = penalty + r1_penalty(critic, real, cfg.r1_gamma)
            if cfg.gp_lambda > 0:
                penalty = penalty + gradient_penalty(critic, real, fake, cfg.gp_lambda)
            opt_d.zero_grad(set_to_none=True)
            (loss_d + penalty).backward()
            opt_d.step()
        # --- generator step (same conditions as the first D step: real label frequencies / real sources) ---
        cond, real = task.batch(sampler.indices(step * cfg.d_steps))
        with amp:
            fake, z = task.fake(G, cond, noise_gen)
            loss_fm = torch.zeros((), device=device)
            if not adversarial:
                loss_adv = torch.zeros((), device=device)
            elif cfg.feature_matching > 0:  # one pass through D gives both the logits and the features
                feats = D.features(aug(fake), cond)
                with torch.no_grad():
                    real_feats = D.features(aug(real), cond)
                loss_adv = g_loss_fn(feats[-1].float())
                loss_fm = cfg.feature_matching * feature_matching(feats[:-1], real_feats[:-1])
            else:
                loss_adv = g_loss_fn(D(aug(fake), cond).float())
            loss_extra = task.g_extra(fake, real, cond, z) + loss_fm
            loss_g = cfg.adversarial_weight * loss_adv + loss_extra
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        g_grad = grad_norm(G)
        opt_g.step()
        ema_update(G_ema, G, min(cfg.ema_decay, (1 + step) / (10 + step)))
        step += 1
        images_seen += cfg.batch_size * ((cfg.d_steps if adversarial else 0) + 1)
        train_seconds = time.time() - start
        bar.update()

        if step % cfg.log_every == 0 or step == cfg.steps:
            ips = images_seen / max(train_seconds, 1e-9)
            scalars = {"loss/d": loss_d.item(), "loss/g": loss_adv.item(), "loss/g_extra": loss_extra.item(),
                       "loss/feature_matching": loss_fm.item(),
                       "loss/penalty": penalty.item(), "grad_norm/g": g_grad, "logits/real": r.mean().item(),
                       "logits/fake": f.mean().item(), "speed/images_per_s": ips, "lr/g": opt_g.param_groups[0]["lr"]}
            for key, value in scalars.items():
                writer.add_scalar(key, value, step)
            bar.set_postfix(d=f"{loss_d.item():.3f}", g=f"{loss_adv.item():.3f}", extra=f"{loss_extra.item():.3f}",
                            gnorm=f"{g_grad:.2f}", img_s=f"{ips:.0f}", refresh=False)
        if step % cfg.sample_every == 0 or step == cfg.steps:
            task.recalibrate(G_ema, batches=4)  # a preview: 256 samples are enough
            task.save_grid(G_ema, grid_meta, workdir / f"grid_{step:07d}.png")
        if monitor is not None and step % cfg.collapse_check_every == 0:
            ratios = monitor.check(G_ema, grid_meta)
            for name, ratio in ratios.items():
                writer.add_scalar(f"diversity/{name}", ratio, step)
            collapsed = monitor.collapsed(ratios, step)
            with open(workdir / "collapse.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step, "ratios": ratios, "collapsed": collapsed}) + "\n")
            if collapsed:
                tqdm.write(f"WARNING mode collapse at step {step}: diversity ratio below "
                           f"{cfg.collapse_threshold} for {collapsed}", file=sys.stderr)
                if cfg.collapse_action == "rollback" and last_good is not None:
                    restore(last_good)
                    stop_reason = f"mode collapse; rolled back to step {step}"
                    break
                if cfg.collapse_action in ("stop", "rollback"):
                    stop_reason = "mode collapse"
                    break
            else:
                last_good = copy.deepcopy(snapshot())
        if step % cfg.state_every == 0:
            save_state()
    bar.close()
    writer.close()
    save_state()

    task.recalibrate(G_ema, batches=32)
    meta = task.metadata(step, {
        "images_seen": images_seen, "train_seconds": round(train_seconds, 1),
        "images_per_second": round(images_seen / max(train_seconds, 1e-9), 1),
        "stopped_early": stop_reason, "device": str(device)})
    export = Path(cfg.export)
    save(G_ema, export, meta)
    if cfg.export_discriminator:
        save_discriminator(D, export, meta)
    if export.suffix != ".safetensors":
        write_config(cfg, export / "config.yaml")
        task.save_grid(G_ema, meta, export / "grid.png")
    atomic_write(workdir / "export.json",
                 lambda tmp: tmp.write_text(json.dumps({"export": str(export), "step": step, "stopped_early": stop_reason})))
    return export
