"""Gradient penalties on the discriminator (spectral norm is an architecture option, `spectral_norm: true`),
and the mode-seeking term on the generator."""
from __future__ import annotations

import math
from typing import Callable

import torch

Critic = Callable[[torch.Tensor], torch.Tensor]  # x -> logits (labels already bound)


def _grad_sq_norm(critic: Critic, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    out = critic(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.pow(2).flatten(1).sum(1)  # (B,)


def r1_penalty(critic: Critic, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1 = gamma/2 * E_real[ ||grad_x D(x)||^2 ] (Mescheder et al. 2018)."""
    return 0.5 * gamma * _grad_sq_norm(critic, real).mean()


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor, lam: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP = lambda * E_xhat[(||grad D(xhat)||_2 - 1)^2], xhat = eps*real + (1-eps)*fake, eps~U[0,1] (Gulrajani 2017)."""
    eps = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), generator=generator).to(real)
    xhat = eps * real.detach() + (1 - eps) * fake.detach()
    norm = (_grad_sq_norm(critic, xhat) + 1e-12).sqrt()
    return lam * ((norm - 1) ** 2).mean()


# E|a - b| for a, b ~ N(0, 1) independent: the mean per-dimension noise distance of two random z.
_Z_PAIR_DISTANCE = 2 / math.sqrt(math.pi)


def mode_seeking_loss(images: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, eps: float = 1e-5,
                      real: torch.Tensor | None = None, cap: float = 0.0) -> torch.Tensor:
    """Mode seeking (MSGAN, Mao et al. 2019) over the same-class pairs (i, j) of a batch:
    L_ms = 1 / (mean_ij[ r_ij ] + eps),  r_ij = mean|G(z_i, c) - G(z_j, c)| / mean|z_i - z_j|.
    Minimising it pushes samples of one class apart in proportion to their noise distance, which counters
    intra-class mode collapse. Zero (no gradient) when no two samples share a class.

    With `cap` > 0 and the real batch `real` (labelled by the same `labels`, as the training step's are), each
    pair's ratio is capped, as DSGAN caps it (min(r_ij, tau), Yang et al. 2019), at tau_c = cap x (the mean
    distance of the real same-class pairs of class c in the batch) / E|z_i - z_j|: a pair already as far apart
    as two real images of its class gets no push, so the term stops rewarding spread beyond the data's own
    (off-class extremes such as plain white slabs) while still pushing near-duplicates apart. Assumes z ~ N(0, 1)."""
    same = (labels[:, None] == labels[None, :]).triu(diagonal=1)
    i, j = same.nonzero(as_tuple=True)
    if len(i) == 0:
        return images.sum() * 0
    x, n = images.float().flatten(1), z.float().flatten(1)
    ratio = (x[i] - x[j]).abs().mean(1) / (n[i] - n[j]).abs().mean(1)
    if cap > 0:
        if real is None or real.shape[0] != labels.shape[0]:
            raise ValueError("a capped mode-seeking term needs the real batch its labels belong to")
        r = real.detach().float().flatten(1)
        real_dist = (r[i] - r[j]).abs().mean(1)  # the same (i, j) pairs: both rows are real images of class c
        classes = labels[i]
        per_class = torch.zeros(int(labels.max()) + 1, device=r.device).index_add_(0, classes, real_dist)
        counts = torch.zeros_like(per_class).index_add_(0, classes, torch.ones_like(real_dist))
        tau = cap * (per_class / counts.clamp(min=1))[classes] / _Z_PAIR_DISTANCE
        ratio = torch.minimum(ratio, tau)
    return 1 / (ratio.mean() + eps)
