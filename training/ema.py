"""The generator's exponential moving average and the BatchNorm statistics that go with its weights."""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn as nn


def ema_decay_at(step: int, decay: float, warmup: float) -> float:
    """The decay of the update made at `step` (0-based, before the step count moves on): warmed up as
    min(decay, (1 + step) / (warmup + step)), so early weights do not linger. Below the cap the EMA at step T
    weighs step s as ~s^(warmup - 2): a power-law average whose centre of mass lies T / warmup steps back."""
    return min(decay, (1 + step) / (warmup + step))


@torch.no_grad()
def posthoc_ema(snapshots: Iterable[tuple[int, dict[str, torch.Tensor]]], profiles: Iterable[tuple[float, float]],
                names: Iterable[str]) -> dict[tuple[float, float], dict[str, torch.Tensor]]:
    """{(decay, warmup): the EMA of that profile (`ema_decay_at`) of the tensors `names` (G's parameters)} at the
    last of `snapshots` (step, raw state dict), in step order from step 0, as the training loop would have kept
    it, in one pass over the snapshots: the updates of the steps between two snapshots all take the later
    snapshot's weights (exact for a snapshot every step)."""
    names, profiles, emas, last = list(names), list(profiles), None, 0
    for step, state in snapshots:
        if emas is None:
            if step != 0:
                raise ValueError(f"post-hoc EMA needs the step-0 snapshot first; got step {step}")
            emas = {p: {n: state[n].detach().clone().float() for n in names} for p in profiles}
            continue
        if step <= last:
            raise ValueError(f"snapshots must come in increasing step order; got {step} after {last}")
        for (decay, warmup), ema in emas.items():
            keep = 1.0
            for t in range(last, step):
                keep *= ema_decay_at(t, decay, warmup)
            for n in names:
                ema[n].lerp_(state[n].float(), 1.0 - keep)
        last = step
    if emas is None:
        raise ValueError("post-hoc EMA needs at least one snapshot")
    return emas


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
