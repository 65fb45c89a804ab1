"""What a servable generator takes and gives, by checkpoint kind: the contract every export and backend keeps.

    conditional     z (B, z_dim) float32, y (B,) int64  ->  image (B, C, R, R) float32 in [-1, 1]
    image-to-image  x (B, Cin, H, W) float32            ->  image (B, Cout, H, W) float32 in [-1, 1]
                    (H, W multiples of the U-Net's stride; models.sampling.translate pads to them)
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from models.checkpoint import CONDITIONAL, IMAGE_TO_IMAGE

INPUTS = {CONDITIONAL: ("z", "y"), IMAGE_TO_IMAGE: ("x",)}  # one entry per models.checkpoint.GENERATOR_KINDS
OUTPUT = "image"


def input_names(meta: dict[str, Any]) -> tuple[str, ...]:
    """The input names of a servable checkpoint's generator; ValueError for other kinds."""
    kind = meta.get("kind")
    if kind not in INPUTS:
        raise ValueError(f"a {kind!r} checkpoint ({meta.get('architecture')}) is not a servable generator; "
                         f"exportable kinds: {sorted(INPUTS)}")
    return INPUTS[kind]


def dynamic_axes(meta: dict[str, Any]) -> dict[str, dict[int, str]]:
    """Every input and the output have a dynamic batch; image-to-image also a dynamic height and width."""
    if meta["kind"] == CONDITIONAL:
        return {"z": {0: "batch"}, "y": {0: "batch"}, OUTPUT: {0: "batch"}}
    return {"x": {0: "batch", 2: "height", 3: "width"}, OUTPUT: {0: "batch", 2: "height", 3: "width"}}


def example_inputs(module: nn.Module, meta: dict[str, Any], batch: int, size: tuple[int, int] | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random host inputs for `batch` images (image-to-image: of `size`, default the training resolution)."""
    gen = torch.Generator().manual_seed(seed)
    if input_names(meta) == ("z", "y"):
        z = torch.randn(batch, module.z_dim, generator=gen)
        return z, torch.randint(0, module.num_classes, (batch,), generator=gen)
    r = module.img_resolution
    h, w = size or (r, r)
    return (torch.rand(batch, module.in_channels, h, w, generator=gen) * 2 - 1,)
