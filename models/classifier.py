"""A small CNN classifier: the domain feature space for evaluation (FID/KID/precision/recall/diversity)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class DomainClassifierConfig:
    num_classes: int = 10
    img_resolution: int = 28  # native resolution of the data; any size >= 8 works (global pooling)
    img_channels: int = 1
    width: int = 32
    feature_dim: int = 128


class DomainClassifier(nn.Module):
    """image in [-1, 1] -> logits; `features(x)` gives the penultimate embedding used as the metric space."""

    config_class = DomainClassifierConfig

    def __init__(self, config: DomainClassifierConfig):
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.num_features = config.feature_dim
        w = config.width

        def conv(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *conv(config.img_channels, w), *conv(w, w), nn.MaxPool2d(2),
            *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),
            *conv(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w, config.feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, feature_dim)
        return F.relu(self.fc(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
