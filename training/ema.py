"""The generator's exponential moving average and the BatchNorm statistics that go with its weights."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN statistics) are copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@torch.no_grad()
def recalibrate_batchnorm(generator: nn.Module, inputs: Any, batches: int = 32) -> None:
    """Re-estimate BatchNorm running statistics for the (EMA) weights as a cumulative average over
    `batches` forward passes ("standing statistics", BigGAN), so eval-mode outputs match the weights.
    `inputs(i)` returns the positional arguments of the i-th forward pass."""
    bns = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    generator.train()
    for i in range(batches):
        generator(*inputs(i))
    for bn, m in zip(bns, saved):
        bn.momentum = m
    generator.eval()
