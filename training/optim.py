"""Optimiser-side helpers shared by the training loops: the learning-rate schedule and gradient norms."""
from __future__ import annotations

import torch
import torch.nn as nn


def lr_scale(step: int, steps: int, decay_steps: int) -> float:
    """Learning-rate factor at `step`: 1, then linearly down to 0 over the last `decay_steps` steps (pix2pix's
    schedule). A function of the step alone, so a resumed run follows the same schedule."""
    if decay_steps <= 0:
        return 1.0
    return min(1.0, (steps - step) / decay_steps)


def grad_norm(module: nn.Module) -> float:
    """L2 norm of all parameter gradients of `module`."""
    norms = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return torch.stack(norms).norm().item() if norms else 0.0
