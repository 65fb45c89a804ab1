"""The GAN training loop: D-steps, G-step, EMA; resume state, TensorBoard, sample grids, final export.

One loop serves both kinds of model. What differs lives in a small task object: how a batch is drawn
(labels + images, or source + target images), how the generator is called, the generator's extra loss
(pix2pix's L1), the preview grid and the exported metadata. Discriminators all take `D(x, condition)`.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from models import build, save
from models.checkpoint import atomic_write, to_device
from models.sampling import generate, grid, pick_device, to_uint8

from .config import TrainConfig, to_dict, write_config
from .data import NORMALIZATION, geometry, prepare
from .datasets import materialize, open_dataset
from .loader import GlobalBatchSampler, batches, make_loader, step_draws
from .diffaugment import diff_augment
from .losses import feature_matching, get_loss
from .regularizers import gradient_penalty, mode_seeking_loss, r1_penalty
from .sample import save_png

STATE_NAME = "state.pt"


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN statistics) are copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@torch.no_grad()
def recalibrate_batchnorm(generator: nn.Module, inputs: Any, batches: int = 32) -> None:
    """Re-estimate BatchNorm running statistics for the (EMA) weights as a cumulative average over
    `batches` forward passes ("standing statistics", BigGAN), so eval-mode outputs match the weights.
    `inputs(i)` returns the positional arguments of the i-th forward pass."""
    bns = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    generator.train()
    for i in range(batches):
        generator(*inputs(i))
    for bn, m in zip(bns, saved):
        bn.momentum = m
    generator.eval()


def lr_scale(step: int, steps: int, decay_steps: int) -> float:
    """Learning-rate factor at `step`: 1, then linearly down to 0 over the last `decay_steps` steps (pix2pix's
    schedule). A function of the step alone, so a resumed run follows the same schedule."""
    if decay_steps <= 0:
        return 1.0
    return min(1.0, (steps - step) / decay_steps)


def grad_norm(module: nn.Module) -> float:
    """L2 norm of all parameter gradients of `module`."""
    norms = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return torch.stack(norms).norm().item() if norms else 0.0


def _provenance(cfg: TrainConfig, step: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": cfg.data.name, "split": "train", "steps": step, "seed": cfg.seed,
            "command": " ".join(sys.argv), "config": to_dict(cfg), **extra}


class ConditionalTask:
    """noise + class label -> image. Condition = labels."""

    kind = "conditional"

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        d = cfg.data
        self.data = open_dataset(d.name, "train", d.root, d.resolution, d.channels, d.fit)  # streamed from disk
        self.num_classes = len(self.data.class_names)
        self.hflip = self.data.hflip if d.hflip is None else d.hflip

    def __len__(self) -> int:
        return len(self.data)

    def arch_defaults(self) -> tuple[dict[str, Any], dict[str, Any]]:
        common = {"num_classes": self.num_classes, "img_resolution": self.cfg.data.resolution,
                  "img_channels": self.data.channels}
        return common, common

    def batches(self, sampler: GlobalBatchSampler) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(labels, images in [-1, 1] at the model resolution) for the sampler's draws, decoded in workers."""
        loader = make_loader(self.data, sampler, self.cfg.data.workers, pin_memory=self.device.type == "cuda")
        for images, labels in batches(loader):
            yield labels.to(self.device), prepare(images, self.cfg.data.resolution).to(self.device)

    def fake(self, G: nn.Module, cond: torch.Tensor, noise_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(len(cond), G.z_dim, generator=noise_gen).to(self.device)
        return G(z, cond), z

    def g_extra(self, fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.cfg.mode_seeking <= 0:
            return torch.zeros((), device=fake.device)
        return self.cfg.mode_seeking * mode_seeking_loss(fake, z, cond)

    def recalibrate(self, G: nn.Module, batches: int) -> None:
        gen = torch.Generator().manual_seed(self.cfg.seed)
        recalibrate_batchnorm(G, lambda i: (torch.randn(64, G.z_dim, generator=gen).to(self.device),
                                            torch.randint(0, self.num_classes, (64,), generator=gen).to(self.device)),
                              batches)

    def metadata(self, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        _, native = geometry(self.data.native_size, self.cfg.data.resolution)
        return {"kind": self.kind, "class_names": self.data.class_names,
                "img_resolution": self.cfg.data.resolution, "img_channels": self.data.channels,
                "native_size": native, "normalization": NORMALIZATION,
                "provenance": _provenance(self.cfg, step, extra), "metrics": {}}

    def save_grid(self, G: nn.Module, meta: dict[str, Any], path: Path, max_rows: int = 16) -> None:
        """Fixed-seed samples, one row per class (first `max_rows` classes)."""
        cols = self.cfg.grid_columns
        labels = [r for r in range(min(self.num_classes, max_rows)) for _ in range(cols)]
        save_png(path, grid(to_uint8(generate(G, labels, list(range(len(labels)))), meta), cols))


class TranslationTask:
    """source image -> target image (pix2pix). Condition = the source batch."""

    kind = "image-to-image"

    def __init__(self, cfg: TrainConfig, device: torch.device):
        from .paired import load_paired

        if cfg.diffaugment:
            raise ValueError("diffaugment is not supported for image-to-image training (it would break pairs)")
        self.cfg, self.device = cfg, device
        d = cfg.data
        self.data = load_paired(d.paired, d.name, "train", d.root, d.resolution, d.channels, d.source_channels,
                                d.direction)

    def __len__(self) -> int:
        return len(self.data)

    def arch_defaults(self) -> tuple[dict[str, Any], dict[str, Any]]:
        common = {"in_channels": self.data.source_channels, "out_channels": self.data.target_channels,
                  "img_resolution": self.cfg.data.resolution}
        return common, common

    hflip = False  # a flip would have to apply to both images of a pair

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source, target = self.data.batch(idx, self.cfg.data.resolution)
        return source.to(self.device), target.to(self.device)

    def batches(self, sampler: GlobalBatchSampler) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(source, target) for the sampler's draws; the pairs are in memory, so no worker processes."""
        for keys in sampler:
            yield self.batch(torch.tensor([i for i, _ in keys], dtype=torch.long))

    def fake(self, G: nn.Module, cond: torch.Tensor, noise_gen: torch.Generator) -> tuple[torch.Tensor, None]:
        return G(cond), None  # dropout is the noise source

    def g_extra(self, fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor, z: None) -> torch.Tensor:
        return self.cfg.l1_weight * F.l1_loss(fake.float(), real.float())

    def recalibrate(self, G: nn.Module, batches: int) -> None:
        sampler = GlobalBatchSampler(len(self.data), min(64, len(self.data)), self.cfg.seed + 7)
        recalibrate_batchnorm(G, lambda i: (self.batch(sampler.indices(i))[0],), batches)

    def metadata(self, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        d = self.cfg.data
        mode, native = geometry(self.data.native_size, d.resolution)
        return {"kind": self.kind, "class_names": self.data.class_names,
                "img_resolution": d.resolution, "img_channels": self.data.target_channels,
                "native_size": native, "normalization": NORMALIZATION,
                "task": {"source_channels": self.data.source_channels,
                         "target_channels": self.data.target_channels,
                         "derivation": self.data.derivation, "paired": d.paired, "direction": d.direction,
                         "training_geometry": mode},
                "provenance": _provenance(self.cfg, step, extra), "metrics": {}}

    def save_grid(self, G: nn.Module, meta: dict[str, Any], path: Path) -> None:
        """Three rows: sources, outputs, targets, for the first `grid_columns` training pairs."""
        idx = torch.arange(min(self.cfg.grid_columns, len(self.data)))
        source, target = self.batch(idx)
        with torch.no_grad():
            output = G(source).float()
        rows = [to_uint8(t.float().cpu(), meta) for t in (source, output, target)]
        rows = [r if r.ndim == 4 else np.repeat(r[..., None], 3, -1) for r in rows]
        rows = [r if r.shape[-1] == 3 else np.repeat(r, 3, -1) for r in rows]
        save_png(path, grid(np.concatenate(rows), len(idx)))


TASKS = {"conditional": ConditionalTask, "image-to-image": TranslationTask}


class CollapseMonitor:
    """Mode-collapse alarm: every `collapse_check_every` steps, sample each class with the EMA generator and
    compare its diversity (mean pairwise distance in the domain classifier's feature space) with the real
    data's. A class below `collapse_threshold` raises the alarm once it has reached `collapse_arm` at an
    earlier check (it fell into collapse; the gap between the two levels keeps noise around the threshold
    from alarming), or at any check from step `collapse_warmup` on (it never became varied). Before that,
    low diversity is how every generator starts: it has not learned to use z yet."""

    def __init__(self, cfg: TrainConfig, task: ConditionalTask, device: torch.device, classifier: Path,
                 per_class: int = 64):
        from models import load

        from .evaluate import embed

        self.cfg, self.task, self.per_class = cfg, task, per_class
        self.classifier, _ = load(classifier, device)
        data = task.data
        idx = torch.cat([torch.nonzero(data.labels == c).flatten()[:per_class] for c in range(task.num_classes)])
        self.real_feats, _ = embed(self.classifier, materialize(data, idx, cfg.data.workers).images)
        self.real_labels = data.labels[idx]
        self.labels = torch.arange(task.num_classes).repeat_interleave(per_class)
        self.seeds = (10_000_000 + torch.arange(len(self.labels))).tolist()  # fixed, apart from grid seeds
        self.armed: set[str] = set()  # classes that have reached collapse_arm at some check

    def collapsed(self, ratios: dict[str, float], step: int) -> dict[str, float]:
        """The classes to alarm on at this check (name -> ratio), given `check`'s ratios."""
        low = {n: round(v, 3) for n, v in ratios.items() if v < self.cfg.collapse_threshold}
        alarm = {n: v for n, v in low.items() if n in self.armed or step >= self.cfg.collapse_warmup}
        self.armed |= {n for n, v in ratios.items() if v >= self.cfg.collapse_arm}
        return alarm

    def check(self, G_ema: nn.Module, meta: dict[str, Any]) -> dict[str, float]:
        """Diversity ratio per class name."""
        from .evaluate import as_nchw, class_diversity, embed

        self.task.recalibrate(G_ema, batches=4)
        feats, _ = embed(self.classifier, as_nchw(to_uint8(generate(G_ema, self.labels.tolist(), self.seeds), meta)))
        div = class_diversity(feats, self.labels, self.real_feats, self.real_labels, self.task.num_classes)
        return {name: d["ratio"] for name, d in zip(self.task.data.class_names, div)}


def domain_classifier(cfg: TrainConfig, task: ConditionalTask, device: torch.device) -> Path | None:
    """The run's domain classifier (collapse check, `evaluate`): `classifier: auto` trains one on the run's
    data into {workdir}/classifier unless it is there; a path must exist; None falls back to the bundled
    classifier for the dataset, or None when there is none."""
    from .evaluate import default_classifier

    if cfg.classifier == "auto":
        out = Path(cfg.workdir) / "classifier"
        if not (out / "model.safetensors").is_file():
            from .classifier import train_classifier

            d = cfg.data
            print(f"training the domain classifier into {out} (classifier: auto)", file=sys.stderr)
            report = train_classifier(d.name, d.root, str(out), seed=cfg.seed, device=str(device),
                                      channels=task.data.channels, resolution=d.resolution, fit=d.fit,
                                      workers=d.workers)
            print(f"domain classifier test accuracy {report['test_accuracy']:.3f}", file=sys.stderr)
        return out
    if cfg.classifier:
        if not Path(cfg.classifier).is_dir():
            raise FileNotFoundError(f"classifier {cfg.classifier}: no such checkpoint folder (use a path from "
                                    "`ganforge train-classifier`, or classifier: auto)")
        return Path(cfg.classifier)
    try:
        return default_classifier(cfg.data.name)
    except ValueError:
        return None


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train a GAN as configured (class-conditional, or image-to-image when `data.paired` is set);
    returns the exported checkpoint's path."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, workdir / "config.yaml")
    if cfg.collapse_action not in ("warn", "stop", "rollback"):
        raise ValueError(f"collapse_action must be warn, stop or rollback; got {cfg.collapse_action!r}")

    task = TASKS["image-to-image" if cfg.data.paired else "conditional"](cfg, device)
    g_common, d_common = task.arch_defaults()
    g_cfg, d_cfg = dict(cfg.generator), dict(cfg.discriminator)
    G = to_device(build(g_cfg.pop("architecture"), {**g_cfg, **g_common}), device).train()
    D = to_device(build(d_cfg.pop("architecture"), {**d_cfg, **d_common}), device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    if cfg.feature_matching > 0 and not (hasattr(D, "features") and cfg.adversarial_weight > 0):
        raise ValueError(f"feature_matching needs a discriminator with features() (PatchDiscriminator) and "
                         f"adversarial_weight > 0; got {type(D).__name__}, adversarial_weight "
                         f"{cfg.adversarial_weight}")
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    d_loss_fn, g_loss_fn = get_loss(cfg.loss)
    adversarial = cfg.adversarial_weight > 0
    noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.amp and device.type == "cuda") else nullcontext()
    aug = lambda x: diff_augment(x, cfg.diffaugment)  # noqa: E731
    step, images_seen, train_seconds = 0, 0, 0.0

    classifier = domain_classifier(cfg, task, device) if task.kind == "conditional" else None
    monitor = None
    if cfg.collapse_check_every > 0:
        if task.kind != "conditional":
            raise ValueError("collapse_check_every needs a class-conditional run")
        if classifier is None:
            print(f"warning: mode-collapse check off: no domain classifier for dataset {cfg.data.name!r} "
                  "(set classifier: auto to train one on the run's data, or a checkpoint path)", file=sys.stderr)
        else:
            monitor = CollapseMonitor(cfg, task, device, classifier)

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
    # the global batches of steps step..steps-1 (a function of seed and step: resume reads the same data)
    sampler = GlobalBatchSampler(len(task), cfg.batch_size, cfg.seed, hflip=task.hflip,
                                 draws=step_draws(step, cfg.steps, cfg.d_steps, adversarial))
    data_iter = task.batches(sampler)
    while step < cfg.steps:
        if budget is not None and time.time() - start >= budget:
            stop_reason = "time budget"
            break
        scale = lr_scale(step, cfg.steps, cfg.lr_decay_steps)
        for opt, lr in ((opt_g, cfg.lr_g), (opt_d, cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * scale
        step_batches = [next(data_iter) for _ in range(cfg.d_steps if adversarial else 1)]
        # --- discriminator step(s) ---
        for k in range(cfg.d_steps if adversarial else 0):
            cond, real = step_batches[k]
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
        cond, real = step_batches[0]
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
        "classifier": str(classifier) if classifier is not None else None,
        "images_seen": images_seen, "train_seconds": round(train_seconds, 1),
        "images_per_second": round(images_seen / max(train_seconds, 1e-9), 1),
        "stopped_early": stop_reason, "device": str(device)})
    export = Path(cfg.export)
    save(G_ema, export, meta)
    if export.suffix != ".safetensors":
        write_config(cfg, export / "config.yaml")
        task.save_grid(G_ema, meta, export / "grid.png")
    atomic_write(workdir / "export.json",
                 lambda tmp: tmp.write_text(json.dumps({"export": str(export), "step": step, "stopped_early": stop_reason})))
    return export
