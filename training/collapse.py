"""The mode-collapse alarm the loop consults every `collapse_check_every` steps."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from models.sampling import generate, to_uint8

from .config import TrainConfig
from .tasks import ConditionalTask


class CollapseMonitor:
    """Mode-collapse alarm: every `collapse_check_every` steps, sample each class with the EMA generator and
    compare its diversity (mean pairwise distance in the domain classifier's feature space) with the real
    data's. A class below `collapse_threshold` raises the alarm once it has reached `collapse_arm` at an
    earlier check (it fell into collapse; the gap between the two levels keeps noise around the threshold
    from alarming), or at any check from step `collapse_warmup` on (it never became varied). Before that,
    low diversity is how every generator starts: it has not learned to use z yet."""

    def __init__(self, cfg: TrainConfig, task: ConditionalTask, device: torch.device, per_class: int = 64):
        from models import load

        from .evaluate import default_classifier, embed

        self.cfg, self.task, self.per_class = cfg, task, per_class
        self.classifier, _ = load(cfg.classifier or default_classifier(cfg.data.name), device)
        data = task.data
        idx = torch.cat([torch.nonzero(data.labels == c).flatten()[:per_class] for c in range(task.num_classes)])
        self.real_feats, _ = embed(self.classifier, data.images[idx])
        self.real_labels = data.labels[idx]
        self.labels = torch.arange(task.num_classes).repeat_interleave(per_class)
        self.seeds = (10_000_000 + torch.arange(len(self.labels))).tolist()  # fixed, apart from grid seeds
        self.armed: set[str] = set()  # classes that have reached collapse_arm at some check

    def collapsed(self, ratios: dict[str, float], step: int) -> dict[str, float]:
        """The classes to alarm on at this check (name -> ratio), given `check`'s ratios."""
        low = {n: round(v, 3) for n, v in ratios.items() if v < self.cfg.collapse_threshold}
        alarm = {n: v for n, v in low.items() if n in self.armed or step >= self.cfg.collapse_warmup}
        self.armed |= {n for n, v in ratios.items() if v >= self.cfg.collapse_arm}
        return alarm

    def check(self, G_ema: nn.Module, meta: dict[str, Any]) -> dict[str, float]:
        """Diversity ratio per class name."""
        from .evaluate import as_nchw, class_diversity, embed

        self.task.recalibrate(G_ema, batches=4)
        feats, _ = embed(self.classifier, as_nchw(to_uint8(generate(G_ema, self.labels.tolist(), self.seeds), meta)))
        div = class_diversity(feats, self.labels, self.real_feats, self.real_labels, self.task.num_classes)
        return {name: d["ratio"] for name, d in zip(self.task.data.class_names, div)}
