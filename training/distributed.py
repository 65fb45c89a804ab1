"""torch.distributed at the edges of the training loop: the process group from torchrun's environment, the
rank/world helpers, DDP wrapping, cross-rank BatchNorm, stop decisions every rank agrees on, and signals.

One process started without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) gets `Dist()`: rank 0 of 1, no
process group, every collective a no-op, so the loop runs exactly as it did before DDP existed.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

BATCHNORM_MODES = ("per-rank", "sync")  # TrainConfig.batchnorm


@dataclass(frozen=True)
class Dist:
    """This process's place in the group. `Dist()` is the single process: rank 0 of 1, no backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" | "nccl" | None (single process)
    device: torch.device = torch.device("cpu")  # where collective tensors live (CUDA for nccl)

    @property
    def main(self) -> bool:
        """Rank 0: the only rank that writes files (state, grids, TensorBoard, collapse log, export)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def per_rank(self, global_batch: int) -> int:
        """The per-rank batch of a global batch; a global batch the world size does not divide is refused
        (padding or uneven shards would make the same config a different run on another world size)."""
        if global_batch % self.world_size:
            lower = global_batch - global_batch % self.world_size
            raise ValueError(f"batch_size {global_batch} is the global batch and must be divisible by the world "
                             f"size {self.world_size}; use {lower or self.world_size} or "
                             f"{lower + self.world_size}")
        return global_batch // self.world_size

    def shard(self, global_batch: int) -> slice:
        """This rank's rows of a global batch: a contiguous block chosen by the GLOBAL rank."""
        b = self.per_rank(global_batch)
        return slice(self.rank * b, (self.rank + 1) * b)

    def agree(self, flags: list[int]) -> list[int]:
        """Element-wise maximum of small non-negative ints over all ranks: one collective, and every rank
        leaves with the same answer (a stop decision any rank raises stops them all at the same step)."""
        if not self.enabled:
            return list(flags)
        t = torch.tensor(flags, dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(v) for v in t.tolist()]

    def mean(self, values: list[float]) -> list[float]:
        """Means over ranks (per-rank losses -> the global batch's), for logging."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled; tensors come back on the CPU)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def world_from_env(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables; (0, 1, 0) without them."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"WORLD_SIZE / RANK / LOCAL_RANK must be integers: {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return rank, world, local


def local_device(device: torch.device, local_rank: int, world_size: int) -> torch.device:
    """Under several processes a CUDA run uses the GPU of its local rank (torchrun: one process per GPU)."""
    if world_size > 1 and device.type == "cuda":
        if device.index not in (None, 0):
            raise ValueError(f"device {device} under torchrun: give 'cuda' (each rank takes cuda:LOCAL_RANK)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def _restart_store(timeout: timedelta) -> dist.Store | None:
    """torchrun's agent store, namespaced by the restart count; None outside an elastic agent.

    After `--max-restarts` restarts a group, the agent's store still holds the killed generation's gloo
    addresses under the same keys, and the new ranks connect to those dead ports (Connection refused):
    seen with torch 2.14.1 and tests/training/test_ddp.py's kill -9 test. A prefix per restart keeps each
    generation's keys apart."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=timeout)
    return dist.PrefixStore(f"ganforge/restart_{restart}", base)


@contextmanager
def process_group(device: torch.device, timeout_minutes: float = 10.0) -> Iterator[Dist]:
    """The process group torchrun's environment describes (env://: MASTER_ADDR, MASTER_PORT, RANK,
    WORLD_SIZE), `nccl` on CUDA and `gloo` otherwise, destroyed on exit. A group someone else already
    initialised is used and left alone. `timeout_minutes` bounds how long a collective waits for a rank."""
    rank, world, local = world_from_env()
    if world == 1:
        yield Dist(device=device)
        return
    own = not dist.is_initialized()
    if own:
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(minutes=timeout_minutes)
        store = _restart_store(timeout)
        if store is None:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    backend = dist.get_backend()
    if (dist.get_rank(), dist.get_world_size()) != (rank, world):
        raise ValueError(f"the process group is rank {dist.get_rank()} of {dist.get_world_size()} but the "
                         f"environment says RANK {rank} of WORLD_SIZE {world}")
    try:
        yield Dist(rank, world, local, backend, device if backend == "nccl" else torch.device("cpu"))
    finally:
        if own:
            dist.destroy_process_group()


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of rank `rank`'s own random stream (augmentation, dropout) from step `step` on. Rank 0 keeps
    the run's stream, so one process is unchanged; other ranks get distinct, deterministic streams."""
    return seed if rank == 0 and step == 0 else (seed * 1_000_003 + 7_919 * rank + 104_729 * step) % (2**63 - 1)


def seed_rank_stream(seed: int, d: Dist) -> None:
    """Give rank > 0 its own global random stream (called after the models were built from the run's seed,
    so the models are the same on every rank before DDP even broadcasts them)."""
    if d.rank:
        torch.manual_seed(rank_seed(seed, d.rank))


def rng_snapshot(d: Dist) -> dict[str, Any]:
    """Every rank's global random state, for the resume state (collective: every rank calls it)."""
    states = d.gather(torch.get_rng_state())
    return {"rng": states[0], "rng_other_ranks": states[1:]}


def rng_restore(state: dict[str, Any], d: Dist, seed: int, step: int) -> None:
    """This rank's random state from a resume state written by any number of ranks: its own saved stream
    when the writing run had this rank, else a fresh stream derived from (seed, rank, step)."""
    saved = [state["rng"], *state.get("rng_other_ranks", [])]
    if d.rank < len(saved):
        torch.set_rng_state(saved[d.rank])
    else:
        torch.manual_seed(rank_seed(seed, d.rank, step))


def read_state(path: Path, d: Dist, required: bool) -> dict[str, Any] | None:
    """The resume state at `path`, read by rank 0 and broadcast (the other ranks need no copy of the
    workdir); None when there is none and it is not `required`. Every rank raises the same error."""
    found: Any = None
    if d.main:
        if path.exists():
            found = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
        elif required:
            found = f"--resume: no resume state at {path}"
    found = d.broadcast(found)
    if isinstance(found, str):
        raise FileNotFoundError(found)
    return found


class MainWrites:
    """Runs rank 0's file writes (grids, TensorBoard, collapse log, state). With several ranks an exception
    is kept instead of raised, and `check()` (called by every rank at the same step) makes all of them raise
    it: the other ranks would otherwise wait in their next collective for a rank 0 that is gone."""

    def __init__(self, d: Dist):
        self.d, self.error = d, None

    def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.d.main:
            return None
        if not self.d.enabled:
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank by check()
            self.error = self.error or e
            return None

    def check(self, failed: bool) -> None:
        """`failed`: the agreed flag (any rank's `self.error is not None`)."""
        if not failed:
            return
        message = self.d.broadcast(f"{type(self.error).__name__}: {self.error}" if self.error else None)
        if self.error is not None:
            raise self.error
        raise RuntimeError(f"rank 0 failed, stopping rank {self.d.rank}: {message}")


def wrap(module: nn.Module, d: Dist) -> nn.Module:
    """`module` in DistributedDataParallel when there are several ranks, else itself. Buffers (BatchNorm
    running statistics, spectral norm's power-iteration vectors u, v) are broadcast from rank 0 at every
    forward (DDP's default), so they stay identical across ranks."""
    if not d.enabled:
        return module
    ids = [d.device.index] if d.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (what export, EMA and the resume state see)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients: each rank's loss
    depends on every rank's statistics, so each rank's input collects the gradient of all those losses."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _GlobalStatistics:
    """BatchNorm whose training statistics are those of the global batch across all ranks (SyncBatchNorm,
    which in torch needs CUDA; this runs on any backend, gloo included). Same parameters, buffers and
    state-dict keys as the BatchNorm it extends; in eval mode, or alone, it is that BatchNorm.

    mean = sum_r sum(x_r) / N, var = sum_r sum(x_r^2) / N - mean^2 (sums in float64 against cancellation),
    N = all ranks' elements per channel; running_var gets the unbiased var * N / (N - 1), as BatchNorm does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # x: (B, C, *spatial); statistics per channel over the batch and spatial dims of every rank
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xd = x.double()
        count = torch.full((1,), float(x.numel() // x.shape[1]), dtype=torch.float64, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([xd.sum(dims), (xd * xd).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(self.running_var.dtype), momentum)
        y = (x.float() - mean.float().view(shape)) * torch.rsqrt(var.float() + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class GlobalBatchNorm1d(_GlobalStatistics, nn.BatchNorm1d):
    pass


class GlobalBatchNorm2d(_GlobalStatistics, nn.BatchNorm2d):
    pass


GLOBAL_BATCHNORM = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d}


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Make every BatchNorm1d/2d in `module` its global-statistics subclass, in place. The class of each
    layer is swapped (as torch.nn.utils.parametrize does), so its parameters, buffers, device and
    state-dict keys stay the very same objects and the EMA copy's parameter/buffer order does not change."""
    for m in module.modules():
        if type(m) in GLOBAL_BATCHNORM:
            m.__class__ = GLOBAL_BATCHNORM[type(m)]
    return module


def prepare(module: nn.Module, d: Dist, batchnorm: str) -> nn.Module:
    """The module the loop calls on this rank: BatchNorm made global when asked, then wrapped in DDP."""
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm must be one of {list(BATCHNORM_MODES)}; got {batchnorm!r}")
    if d.enabled and batchnorm == "sync":
        sync_batchnorm(module)
    return wrap(module, d)


class Interrupted(RuntimeError):
    """Training stopped by a signal at a step boundary, after rank 0 wrote the resume state."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "ended by signal N"


class StopSignals:
    """SIGTERM / SIGINT -> `received` (the signal number), which the loop reads at each step boundary;
    a second signal aborts at once (default action). Signals within `debounce_s` of the first count as
    the same one: a Ctrl-C under torchrun reaches each worker twice, from the terminal and from torchrun,
    milliseconds apart. Handlers are installed only in the main thread and restored on exit."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT), verbose: bool = True,
                 debounce_s: float = 1.0):
        self.signals, self.verbose, self.debounce_s = signals, verbose, debounce_s
        self.received = 0
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if not self.received:
            self.received, self._first_at = signum, now
            if self.verbose:
                print(f"{signal.Signals(signum).name}: stopping at the end of this step and writing the resume "
                      f"state (signal again to abort)", file=sys.stderr, flush=True)
        elif now - self._first_at >= self.debounce_s:
            print(f"second {signal.Signals(signum).name}: aborting without saving", file=sys.stderr, flush=True)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
