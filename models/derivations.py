"""Deterministic source-from-target derivations for image-to-image pairs, on normalised tensors in [-1, 1].

Stored by name in pix2pix checkpoints so the service can derive a model's input from an ordinary image.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
GAUSS3 = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.to(x)[None, None])


def edges(x: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W): black edges on white (like edges2shoes), Sobel magnitude of the
    blurred luma above `threshold` (in [-1, 1] units: a full black-to-white step gives ~4)."""
    g = _conv(_gray(x), GAUSS3)
    mag = (_conv(g, SOBEL_X) ** 2 + _conv(g, SOBEL_X.T) ** 2).sqrt()
    return torch.where(mag > threshold, -1.0, 1.0).to(x.dtype)


def downsample(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """x4 super-resolution input: average-pool by `factor`, bilinear back to the original size."""
    h, w = x.shape[-2:]
    small = F.adaptive_avg_pool2d(x, (max(1, h // factor), max(1, w // factor)))
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def mask(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Inpainting input: the centre square of side `ratio` * min(H, W) filled with mid-grey (0)."""
    h, w = x.shape[-2:]
    s = int(round(min(h, w) * ratio))
    top, left = (h - s) // 2, (w - s) // 2
    out = x.clone()
    out[..., top : top + s, left : left + s] = 0.0
    return out


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Colourisation input: ITU-R 601 luma, (B, 3, H, W) -> (B, 1, H, W)."""
    if x.shape[1] != 3:
        raise ValueError(f"the 'grayscale' derivation needs RGB data (3 channels), got {x.shape[1]}")
    return _gray(x)


# name -> (function, source channels as a function of target channels)
DERIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[int], int]]] = {
    "edges": (edges, lambda c: 1),
    "downsample": (downsample, lambda c: c),
    "mask": (mask, lambda c: c),
    "grayscale": (grayscale, lambda c: 1),
}


def derive(name: str, target: torch.Tensor) -> torch.Tensor:
    """Apply the named derivation; ValueError lists the known names."""
    if name not in DERIVATIONS:
        raise ValueError(f"unknown derivation {name!r}; allowed: {list(DERIVATIONS)}")
    return DERIVATIONS[name][0](target)


def source_channels(name: str, target_channels: int) -> int:
    """How many channels the named derivation produces from `target_channels`."""
    if name not in DERIVATIONS:
        raise ValueError(f"unknown derivation {name!r}; allowed: {list(DERIVATIONS)}")
    return DERIVATIONS[name][1](target_channels)
