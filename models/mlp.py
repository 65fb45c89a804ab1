"""The popular tutorial conditional MLP GAN (label embedding concatenated with z / the flat image).

Kept as a registered architecture so it trains through the same loop and is the baseline the
ResNet recipe is compared against in benchmarks/RESULTS.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class MLPGeneratorConfig:
    num_classes: int = 10
    img_resolution: int = 28
    img_channels: int = 1
    z_dim: int = 100


class MLPGenerator(nn.Module):
    """(z, y) -> image: [z, onehot-embed(y)] -> 128 -> 256 -> 512 -> 1024 -> C*R*R, tanh."""

    config_class = MLPGeneratorConfig

    def __init__(self, config: MLPGeneratorConfig):
        super().__init__()
        self.config = config
        self.z_dim = config.z_dim
        self.num_classes = config.num_classes
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.embed = nn.Embedding(config.num_classes, config.num_classes)
        out = config.img_channels * config.img_resolution**2

        def block(i: int, o: int, norm: bool) -> list[nn.Module]:
            return [nn.Linear(i, o)] + ([nn.BatchNorm1d(o, 0.8)] if norm else []) + [nn.LeakyReLU(0.2)]

        self.net = nn.Sequential(
            *block(config.z_dim + config.num_classes, 128, False),
            *block(128, 256, True),
            *block(256, 512, True),
            *block(512, 1024, True),
            nn.Linear(1024, out),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r, c = self.img_resolution, self.img_channels
        return self.net(torch.cat([z, self.embed(y)], dim=1)).view(-1, c, r, r)


@dataclass(frozen=True)
class MLPDiscriminatorConfig:
    num_classes: int = 10
    img_resolution: int = 28
    img_channels: int = 1


class MLPDiscriminator(nn.Module):
    """(x, y) -> logit: [flat x, embed(y)] -> 512 -> 512 (dropout) -> 512 (dropout) -> 1."""

    config_class = MLPDiscriminatorConfig

    def __init__(self, config: MLPDiscriminatorConfig):
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.embed = nn.Embedding(config.num_classes, config.num_classes)
        inp = config.img_channels * config.img_resolution**2 + config.num_classes
        self.net = nn.Sequential(
            nn.Linear(inp, 512), nn.LeakyReLU(0.2),
            nn.Linear(512, 512), nn.Dropout(0.4), nn.LeakyReLU(0.2),
            nn.Linear(512, 512), nn.Dropout(0.4), nn.LeakyReLU(0.2),
            nn.Linear(512, 1),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x.flatten(1), self.embed(y)], dim=1)).squeeze(1)
