"""Class-conditional ResNet generator (conditional BatchNorm) and projection discriminator (SNGAN/BigGAN style)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import DBlock, GBlock, maybe_sn


def _num_stages(resolution: int) -> int:
    """Number of 2x stages between 4x4 and `resolution` (32 -> 3, 64 -> 4, 128 -> 5)."""
    stages = int(math.log2(resolution)) - 2
    if resolution < 16 or 2 ** (stages + 2) != resolution:
        raise ValueError(f"img_resolution must be a power of two >= 16, got {resolution}")
    return stages


@dataclass(frozen=True)
class ConditionalGeneratorConfig:
    num_classes: int = 10
    img_resolution: int = 32
    img_channels: int = 1
    z_dim: int = 128
    base_channels: int = 64  # width of the last (highest-resolution) stage; earlier stages are wider
    max_channel_mult: int = 8
    embed_dim: int = 128  # shared class embedding fed to every conditional BatchNorm


class ConditionalGenerator(nn.Module):
    """(z, y) -> image in [-1, 1]: linear to 4x4, ResNet up-blocks with class-conditional BatchNorm, conv, tanh."""

    config_class = ConditionalGeneratorConfig

    def __init__(self, config: ConditionalGeneratorConfig):
        super().__init__()
        self.config = config
        self.z_dim = config.z_dim
        self.num_classes = config.num_classes
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        n = _num_stages(config.img_resolution)
        chans = [config.base_channels * min(2 ** (n - i), config.max_channel_mult) for i in range(n + 1)]
        cond_dim = config.embed_dim + config.z_dim
        self.embed = nn.Embedding(config.num_classes, config.embed_dim)
        self.fc = nn.Linear(config.z_dim, 4 * 4 * chans[0])
        self.blocks = nn.ModuleList(GBlock(chans[i], chans[i + 1], cond_dim) for i in range(n))
        self.out_bn = nn.BatchNorm2d(chans[-1])
        self.out_conv = nn.Conv2d(chans[-1], config.img_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # z: (B, z_dim), y: (B,) int64 -> (B, C, R, R)
        cond = torch.cat([self.embed(y), z], dim=1)
        h = self.fc(z).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            h = block(h, cond)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


@dataclass(frozen=True)
class ProjectionDiscriminatorConfig:
    num_classes: int = 10
    img_resolution: int = 32
    img_channels: int = 1
    base_channels: int = 64  # width of the first stage; each down-block doubles it up to max_channel_mult
    max_channel_mult: int = 8
    spectral_norm: bool = True


class ProjectionDiscriminator(nn.Module):
    """(x, y) -> logit: ResNet down-blocks, global sum pool, linear + <embed(y), h> (Miyato & Koyama 2018)."""

    config_class = ProjectionDiscriminatorConfig

    def __init__(self, config: ProjectionDiscriminatorConfig):
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        n = _num_stages(config.img_resolution)
        sn = config.spectral_norm
        chans = [config.base_channels * min(2**i, config.max_channel_mult) for i in range(n)]
        blocks = [DBlock(config.img_channels, chans[0], downsample=True, first=True, sn=sn)]
        blocks += [DBlock(chans[i - 1], chans[i], downsample=True, first=False, sn=sn) for i in range(1, n)]
        blocks.append(DBlock(chans[-1], chans[-1], downsample=False, first=False, sn=sn))
        self.blocks = nn.Sequential(*blocks)
        self.linear = maybe_sn(nn.Linear(chans[-1], 1), sn)
        self.embed = maybe_sn(nn.Embedding(config.num_classes, chans[-1]), sn)

    def features(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """[the pooled features (B, C'), the logits (B,)]: one pass gives both (feature matching, the
        mode-seeking term measured in D's features)."""
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # (B, C')
        return [h, self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # x: (B, C, R, R), y: (B,) -> (B,)
        return self.features(x, y)[-1]
