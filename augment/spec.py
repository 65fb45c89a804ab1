"""An augmentation job's spec and its reproducibility contract.

A job is a frozen `AugmentJob`: weights sha256, images per class, seed, truncation, format, chunk and batch
sizes. Image k of a job (classes in index order, `counts[c]` images each) is class `labels()[k]` drawn with
seed `seed + k` through `models.sampling`, exactly like image k of `ganforge sample` or of a /generate request
with that seed. The spec validates every field (one place: the CLI and the service both build it), and a bad
field raises `JobSpecError`, a ValueError that names it.

A job with a `Selection` (off by default) keeps only candidates that pass its filters, and its seed contract is
the one of augment/select.py: candidate j of class c uses seed `candidate_base(c) + j`, j < `max_draws(c)`.
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


MAX_DRAW_FACTOR = 1000  # candidates per requested image at most (an acceptance rate of 0.1 %)
CALIBRATION_RANGE = (16, 65536)  # images per class that set a discriminator threshold


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which candidates a job keeps (augment/select.py): every filter given must pass.

    Classifier confidence: the domain classifier's softmax probability of the requested class >= min_confidence.
    Discriminator top fraction: D's logit >= the class's threshold, the (1 - d_keep_fraction) quantile of D's
    logits over the generator's images of that class at seeds 0..d_calibration-1.
    Class c draws at most max_draw_factor * counts[c] candidates; fewer passing ones fail the job."""

    min_confidence: float | None = None
    classifier_sha256: str | None = None  # the exact classifier weights (models.checkpoint.file_hash)
    d_keep_fraction: float | None = None
    discriminator_sha256: str | None = None  # the exact discriminator weights
    max_draw_factor: int = 20
    d_calibration: int = 1024
    classifier: str = ""  # display names (manifest, status); not part of the job's identity
    discriminator: str = ""

    def __post_init__(self) -> None:
        for name, sha in (("classifier", "classifier_sha256"), ("discriminator", "discriminator_sha256")):
            value = getattr(self, "min_confidence" if name == "classifier" else "d_keep_fraction")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                field = "min_confidence" if name == "classifier" else "d_keep_fraction"
                raise JobSpecError(field, f"{field} must be a number in (0, 1], got {value!r}")
            if not getattr(self, sha):
                raise JobSpecError(name, f"a {name} checkpoint is needed for "
                                         f"{'min_confidence' if name == 'classifier' else 'd_keep_fraction'}")
        if self.min_confidence is None and self.d_keep_fraction is None:
            raise JobSpecError("selection", "a selection needs min_confidence (with a classifier) or "
                                            "d_keep_fraction (with a discriminator), or both")
        f = self.max_draw_factor
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or not 1 <= f <= MAX_DRAW_FACTOR:
            raise JobSpecError("max_draw_factor", f"max_draw_factor must be an integer in 1..{MAX_DRAW_FACTOR}, "
                                                  f"got {f!r}")
        lo, hi = CALIBRATION_RANGE
        m = self.d_calibration
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not lo <= m <= hi:
            raise JobSpecError("d_calibration", f"d_calibration must be an integer in {lo}..{hi}, got {m!r}")

    @property
    def filters(self) -> tuple[str, ...]:
        """The scores this selection needs, by name (augment/select.py's scorers)."""
        return tuple(name for name, on in (("confidence", self.min_confidence is not None),
                                           ("d_logit", self.d_keep_fraction is not None)) if on)


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
    selection: Selection | None = None  # off by default: image k is then simply seed + k

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "counts", tuple(int(n) for n in self.counts))
        if isinstance(self.selection, Mapping):
            object.__setattr__(self, "selection", Selection(**self.selection))
        if self.format not in FORMATS:
            raise JobSpecError("format", f"format must be one of {list(FORMATS)}, got {self.format!r}")
        if len(self.counts) != len(self.class_names) or min(self.counts, default=-1) < 0 or self.total < 1:
            raise JobSpecError("counts", f"counts {list(self.counts)} do not fit classes {list(self.class_names)}")
        seeds = self.total * (self.selection.max_draw_factor if self.selection else 1)
        if not 0 <= self.seed <= MAX_SEED - (seeds - 1):
            what = "images" if self.selection is None else "candidates"
            raise JobSpecError("seed", f"seed must be in 0..{MAX_SEED - (seeds - 1)} for {seeds} {what} "
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
        """(total,) seed of every image of a job without selection (a selection job's come from its draws)."""
        return self.seed + np.arange(self.total, dtype=np.int64)

    def max_draws(self, c: int) -> int:
        """Candidates class c may draw (selection jobs)."""
        return self.counts[c] * self.selection.max_draw_factor

    def candidate_base(self, c: int) -> int:
        """Seed of class c's candidate 0 (selection jobs): the classes before it own max_draws seeds each."""
        return self.seed + sum(self.max_draws(i) for i in range(c))

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
        if self.selection is None:
            del d["selection"]  # a job without selection keeps the spec file it always had
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
        for name in ("classifier", "discriminator"):  # weights count (their sha256), not the paths they came from
            d.get("selection", {}).pop(name, None)
        return d


def _display_name(path: str | os.PathLike) -> str:
    path = Path(path)
    return path.stem if path.suffix == ".safetensors" else path.resolve().name


def checkpoint_job(checkpoint: str | os.PathLike, per_class: int | Mapping[str, int] | None = None,
                   total: int | None = None, classes: Sequence[str | int] | None = None, seed: int = 0,
                   truncation: float | None = None, format: str = "imagefolder", chunk_size: int = 1024,
                   batch_size: int = 256, select: Mapping[str, Any] | None = None) -> AugmentJob:
    """The AugmentJob for a class-conditional checkpoint file or folder (reads its metadata and hash only).

    `select` turns sample selection on: `Selection` fields, with `classifier` / `discriminator` given as
    checkpoint paths (the discriminator defaults to the one exported beside the checkpoint)."""
    from .select import checkpoint_selection

    meta = read_metadata(checkpoint)
    require_kind(meta, CONDITIONAL, checkpoint, "augmentation")
    counts = resolve_counts(meta["class_names"], per_class, total, classes)
    selection = checkpoint_selection(checkpoint, meta, select) if select else None
    return AugmentJob(checkpoint_sha256=file_hash(checkpoint), class_names=tuple(meta["class_names"]),
                      counts=tuple(counts), seed=seed, truncation=truncation, format=format,
                      chunk_size=chunk_size, batch_size=batch_size, model=_display_name(checkpoint),
                      selection=selection)
