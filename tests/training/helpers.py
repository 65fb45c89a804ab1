"""Tiny real runs shared by the training, CLI and service tests."""
from __future__ import annotations

from pathlib import Path

from training.classifier import train_classifier
from training.config import from_dict
from training.loop import train

TINY_SHAPES_RUN = {
    "name": "tiny",
    "data": {"name": "shapes", "resolution": 16},
    "generator": {"architecture": "ConditionalGenerator", "base_channels": 16, "max_channel_mult": 4,
                  "z_dim": 32, "embed_dim": 32},
    "discriminator": {"architecture": "ProjectionDiscriminator", "base_channels": 16, "max_channel_mult": 4},
    "loss": "hinge",
    "batch_size": 32,
    "steps": 900,  # ~1 min on 2 cores; conditional accuracy ~0.73 (chance 0.25)
    "lr_g": 5e-4, "lr_d": 1e-3, "betas": [0.0, 0.9], "ema_decay": 0.99,  # tiny nets take large steps
    "log_every": 50, "sample_every": 1000, "state_every": 1000,
}


def tiny_run(tmp: Path, **overrides) -> dict:
    """The tiny shapes run's config dict with workdir/export under `tmp`."""
    cfg = {**TINY_SHAPES_RUN, "workdir": str(tmp / "run"), "export": str(tmp / "ckpt"), **overrides}
    return cfg


def train_tiny(tmp: Path, resume: bool = False, **overrides) -> Path:
    return train(from_dict(tiny_run(tmp, **overrides)), resume=resume)


def shapes_classifier(tmp: Path) -> Path:
    out = tmp / "shapes_classifier"
    report = train_classifier("shapes", out=str(out), epochs=2, batch_size=64, width=8)
    assert report["test_accuracy"] > 0.9, report
    return out
