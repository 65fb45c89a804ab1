"""The training batch order: deterministic, resumable shuffles of a dataset's indices."""
from __future__ import annotations

import torch


class BatchSampler:
    """Deterministic shuffled batches: draw k covers positions k*B..(k+1)*B-1 of an endless sequence of
    per-epoch permutations seeded by (seed, epoch), so a resumed run sees exactly the same batches."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def indices(self, draw: int) -> torch.Tensor:
        pos = torch.arange(draw * self.batch_size, (draw + 1) * self.batch_size)
        epochs, offsets = pos // self.n, pos % self.n
        return torch.stack([self._permutation(int(e))[o] for e, o in zip(epochs, offsets)])
