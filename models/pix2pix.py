"""Image-to-image GAN (Isola et al. 2017): U-Net generator and PatchGAN discriminator on (source, output) pairs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import maybe_sn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; allowed: ['batch', 'instance', 'none']")


@dataclass(frozen=True)
class UNetGeneratorConfig:
    in_channels: int = 1
    out_channels: int = 1
    img_resolution: int = 32  # training resolution; the network accepts any multiple of 2**depth
    depth: int = 4  # number of stride-2 down/up levels
    base_channels: int = 64
    max_channel_mult: int = 8
    dropout: float = 0.5  # on the innermost decoder levels: pix2pix's noise source
    dropout_levels: int = 2
    norm: str = "batch"


class UNetGenerator(nn.Module):
    """source (B, Cin, H, W) -> output (B, Cout, H, W) in [-1, 1]; H and W must be multiples of `stride`."""

    config_class = UNetGeneratorConfig

    def __init__(self, config: UNetGeneratorConfig):
        super().__init__()
        self.config = config
        self.in_channels, self.out_channels = config.in_channels, config.out_channels
        self.img_resolution = config.img_resolution
        self.img_channels = config.out_channels
        self.stride = 2**config.depth
        if config.depth < 1:
            raise ValueError(f"depth must be >= 1, got {config.depth}")
        chans = [config.base_channels * min(2**i, config.max_channel_mult) for i in range(config.depth)]
        self.down = nn.ModuleList()
        prev = config.in_channels
        for i, ch in enumerate(chans):  # conv4x4/2, then norm (not on the first or innermost), LeakyReLU
            norm = nn.Identity() if i in (0, config.depth - 1) else _norm(config.norm, ch)
            self.down.append(nn.Sequential(nn.Conv2d(prev, ch, 4, 2, 1, bias=False), norm))
            prev = ch
        self.up = nn.ModuleList()
        for i in reversed(range(config.depth)):  # ReLU, convT4x4/2 on [h, skip], norm, dropout
            inner = i == config.depth - 1
            out = chans[i - 1] if i > 0 else config.out_channels
            in_ch = chans[i] if inner else 2 * chans[i]
            layers: list[nn.Module] = [nn.ReLU(), nn.ConvTranspose2d(in_ch, out, 4, 2, 1, bias=i == 0)]
            if i > 0:
                layers.append(_norm(config.norm, out))
                if config.depth - 1 - i < config.dropout_levels and config.dropout > 0:
                    layers.append(nn.Dropout(config.dropout))
            self.up.append(nn.Sequential(*layers))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of {self.stride}; "
                             "pad it (models.sampling.translate does)")
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else self.act(h))
            skips.append(h)
        h = self.up[0](skips[-1])
        for block, skip in zip(self.up[1:], reversed(skips[:-1])):
            h = block(torch.cat([h, skip], dim=1))  # (B, 2C, H, W): U-Net skip connection
        return torch.tanh(h)


@dataclass(frozen=True)
class PatchDiscriminatorConfig:
    in_channels: int = 1  # source channels
    out_channels: int = 1  # target channels
    img_resolution: int = 32
    base_channels: int = 64
    n_layers: int = 3  # stride-2 layers; the 70x70 PatchGAN is n_layers=3 at 256x256
    max_channel_mult: int = 8
    norm: str = "batch"
    spectral_norm: bool = False


class PatchDiscriminator(nn.Module):
    """(x, source) -> (B, 1, h, w) patch logits judging whether x is a real translation of source."""

    config_class = PatchDiscriminatorConfig

    def __init__(self, config: PatchDiscriminatorConfig):
        super().__init__()
        self.config = config
        self.img_resolution = config.img_resolution
        self.img_channels = config.out_channels
        sn = config.spectral_norm
        norm = "none" if sn and config.norm == "batch" else config.norm
        c = config.base_channels
        layers: list[nn.Module] = [maybe_sn(nn.Conv2d(config.in_channels + config.out_channels, c, 4, 2, 1), sn),
                                   nn.LeakyReLU(0.2)]
        prev = c
        for i in range(1, config.n_layers + 1):
            ch = c * min(2**i, config.max_channel_mult)
            stride = 2 if i < config.n_layers else 1
            layers += [maybe_sn(nn.Conv2d(prev, ch, 4, stride, 1, bias=False), sn), _norm(norm, ch),
                       nn.LeakyReLU(0.2)]
            prev = ch
        layers.append(maybe_sn(nn.Conv2d(prev, 1, 4, 1, 1), sn))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([source, x], dim=1))

    def features(self, x: torch.Tensor, source: torch.Tensor) -> list[torch.Tensor]:
        """The activation after each LeakyReLU, then the patch logits (last): for feature matching."""
        h, out = torch.cat([source, x], dim=1), []
        for layer in self.net:
            h = layer(h)
            if isinstance(layer, nn.LeakyReLU):
                out.append(h)
        return out + [h]
