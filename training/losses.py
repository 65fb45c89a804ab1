"""GAN losses as plain functions of discriminator logits. D minimises `d_*`, G minimises `g_*`.

r = D(x_real), f = D(G(z)); sigma is the logistic function; softplus(t) = log(1 + e^t).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def d_minimax(r: Tensor, f: Tensor) -> Tensor:
    """L_D = -E[log sigma(r)] - E[log(1 - sigma(f))] = E[softplus(-r)] + E[softplus(f)] (Goodfellow et al. 2014)."""
    return F.softplus(-r).mean() + F.softplus(f).mean()


def g_minimax(f: Tensor) -> Tensor:
    """L_G = E[log(1 - sigma(f))] = -E[softplus(f)]: the original, saturating generator loss."""
    return -F.softplus(f).mean()


def g_nonsaturating(f: Tensor) -> Tensor:
    """L_G = -E[log sigma(f)] = E[softplus(-f)]: the non-saturating generator loss (D uses d_minimax)."""
    return F.softplus(-f).mean()


def d_hinge(r: Tensor, f: Tensor) -> Tensor:
    """L_D = E[max(0, 1 - r)] + E[max(0, 1 + f)] (Lim & Ye 2017; SNGAN, BigGAN)."""
    return F.relu(1 - r).mean() + F.relu(1 + f).mean()


def g_hinge(f: Tensor) -> Tensor:
    """L_G = -E[f]."""
    return -f.mean()


def d_wasserstein(r: Tensor, f: Tensor) -> Tensor:
    """L_D = E[f] - E[r]: the critic's side of the Kantorovich-Rubinstein dual (needs a Lipschitz constraint)."""
    return f.mean() - r.mean()


def g_wasserstein(f: Tensor) -> Tensor:
    """L_G = -E[f]."""
    return -f.mean()


def d_least_squares(r: Tensor, f: Tensor) -> Tensor:
    """L_D = 1/2 E[(r - 1)^2] + 1/2 E[f^2] (LSGAN, Mao et al. 2017, a=0, b=c=1)."""
    return 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean()


def g_least_squares(f: Tensor) -> Tensor:
    """L_G = 1/2 E[(f - 1)^2]."""
    return 0.5 * ((f - 1) ** 2).mean()


def feature_matching(fake_feats: list[Tensor], real_feats: list[Tensor]) -> Tensor:
    """sum over D's layers of E|D_l(fake) - D_l(real)|, the real side detached (pix2pixHD, Wang et al. 2018;
    it weighs the layers of its 3-layer PatchGAN equally). The pairs share a source, so this pulls the output
    towards its own target in D's feature space rather than towards any realistic image."""
    return sum(F.l1_loss(f.float(), r.detach().float()) for f, r in zip(fake_feats, real_feats, strict=True))


# name -> (discriminator loss, generator loss)
LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "minimax": (d_minimax, g_minimax),
    "non-saturating": (d_minimax, g_nonsaturating),
    "hinge": (d_hinge, g_hinge),
    "wasserstein": (d_wasserstein, g_wasserstein),
    "least-squares": (d_least_squares, g_least_squares),
}


def get_loss(name: str) -> tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """(d_loss, g_loss) for a loss name; ValueError lists the known names."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {list(LOSSES)}")
    return LOSSES[name]
