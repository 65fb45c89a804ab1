"""Tiny, randomly initialised (seeded) checkpoints of every servable architecture, in the real format."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
NORM = {"mean": 0.5, "std": 0.5}
# architecture -> (config, metadata): one conditional RGB ResNet, one grey MLP, one grey-to-RGB U-Net.
SERVABLE = {
    "ConditionalGenerator": (
        {"num_classes": 10, "img_resolution": 32, "img_channels": 3, "z_dim": 16, "base_channels": 8,
         "max_channel_mult": 4, "embed_dim": 16},
        {"kind": "conditional", "class_names": FASHION, "native_size": [28, 28], "img_resolution": 32,
         "img_channels": 3}),
    "MLPGenerator": (
        {"num_classes": 10, "img_resolution": 28, "img_channels": 1, "z_dim": 16},
        {"kind": "conditional", "class_names": FASHION, "native_size": None, "img_resolution": 28,
         "img_channels": 1}),
    "UNetGenerator": (
        {"in_channels": 1, "out_channels": 3, "img_resolution": 32, "depth": 3, "base_channels": 8},
        {"kind": "image-to-image", "class_names": FASHION, "native_size": [28, 28], "img_resolution": 32,
         "img_channels": 3, "task": {"source_channels": 1, "target_channels": 3, "derivation": "edges"}}),
}


def save_servable(folder: Path) -> dict[str, Path]:
    import models

    paths = {}
    for i, (name, (config, meta)) in enumerate(SERVABLE.items()):
        with torch.random.fork_rng():
            torch.manual_seed(i)
            module = models.build(name, config).eval()
            for m in module.modules():  # non-trivial BatchNorm statistics, so eval mode is really exercised
                if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        paths[name] = models.save(module, folder / name, {
            **meta, "normalization": NORM, "provenance": {"dataset": "none (random weights)", "steps": 0, "seed": i}})
    return paths


@pytest.fixture(scope="session")
def servable(tmp_path_factory) -> dict[str, Path]:
    """architecture -> checkpoint file."""
    return save_servable(tmp_path_factory.mktemp("servable"))
