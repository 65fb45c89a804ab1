"""What differs between the two kinds of GAN the loop trains, as a small task object each.

A task says how a batch is drawn (labels + images, or source + target images), how the generator is called,
the generator's extra loss (pix2pix's L1), the preview grid and the exported metadata.
Discriminators all take `D(x, condition)`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.checkpoint import CONDITIONAL, IMAGE_TO_IMAGE, build_metadata
from models.sampling import generate, grid, to_uint8

from .config import TrainConfig, to_dict
from .data import geometry, prepare
from .datasets import open_dataset
from .ema import recalibrate_batchnorm
from .loader import GlobalBatchSampler, batches, make_loader
from .regularizers import mode_seeking_loss
from .sample import save_png


def _provenance(cfg: TrainConfig, step: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": cfg.data.name, "split": "train", "steps": step, "seed": cfg.seed,
            "command": " ".join(sys.argv), "config": to_dict(cfg), **extra}


class ConditionalTask:
    """noise + class label -> image. Condition = labels."""

    kind = CONDITIONAL

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        d = cfg.data
        self.data = open_dataset(d.name, "train", d.root, d.resolution, d.channels, d.fit)  # streamed from disk
        self.num_classes = len(self.data.class_names)
        self.hflip = self.data.hflip if d.hflip is None else d.hflip

    def __len__(self) -> int:
        return len(self.data)

    def arch_defaults(self) -> tuple[dict[str, Any], dict[str, Any]]:
        common = {"num_classes": self.num_classes, "img_resolution": self.cfg.data.resolution,
                  "img_channels": self.data.channels}
        return common, common

    def batches(self, sampler: GlobalBatchSampler) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(labels, images in [-1, 1] at the model resolution) for the sampler's draws, decoded in workers."""
        loader = make_loader(self.data, sampler, self.cfg.data.workers, pin_memory=self.device.type == "cuda")
        for images, labels in batches(loader):
            yield labels.to(self.device), prepare(images, self.cfg.data.resolution).to(self.device)

    def noise(self, G: nn.Module, noise_gen: torch.Generator, rows: slice) -> torch.Tensor:
        """z for this rank's `rows` of the global batch, drawn for the whole global batch from the stream all
        ranks share: the ranks get distinct z, and the run draws the same z on any world size."""
        return torch.randn(self.cfg.batch_size, G.z_dim, generator=noise_gen)[rows].to(self.device)

    def fake(self, G: nn.Module, cond: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return G(z, cond), z

    def g_extra(self, fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor, z: torch.Tensor,
                d_feats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The mode-seeking terms: in pixels (`mode_seeking`) and in D's features (`mode_seeking_features`;
        `d_feats` = D's features of `fake` and of `real`, given by the loop when that term is on)."""
        cfg, loss = self.cfg, torch.zeros((), device=fake.device)
        if cfg.mode_seeking > 0:
            loss = loss + cfg.mode_seeking * mode_seeking_loss(fake, z, cond, real=real, cap=cfg.mode_seeking_cap)
        if cfg.mode_seeking_features > 0:
            fake_f, real_f = d_feats
            # in units of the real batch's spread in those features (the mean L1 distance per feature over all
            # its pairs): D's feature scale drifts as D trains, the term's strength should not
            r = real_f.detach().float()
            scale = (torch.pdist(r, p=1).mean() / r.shape[1]).clamp(min=1e-6)
            loss = loss + cfg.mode_seeking_features * mode_seeking_loss(fake_f / scale, z, cond, real=real_f / scale,
                                                                        cap=cfg.mode_seeking_cap)
        return loss

    def recalibrate(self, G: nn.Module, batches: int) -> None:
        gen = torch.Generator().manual_seed(self.cfg.seed)
        recalibrate_batchnorm(G, lambda i: (torch.randn(64, G.z_dim, generator=gen).to(self.device),
                                            torch.randint(0, self.num_classes, (64,), generator=gen).to(self.device)),
                              batches)

    def metadata(self, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        _, native = geometry(self.data.native_size, self.cfg.data.resolution)
        return build_metadata(self.kind, self.data.class_names, self.cfg.data.resolution,
                              self.data.channels, native,
                              provenance=_provenance(self.cfg, step, extra), metrics={})

    def save_grid(self, G: nn.Module, meta: dict[str, Any], path: Path, max_rows: int = 16) -> None:
        """Fixed-seed samples, one row per class (first `max_rows` classes)."""
        cols = self.cfg.grid_columns
        labels = [r for r in range(min(self.num_classes, max_rows)) for _ in range(cols)]
        save_png(path, grid(to_uint8(generate(G, labels, list(range(len(labels)))), meta), cols))


class TranslationTask:
    """source image -> target image (pix2pix). Condition = the source batch."""

    kind = IMAGE_TO_IMAGE

    def __init__(self, cfg: TrainConfig, device: torch.device):
        from .paired import load_paired

        self.cfg, self.device = cfg, device
        d = cfg.data
        self.data = load_paired(d.paired, d.name, "train", d.root, d.resolution, d.channels, d.source_channels,
                                d.direction)

    def __len__(self) -> int:
        return len(self.data)

    def arch_defaults(self) -> tuple[dict[str, Any], dict[str, Any]]:
        common = {"in_channels": self.data.source_channels, "out_channels": self.data.target_channels,
                  "img_resolution": self.cfg.data.resolution}
        return common, common

    hflip = False  # a flip would have to apply to both images of a pair

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source, target = self.data.batch(idx, self.cfg.data.resolution)
        return source.to(self.device), target.to(self.device)

    def batches(self, sampler: GlobalBatchSampler) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(source, target) for the sampler's draws; the pairs are in memory, so no worker processes."""
        for keys in sampler:
            yield self.batch(torch.tensor([i for i, _ in keys], dtype=torch.long))

    def noise(self, G: nn.Module, noise_gen: torch.Generator, rows: slice) -> None:
        return None  # dropout is the noise source

    def fake(self, G: nn.Module, cond: torch.Tensor, z: None) -> tuple[torch.Tensor, None]:
        return G(cond), None

    def g_extra(self, fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor, z: None,
                d_feats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        return self.cfg.l1_weight * F.l1_loss(fake.float(), real.float())

    def recalibrate(self, G: nn.Module, batches: int) -> None:
        sampler = GlobalBatchSampler(len(self.data), min(64, len(self.data)), self.cfg.seed + 7)
        recalibrate_batchnorm(G, lambda i: (self.batch(sampler.indices(i))[0],), batches)

    def metadata(self, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        d = self.cfg.data
        mode, native = geometry(self.data.native_size, d.resolution)
        task = {"source_channels": self.data.source_channels, "target_channels": self.data.target_channels,
                "derivation": self.data.derivation, "paired": d.paired, "direction": d.direction,
                "training_geometry": mode}
        return build_metadata(self.kind, self.data.class_names, d.resolution, self.data.target_channels, native,
                              task=task, provenance=_provenance(self.cfg, step, extra), metrics={})

    def save_grid(self, G: nn.Module, meta: dict[str, Any], path: Path) -> None:
        """Three rows: sources, outputs, targets, for the first `grid_columns` training pairs."""
        idx = torch.arange(min(self.cfg.grid_columns, len(self.data)))
        source, target = self.batch(idx)
        with torch.no_grad():
            output = G(source).float()
        rows = [to_uint8(t.float().cpu(), meta) for t in (source, output, target)]
        rows = [r if r.ndim == 4 else np.repeat(r[..., None], 3, -1) for r in rows]
        rows = [r if r.shape[-1] == 3 else np.repeat(r, 3, -1) for r in rows]
        save_png(path, grid(np.concatenate(rows), len(idx)))


TASKS = {CONDITIONAL: ConditionalTask, IMAGE_TO_IMAGE: TranslationTask}
