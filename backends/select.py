"""Which backend serves a model: checked against float32 on a probe batch, then, for `auto`, timed.

Every candidate must reproduce the float32 eager module's probe images (PROBE_SIZE images through
`models.sampling`, compared as uint8) within MAX_MEAN_LEVEL_DIFF grey levels on average and MAX_LEVEL_DIFF
at the worst pixel, with no NaN; one that does not (or fails to build) is never served. A requested backend
that fails the check falls back to float32 eager, and the report says so.

`auto` times the float32 reference and every accurate candidate on the model at each of the batch sizes
the caller really runs (the service: 1, the batcher's sizes, the jobs' batch), in interleaved rounds (one
candidate timed after another, not each in its own stretch of time: on a shared machine the earlier
one-after-the-other timing once picked autocast at batch 64 in a burst of load and served at a third of
ONNX Runtime's speed), and, per batch size, serves
the fastest; a candidate must be MIN_SPEEDUP times as fast as float32 at that size to be preferred to it
(launch-bound small GANs: float16 was slower than float32 on an H100). A batch is run by the choice made
for the smallest timed size >= its own (the largest for bigger batches), so one Selection can run batch 1
on ONNX Runtime and batch 64 under autocast when that is what the timings say.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from models import sampling
from models.checkpoint import model_resolution, task_channels

from .engines import BACKENDS, LOW_DTYPES, Backend, TorchAutocast, TorchEager, available

logger = logging.getLogger("ganforge.backends")

REFERENCE = "torch"
MAX_MEAN_LEVEL_DIFF = 1.0  # grey levels, averaged over the probe's pixels
MAX_LEVEL_DIFF = 24  # grey levels, worst pixel (GAN outputs sit on tanh edges; a few pixels move)
PROBE_SIZE = 8
MIN_SPEEDUP = 1.1
ROUNDS = 9  # auto's timing: interleaved rounds (see `interleaved`)
BUDGET_S = 20.0  # ... stopped after this many seconds of timing
DROP_FACTOR = 3.0  # ... a candidate this many times slower than the fastest at every size is not timed further
CHOICES = ("auto", *BACKENDS)
TOLERANCE = {"max_mean_level_diff": MAX_MEAN_LEVEL_DIFF, "max_level_diff": MAX_LEVEL_DIFF, "probe_images": PROBE_SIZE}

Timer = Callable[[dict[str, Backend], Sequence[int]], dict[str, dict[int, float]]]  # -> seconds per batch


def probe(generator: Any, meta: dict[str, Any], size: int = PROBE_SIZE) -> np.ndarray:
    """A fixed uint8 batch from a module or backend through models.sampling (the same images every call)."""
    if meta["kind"] == "conditional":
        labels = [i % generator.num_classes for i in range(size)]
        return sampling.to_uint8(sampling.generate(generator, labels, list(range(size))), meta)
    r = model_resolution(meta)
    channels = task_channels(meta)[0]
    shape = (size, r, r) if channels == 1 else (size, r, r, channels)
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    return sampling.translate(generator, images, meta)


def interleaved(backends: dict[str, Backend], sizes: Sequence[int], rounds: int = ROUNDS,
                budget_s: float = BUDGET_S, drop: float = DROP_FACTOR) -> dict[str, dict[int, float]]:
    """Median seconds per batch of every backend at every size, timed in `rounds` interleaved rounds (each
    round runs every (size, backend) once, the backends' order rotating), so a burst of load from another
    process or the machine's clock moving lands on all candidates alike instead of on whichever was timed
    then. Two warm-up calls each first; a backend whose second warm-up call was `drop` times slower than the
    fastest one's at every size cannot be served and is not timed further (its warm-up time is its figure):
    bf16 autocast on a CPU without bf16 instructions ran ~20x slower than float32 and, timed in every round,
    left the others one or two rounds inside the budget. After `budget_s` of timing the rounds stop (at least
    one is run)."""
    names = list(backends)
    warm: dict[str, dict[int, float]] = {n: {} for n in names}
    for b in sizes:
        for name in names:
            probe(backends[name], backends[name].meta, b)
            start = time.perf_counter()
            probe(backends[name], backends[name].meta, b)
            warm[name][b] = time.perf_counter() - start
    hopeless = {n for n in names if all(warm[n][b] >= drop * min(warm[m][b] for m in names) for b in sizes)}
    names = [n for n in names if n not in hopeless]
    samples: dict[str, dict[int, list[float]]] = {n: {b: [] for b in sizes} for n in names}
    deadline = time.perf_counter() + budget_s
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for b in sizes:
            for name in order:
                start = time.perf_counter()
                probe(backends[name], backends[name].meta, b)
                samples[name][b].append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return {**{n: {b: float(np.median(v)) for b, v in by.items()} for n, by in samples.items()},
            **{n: warm[n] for n in hopeless}}


@dataclass
class Selection:
    """The backend(s) a model is served with: `served[i]` runs batches up to `sizes[i]` (the last: any larger).
    Callable like the module; `report` is the evidence (/models' `backend` entry)."""

    backends: dict[str, Backend]
    sizes: list[int]
    served: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        first = self.backends[self.served[0]]
        for attr in ("z_dim", "num_classes", "img_resolution", "img_channels", "in_channels", "stride", "meta"):
            if hasattr(first, attr):
                setattr(self, attr, getattr(first, attr))
        self.device = first.device

    def for_batch(self, batch: int) -> Backend:
        """The backend that runs a batch of `batch` images."""
        for size, name in zip(self.sizes, self.served):
            if batch <= size:
                return self.backends[name]
        return self.backends[self.served[-1]]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.for_batch(inputs[0].shape[0])(*inputs)

    @property
    def name(self) -> str:
        """One name, or 'a+b' when batch sizes are split between backends."""
        return "+".join(dict.fromkeys(self.served))

    @property
    def precision(self) -> str:
        return "+".join(dict.fromkeys(self.backends[n].precision for n in self.served))

    def describe(self) -> dict[str, Any]:
        """/models' `backend`: the backend per batch size and each one's runtime (the evidence is `report`)."""
        return {"name": self.name, "precision": self.precision,
                "by_batch_size": {str(b): n for b, n in zip(self.sizes, self.served)},
                "runtimes": {n: b.describe() for n, b in self.backends.items()}}


def build(name: str, module: nn.Module, meta: dict[str, Any], device: torch.device,
          low_dtype: torch.dtype | None = None) -> Backend:
    """One backend by name; ValueError lists the known ones."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; allowed: {list(CHOICES)}")
    if name == "torch-autocast":
        return TorchAutocast(module, meta, device, low_dtype)
    return BACKENDS[name](module, meta, device)


def _check(backend: Backend, reference: np.ndarray) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN casts are what the check is for
        images = probe(backend, backend.meta)
    diff = np.abs(images.astype(np.int16) - reference)
    mean, worst = float(diff.mean()), int(diff.max())
    return {"mean_level_diff": round(mean, 4), "max_level_diff": worst,
            "accurate": mean <= MAX_MEAN_LEVEL_DIFF and worst <= MAX_LEVEL_DIFF}


def choose(module: nn.Module, meta: dict[str, Any], device: torch.device | str, requested: str = "auto",
           batch_sizes: Sequence[int] = (1, 64), low_dtype: torch.dtype | None = None,
           timer: Timer | None = None, candidates: Sequence[str] | None = None) -> Selection:
    """The Selection to serve `module` (float32, loaded on `device`) with; see the module docstring.

    `requested`: auto or a name in BACKENDS. `low_dtype`: torch-autocast's dtype (default by device,
    LOW_DTYPES); `timer` replaces the real timing (tests); `candidates`: what `auto` tries (default: every
    backend `available` on the device)."""
    if requested not in CHOICES:
        raise ValueError(f"unknown backend {requested!r}; allowed: {list(CHOICES)}")
    device = torch.device(device)
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    reference = TorchEager(module, meta, device)
    if requested == "auto":
        names = [n for n in (available(device) if candidates is None else candidates) if n != REFERENCE]
    else:
        names = [] if requested == REFERENCE else [requested]
    report: dict[str, Any] = {"requested": requested, "tolerance": TOLERANCE, "batch_sizes": sizes,
                              "candidates": [{"backend": REFERENCE, "precision": "float32", "reference": True}]}
    accepted: dict[str, Backend] = {REFERENCE: reference}
    if names:
        expected = probe(reference, meta).astype(np.int16)
    for name in names:
        entry: dict[str, Any] = {"backend": name}
        report["candidates"].append(entry)
        try:
            backend = build(name, module, meta, device, low_dtype)
            entry["precision"] = backend.precision
            entry.update(_check(backend, expected))
        except Exception as e:  # an op the runtime lacks, a missing provider: not served, and said why
            entry.update(accurate=False, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if entry["accurate"]:
            accepted[name] = backend
        else:
            logger.warning("%s: backend %s rejected by the precision check (%s)", meta.get("architecture"), name,
                           entry)
    if requested != "auto":
        served = requested if requested in accepted else REFERENCE
        if served != requested:
            report["fallback"] = REFERENCE
        return Selection({served: accepted[served]}, sizes, [served] * len(sizes), report)
    timings = (timer or interleaved)(accepted, sizes)
    for entry in report["candidates"]:
        if entry["backend"] in timings:
            entry["seconds"] = {str(b): round(t, 6) for b, t in timings[entry["backend"]].items()}
    served = []
    for b in sizes:
        best = min(timings, key=lambda n: timings[n][b])
        served.append(best if timings[best][b] * MIN_SPEEDUP <= timings[REFERENCE][b] else REFERENCE)
    report["served"] = {str(b): n for b, n in zip(sizes, served)}
    report["speedup"] = {str(b): round(timings[REFERENCE][b] / timings[n][b], 3) for b, n in zip(sizes, served)}
    return Selection({n: accepted[n] for n in dict.fromkeys(served)}, sizes, served, report)


__all__ = ["CHOICES", "LOW_DTYPES", "MAX_LEVEL_DIFF", "MAX_MEAN_LEVEL_DIFF", "Selection", "choose", "probe"]
