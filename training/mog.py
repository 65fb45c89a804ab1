"""Mixture-of-Gaussians mode-collapse lab: 8 Gaussians on a ring and 25 on a grid, a small MLP GAN, and its metrics.

The data and the metrics follow Metz et al. 2017 (Unrolled GAN), Srivastava et al. 2017 (VEEGAN) and
Lin et al. 2018 (PacGAN):
- a generated sample is *high quality* when it lies within 3 sigma of the centre of its nearest mode;
- a mode is *covered* when at least `min_count` high-quality samples are nearest to it. `min_count=1` is the
  loosest reading of the papers' rule; we default to 10 of 2,500 samples (8% of a fair share on the ring, 10% on
  the grid) so that a generator smearing samples along the ring, which drops a few within 3 sigma of every
  mode by chance, is not credited with finding them;
- `kl` is KL(p || uniform) where p is the histogram of the high-quality samples over the modes:
  0 for a sampler that visits every mode equally, log(K) for a point mass, null without high-quality samples.

Runs are scored on an EMA of the generator's weights (decay 0.99, a ~100-step window), as the project's training
loop exports: with Adam at 1e-3 the raw generator jitters around the modes by about 3 sigma (0.06 on the ring)
from step to step, which costs a large share of the high-quality samples although the modes are found. A 100-step
average cannot add modes the generator has not been visiting; `ema_decay=0` scores the raw generator instead.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .ema import ema_update
from .losses import get_loss
from .optim import grad_norm
from .regularizers import gradient_penalty, r1_penalty

Tensor = torch.Tensor


@dataclass(frozen=True)
class Mixture:
    """K isotropic Gaussians of standard deviation `sigma`, equally weighted."""

    centres: Tensor  # (K, 2)
    sigma: float

    @property
    def num_modes(self) -> int:
        return self.centres.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n points (n, 2): a uniformly chosen centre plus N(0, sigma^2 I) noise."""
        idx = torch.randint(0, self.num_modes, (n,), generator=generator)
        return self.centres[idx] + self.sigma * torch.randn(n, 2, generator=generator)


def ring(k: int = 8, radius: float = 2.0, sigma: float = 0.02) -> Mixture:
    """k modes evenly spaced on a circle (Unrolled GAN / VEEGAN / PacGAN: 8 modes, radius 2, sigma 0.02)."""
    angles = torch.arange(k, dtype=torch.float32) * (2 * math.pi / k)
    return Mixture(radius * torch.stack([angles.cos(), angles.sin()], 1), sigma)


def grid(n: int = 5, spacing: float = 2.0, sigma: float = 0.05) -> Mixture:
    """n x n modes on a square grid centred at 0 (VEEGAN / PacGAN: 5 x 5, spacing 2, sigma 0.05)."""
    axis = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * spacing
    xs, ys = torch.meshgrid(axis, axis, indexing="xy")
    return Mixture(torch.stack([xs.flatten(), ys.flatten()], 1), sigma)


DATASETS: dict[str, Callable[[], Mixture]] = {"ring": ring, "grid": grid}


def get_mixture(name: str) -> Mixture:
    """The named benchmark mixture; ValueError lists the known names."""
    if name not in DATASETS:
        raise ValueError(f"unknown MoG dataset {name!r}; allowed: {list(DATASETS)}")
    return DATASETS[name]()


# ----------------------------------------------------------------------------------------------- metrics


def mode_counts(samples: Tensor, centres: Tensor, sigma: float) -> Tensor:
    """Per mode, how many samples are high quality (within 3 sigma of their nearest centre) for it: (K,) int64."""
    dist = torch.cdist(samples.double(), centres.double())  # (N, K); NaN rows (diverged runs) match nothing
    nearest_dist, nearest = dist.min(1)
    good = nearest_dist <= 3 * sigma
    return torch.bincount(nearest[good], minlength=centres.shape[0])


def kl_to_uniform(counts: Tensor) -> float | None:
    """KL(p || uniform) in nats for p = counts / counts.sum(); None when there are no counts at all."""
    total = counts.sum().item()
    if total == 0:
        return None
    p = counts.double() / total
    p = p[p > 0]  # 0 log 0 = 0
    return float((p * (p * counts.numel()).log()).sum())


def mode_metrics(samples: Tensor, mixture: Mixture, min_count: int = 10) -> dict[str, Any]:
    """modes_covered, num_modes, high_quality (share of samples within 3 sigma of a mode), kl, counts."""
    counts = mode_counts(samples, mixture.centres, mixture.sigma)
    return {
        "modes_covered": int((counts >= min_count).sum()),
        "num_modes": mixture.num_modes,
        "high_quality": counts.sum().item() / max(len(samples), 1),
        "kl": kl_to_uniform(counts),
        "counts": counts.tolist(),
        "min_count": min_count,
    }


# ------------------------------------------------------------------------------------------------ models


def mlp(in_dim: int, out_dim: int, hidden: int = 128, depth: int = 3) -> nn.Sequential:
    """`depth` hidden Linear+ReLU layers of width `hidden`, then a linear output."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden if depth else in_dim, out_dim))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class MogConfig:
    """One lab run. The defaults (hinge + R1 gamma=1, 2,000 steps) find all 8 ring modes in ~10-30 CPU-seconds."""

    dataset: str = "ring"  # ring | grid
    loss: str = "hinge"  # a name in training.losses.LOSSES
    r1_gamma: float = 1.0  # R1 penalty weight on real data (0 = off)
    gp_lambda: float = 0.0  # WGAN-GP weight (0 = off)
    steps: int = 2000  # generator steps
    d_steps: int = 1  # discriminator steps per generator step
    batch_size: int = 256
    lr_g: float = 1e-3
    lr_d: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    ema_decay: float = 0.99  # evaluate an EMA of G's weights with this decay (0 = the raw G)
    z_dim: int = 16
    hidden: int = 128  # width of G's and D's hidden layers
    depth: int = 3  # hidden layers in G and D
    seed: int = 0
    eval_samples: int = 2500  # samples scored at the end (and every `eval_every` steps); 2,500 as in VEEGAN/PacGAN
    eval_every: int = 250  # steps between intermediate evaluations (the "history"; 0 = only at the end)
    min_count: int = 10  # high-quality samples a mode needs to count as covered

    def __post_init__(self) -> None:
        get_loss(self.loss)
        get_mixture(self.dataset)
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("r1_gamma", "gp_lambda", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("steps", "d_steps", "batch_size", "z_dim", "hidden", "eval_samples", "min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _finite(x: float | None) -> float | None:
    """JSON has no NaN/inf: report them as null."""
    return x if x is not None and math.isfinite(x) else None


@torch.no_grad()
def evaluation_samples(G: nn.Module, cfg: MogConfig) -> Tensor:
    """The `eval_samples` points (N, 2) a run is scored on: the same noise at every evaluation of a run."""
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    return G(torch.randn(cfg.eval_samples, cfg.z_dim, generator=gen))


def train_mog(cfg: MogConfig, logdir: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train G and D on the configured mixture; returns G and a report (final metrics, gradient norms, history).

    With `logdir`, TensorBoard gets per step the losses, the penalty, the mean logits and the generator's
    gradient norm (where the saturating loss's vanishing gradient shows), and the metrics every `eval_every` steps.
    """
    mixture = get_mixture(cfg.dataset)
    d_loss_fn, g_loss_fn = get_loss(cfg.loss)
    torch.manual_seed(cfg.seed)  # network initialisation
    G, D = mlp(cfg.z_dim, 2, cfg.hidden, cfg.depth), mlp(2, 1, cfg.hidden, cfg.depth)
    G_eval = copy.deepcopy(G).requires_grad_(False) if cfg.ema_decay else G
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    data_gen = torch.Generator().manual_seed(2 * cfg.seed)
    noise_gen = torch.Generator().manual_seed(2 * cfg.seed + 1)
    critic = lambda x: D(x).squeeze(1)  # noqa: E731  (B, 2) -> (B,) logits

    writer = None
    if logdir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(logdir))
    g_norms: list[float] = []
    history: list[dict[str, Any]] = []
    diverged = False
    start, start_cpu = time.time(), time.process_time()
    for step in range(1, cfg.steps + 1):
        # --- discriminator step(s) ---
        for _ in range(cfg.d_steps):
            real = mixture.sample(cfg.batch_size, data_gen)
            with torch.no_grad():
                fake = G(torch.randn(cfg.batch_size, cfg.z_dim, generator=noise_gen))
            r, f = critic(real), critic(fake)
            loss_d = d_loss_fn(r, f)
            penalty = torch.zeros(())
            if cfg.r1_gamma > 0:
                penalty = penalty + r1_penalty(critic, real, cfg.r1_gamma)
            if cfg.gp_lambda > 0:
                penalty = penalty + gradient_penalty(critic, real, fake, cfg.gp_lambda, generator=noise_gen)
            opt_d.zero_grad(set_to_none=True)
            (loss_d + penalty).backward()
            opt_d.step()
        # --- generator step ---
        D.requires_grad_(False)
        loss_g = g_loss_fn(critic(G(torch.randn(cfg.batch_size, cfg.z_dim, generator=noise_gen))))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        D.requires_grad_(True)
        g_norms.append(grad_norm(G))
        opt_g.step()
        if cfg.ema_decay:
            ema_update(G_eval, G, cfg.ema_decay)
        diverged = diverged or not (math.isfinite(loss_d.item()) and math.isfinite(loss_g.item()))

        if writer is not None:
            scalars = {"loss/d": loss_d.item(), "loss/g": loss_g.item(), "loss/penalty": penalty.item(),
                       "grad_norm/g": g_norms[-1], "logits/real": r.mean().item(), "logits/fake": f.mean().item()}
            for key, value in scalars.items():
                writer.add_scalar(key, value, step)
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            m = mode_metrics(evaluation_samples(G_eval, cfg), mixture, cfg.min_count)
            history.append({"step": step, "modes_covered": m["modes_covered"], "high_quality": m["high_quality"],
                            "kl": m["kl"]})
            if writer is not None:
                writer.add_scalar("mog/modes_covered", m["modes_covered"], step)
                writer.add_scalar("mog/high_quality", m["high_quality"], step)
                if m["kl"] is not None:
                    writer.add_scalar("mog/kl", m["kl"], step)
    seconds, cpu_seconds = time.time() - start, time.process_time() - start_cpu
    if writer is not None:
        writer.close()

    final = mode_metrics(evaluation_samples(G_eval, cfg), mixture, cfg.min_count)
    tenth = max(1, len(g_norms) // 10)
    mean = lambda xs: _finite(sum(xs) / len(xs))  # noqa: E731
    report = {
        **final,
        # ||dL_G/dtheta_G|| before each G step: the saturating loss's starved generator shows here
        "g_grad_norm": {"mean": mean(g_norms), "first_10pct": mean(g_norms[:tenth]),
                        "last_10pct": mean(g_norms[-tenth:])},
        "diverged": diverged,
        "history": history,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),  # wall time misleads on a shared machine
        "config": dataclasses.asdict(cfg),
    }
    return G_eval, report


# ------------------------------------------------------------------------------------------------- plots


def scatter_png(samples: Tensor, mixture: Mixture, path: str | Path, title: str = "", size: int = 480) -> Path:
    """PNG of generated samples (blue dots) over the true modes (red 3-sigma circles and centres), drawn with PIL."""
    from PIL import Image, ImageDraw

    from models.checkpoint import atomic_write

    half = float(mixture.centres.abs().max()) + 1.0  # half-width of the square view, data units
    top = 20 if title else 0
    img = Image.new("RGB", (size, size + top), "white")
    draw = ImageDraw.Draw(img)

    def px(x: float, y: float) -> tuple[float, float]:
        return (x + half) / (2 * half) * (size - 1), top + (half - y) / (2 * half) * (size - 1)

    draw.rectangle([0, top, size - 1, size + top - 1], outline=(160, 160, 160))
    for x, y in samples.tolist():
        if math.isfinite(x) and math.isfinite(y) and abs(x) <= half and abs(y) <= half:
            u, v = px(x, y)
            draw.rectangle([u - 1, v - 1, u, v], fill=(40, 90, 200))
    radius = max(3.0, 3 * mixture.sigma / (2 * half) * size)
    for x, y in mixture.centres.tolist():
        u, v = px(x, y)
        draw.ellipse([u - radius, v - radius, u + radius, v + radius], outline=(220, 30, 30), width=2)
        draw.ellipse([u - 1.5, v - 1.5, u + 1.5, v + 1.5], fill=(220, 30, 30))
    if title:
        draw.text((6, 4), title, fill="black")
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def summary_line(report: dict[str, Any], verbose: bool = True) -> str:
    """One human-readable line for a lab report (the plot's title when not `verbose`)."""
    c = report["config"]
    kl = "n/a" if report["kl"] is None else f"{report['kl']:.3f}"
    line = (f"{c['dataset']} {c['loss']} r1={c['r1_gamma']:g} gp={c['gp_lambda']:g} seed={c['seed']} "
            f"steps={c['steps']}: modes {report['modes_covered']}/{report['num_modes']}, "
            f"high-quality {100 * report['high_quality']:.1f}%, KL {kl}")
    if not verbose:
        return line
    g = report["g_grad_norm"]["mean"]
    return (f"{line}, mean G grad norm {'n/a' if g is None else f'{g:.3g}'}"
            f"{' (diverged)' if report['diverged'] else ''}, {report['seconds']:.1f} s")


def run_mog(cfg: MogConfig, plot: str | Path | None = None, logdir: str | Path | None = None) -> dict[str, Any]:
    """Train, score, and optionally write the scatter plot (samples over the true modes); returns the report."""
    G, report = train_mog(cfg, logdir)
    if plot is not None:
        scatter_png(evaluation_samples(G, cfg), get_mixture(cfg.dataset), plot, summary_line(report, verbose=False))
    return report
