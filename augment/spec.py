"""An augmentation job's spec and its reproducibility contract.

A job is a frozen `AugmentJob`: weights sha256, images per class, seed, truncation, format, chunk and batch
sizes. Image k of a job (classes in index order, `counts[c]` images each) is class `labels()[k]` drawn with
seed `seed + k` through `models.sampling`, exactly like image k of `ganforge sample` or of a /generate request
with that seed. The spec validates every field (one place: the CLI and the service both build it), and a bad
field raises `JobSpecError`, a ValueError that names it.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from models.checkpoint import CONDITIONAL, file_hash, read_metadata, require_kind
from models.sampling import MAX_SEED, class_index

SPEC_NAME = "ganforge-augment.json"
MANIFEST_NAME = "manifest.csv"
NPZ_NAME = "images.npz"
FORMATS = ("imagefolder", "npz")
SPEC_VERSION = 1


class JobSpecError(ValueError):
    """A job field out of range; `field` names it (the service answers HTTP 400 on that field)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def split_evenly(total: int, k: int) -> list[int]:
    """`total` images over `k` classes: total // k each, the first total % k classes get one more."""
    return [total // k + (1 if i < total % k else 0) for i in range(k)]


def resolve_counts(class_names: Sequence[str], per_class: int | Mapping[str | int, int] | None = None,
                   total: int | None = None, classes: Sequence[str | int] | None = None) -> list[int]:
    """Images per class index from exactly one of `per_class` (a number for each of `classes`, default all,
    or a {class: count} dict) and `total` (split evenly over `classes`). ValueError names the bad value."""
    if (per_class is None) == (total is None):
        raise ValueError("give exactly one of per_class (a number or a {class: count} dict) and total")
    counts = [0] * len(class_names)
    if isinstance(per_class, Mapping):
        if classes:
            raise ValueError("classes cannot be combined with a per_class dict (its keys are the classes)")
        for key, n in per_class.items():
            idx = class_index(class_names, key)
            if counts[idx]:
                raise ValueError(f"class {class_names[idx]!r} is given twice in per_class (as {key!r})")
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                raise ValueError(f"per_class[{key!r}] must be an integer >= 0, got {n!r}")
            counts[idx] = int(n)
    else:
        wanted = sorted({class_index(class_names, c) for c in classes}) if classes else range(len(class_names))
        wanted = list(wanted)
        if per_class is not None:
            if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
                raise ValueError(f"per_class must be an integer >= 1 or a {{class: count}} dict, got {per_class!r}")
            split = [int(per_class)] * len(wanted)
        else:
            if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 1:
                raise ValueError(f"total must be an integer >= 1, got {total!r}")
            split = split_evenly(int(total), len(wanted))
        for idx, n in zip(wanted, split):
            counts[idx] = n
    if sum(counts) < 1:
        raise ValueError(f"the job asks for no image: {dict(zip(class_names, counts))}")
    return counts


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


@dataclasses.dataclass(frozen=True)
class AugmentJob:
    """What to generate. Everything but `model` (a display name for the manifest) is the job's identity."""

    checkpoint_sha256: str  # the exact weights (models.checkpoint.file_hash)
    class_names: tuple[str, ...]
    counts: tuple[int, ...]  # images per class index
    seed: int  # image k uses seed + k
    truncation: float | None = None
    format: str = "imagefolder"  # imagefolder | npz
    chunk_size: int = 1024  # images per chunk: the unit of resume
    batch_size: int = 256  # images per forward pass (fixed slices of a chunk, so reruns are bit-identical)
    model: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "counts", tuple(int(n) for n in self.counts))
        if self.format not in FORMATS:
            raise JobSpecError("format", f"format must be one of {list(FORMATS)}, got {self.format!r}")
        if len(self.counts) != len(self.class_names) or min(self.counts, default=-1) < 0 or self.total < 1:
            raise JobSpecError("counts", f"counts {list(self.counts)} do not fit classes {list(self.class_names)}")
        if not 0 <= self.seed <= MAX_SEED - (self.total - 1):
            raise JobSpecError("seed", f"seed must be in 0..{MAX_SEED - (self.total - 1)} for {self.total} images "
                             f"(seed + index <= {MAX_SEED}), got {self.seed}")
        if self.truncation is not None and not self.truncation > 0:
            raise JobSpecError("truncation", f"truncation must be > 0 (or None), got {self.truncation}")
        if self.batch_size < 1 or self.chunk_size < 1:
            raise JobSpecError("batch_size" if self.batch_size < 1 else "chunk_size", f"batch_size and chunk_size must be >= 1, got {self.batch_size} and {self.chunk_size}")
        object.__setattr__(self, "batch_size", min(self.batch_size, self.chunk_size))  # a batch never spans chunks

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def n_chunks(self) -> int:
        return -(-self.total // self.chunk_size)

    def chunk(self, i: int) -> tuple[int, int]:
        """Index range [start, stop) of chunk i."""
        return i * self.chunk_size, min((i + 1) * self.chunk_size, self.total)

    def labels(self) -> np.ndarray:
        """(total,) int64 class index of every image, class by class."""
        return np.repeat(np.arange(len(self.counts), dtype=np.int64), self.counts)

    def seeds(self) -> np.ndarray:
        return self.seed + np.arange(self.total, dtype=np.int64)

    def class_dir(self, c: int) -> str:
        width = len(str(len(self.class_names) - 1))
        return f"{c:0{width}d}_{_slug(self.class_names[c])}"

    def file(self, k: int, label: int) -> str:
        """Relative path of image k (imagefolder) or the npz file."""
        if self.format == "npz":
            return NPZ_NAME
        return f"{self.class_dir(label)}/{k:0{max(6, len(str(self.total - 1)))}d}.png"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(class_names=list(self.class_names), counts=list(self.counts))
        return {"spec_version": SPEC_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AugmentJob":
        if d.get("spec_version") != SPEC_VERSION:
            raise ValueError(f"augmentation spec version {d.get('spec_version')!r}; this ganforge reads {SPEC_VERSION}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def identity(self) -> dict[str, Any]:
        d = self.to_dict()
        del d["model"]
        return d


def checkpoint_job(checkpoint: str | os.PathLike, per_class: int | Mapping[str, int] | None = None,
                   total: int | None = None, classes: Sequence[str | int] | None = None, seed: int = 0,
                   truncation: float | None = None, format: str = "imagefolder", chunk_size: int = 1024,
                   batch_size: int = 256) -> AugmentJob:
    """The AugmentJob for a class-conditional checkpoint file or folder (reads its metadata and hash only)."""
    meta = read_metadata(checkpoint)
    require_kind(meta, CONDITIONAL, checkpoint, "augmentation")
    counts = resolve_counts(meta["class_names"], per_class, total, classes)
    path = Path(checkpoint)
    name = path.stem if path.suffix == ".safetensors" else path.resolve().name
    return AugmentJob(checkpoint_sha256=file_hash(checkpoint), class_names=tuple(meta["class_names"]),
                      counts=tuple(counts), seed=seed, truncation=truncation, format=format,
                      chunk_size=chunk_size, batch_size=batch_size, model=name)
