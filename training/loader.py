"""Global batches by step, sharded by rank, and the DataLoader that decodes them in worker processes.

The sampler runs in the main process and hands each worker a list of keys `(index, flip)`; workers only
decode (no randomness there), so the batches do not depend on the number of workers.

Global batch `draw` is the k-th run of B consecutive entries of epoch e's permutation of the dataset
(seeded by (seed, e)), where B = the configured (global) `batch_size`, e = draw // (N // B) and
k = draw % (N // B); the last N % B entries of each permutation are skipped (a different few each epoch),
so a global batch never holds an index twice. Rank r of `world_size`
gets the r-th contiguous slice of B / world_size keys of that global batch, so the ranks of one step read
disjoint indices whose union is the global batch, and the data a run sees depends on (seed, step) only:
a run resumed at step s, with any number of workers, continues at the same position. A batch size that
world_size does not divide is refused (ValueError): dropping or padding samples would make the global
batch depend on the number of processes.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

Key = tuple[int, bool]  # (dataset index, flip horizontally)


class GlobalBatchSampler(Sampler[list[Key]]):
    """Deterministic shuffled global batches, this rank's share of each (see the module docstring).

    `draws`: the global batch numbers to yield in order (default: 0, 1, 2, ... forever); `hflip`: flip each
    sample horizontally with probability 1/2, decided per (seed, draw, position in the global batch)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 hflip: bool = False, draws: Iterable[int] | None = None):
        if n < 1:
            raise ValueError(f"cannot sample batches from an empty dataset (n={n})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1, got rank {rank} of world_size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} (the global batch) must be a multiple of world_size "
                             f"{world_size}; allowed: {[k * world_size for k in range(1, 5)]}, ...")
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} images); use a "
                             f"batch_size of at most {n}")
        self.n, self.batch_size, self.seed, self.hflip = n, batch_size, seed, hflip
        self.per_epoch = n // batch_size  # global batches per epoch
        self.rank, self.world_size, self.local_batch = rank, world_size, batch_size // world_size
        self.draws = draws
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def global_indices(self, draw: int) -> torch.Tensor:
        """Dataset indices of global batch `draw`, (batch_size,) int64, distinct, the same on every rank."""
        epoch, k = divmod(draw, self.per_epoch)
        return self._permutation(epoch)[k * self.batch_size : (k + 1) * self.batch_size]

    def _share(self) -> slice:
        return slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)

    def indices(self, draw: int) -> torch.Tensor:
        """This rank's indices of global batch `draw`, (batch_size / world_size,) int64."""
        return self.global_indices(draw)[self._share()]

    def flips(self, draw: int) -> torch.Tensor:
        """This rank's horizontal-flip decisions for global batch `draw`, bool (batch_size / world_size,)."""
        if not self.hflip:
            return torch.zeros(self.local_batch, dtype=torch.bool)
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + draw) % (2**63) + 17)
        return (torch.rand(self.batch_size, generator=gen) < 0.5)[self._share()]

    def keys(self, draw: int) -> list[Key]:
        """(index, flip) pairs of this rank's share of global batch `draw`: what the DataLoader fetches."""
        return list(zip(self.indices(draw).tolist(), self.flips(draw).tolist()))

    def __iter__(self) -> Iterator[list[Key]]:
        draws = self.draws if self.draws is not None else _count()
        for draw in draws:
            yield self.keys(int(draw))

    def __len__(self) -> int:
        if self.draws is None or not hasattr(self.draws, "__len__"):
            raise TypeError("this sampler is endless (no `draws` with a length)")
        return len(self.draws)  # type: ignore[arg-type]


def _count() -> Iterator[int]:
    draw = 0
    while True:
        yield draw
        draw += 1


def step_draws(start_step: int, steps: int, d_steps: int, adversarial: bool = True) -> Iterator[int]:
    """Global batch numbers read by training steps start_step .. steps-1: step s's D steps read draws
    s*d_steps + k (k < d_steps) and its G step reuses the first of them; without a discriminator only
    s*d_steps is read. A function of the step alone, so a resumed run reads what the straight run read."""
    for step in range(start_step, steps):
        for k in range(d_steps if adversarial else 1):
            yield step * d_steps + k


def collate(items: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(uint8 (C, H, W), label)] -> (uint8 (B, C, H, W), int64 (B,))."""
    return torch.stack([img for img, _ in items]), torch.tensor([label for _, label in items], dtype=torch.long)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is per-sample Python/PIL work; threads would only contend


def default_workers(dataset: Dataset) -> int:
    """0 for datasets held in memory (a worker would only add copying), else up to 4, one core left free."""
    if getattr(dataset, "in_memory", False):
        return 0
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def make_loader(dataset: Dataset, sampler: Sampler, workers: int | None = None, pin_memory: bool = False,
                prefetch: int = 2) -> DataLoader:
    """A DataLoader that fetches the sampler's key lists from `dataset` in `workers` processes (None: auto)."""
    workers = default_workers(dataset) if workers is None else workers
    if workers < 0:
        raise ValueError(f"data.workers must be >= 0 (or null for auto), got {workers}")
    extra: dict[str, Any] = {"prefetch_factor": prefetch, "worker_init_fn": _worker_init} if workers else {}
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, generator=private_generator(), **extra)


def private_generator() -> torch.Generator:
    """A DataLoader draws its workers' base seed when an iterator starts; from this generator rather than
    torch's global one, so starting a loader (at step 0, or at step s on resume) leaves the training RNG
    stream - DiffAugment, dropout - exactly where an uninterrupted run has it."""
    return torch.Generator().manual_seed(0)


_WORKER_PREFIX = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


def batches(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate `loader`; a ValueError/FileNotFoundError raised in a worker comes back with its own one-line
    message (the DataLoader wraps it in the worker's traceback)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (ValueError, FileNotFoundError) as e:
            text = str(e)
            if not _WORKER_PREFIX.match(text):
                raise
            last = text.strip().splitlines()[-1]
            raise type(e)(last.split(": ", 1)[1] if ": " in last else last) from None
        yield batch
