"""Augmentation jobs: labelled synthetic images in bulk, written to a folder in resumable chunks.

The one engine behind `ganforge augment` and the service's /augment routes. A job is a frozen `AugmentJob`
(weights sha256, images per class, seed, truncation, format, chunk and batch sizes). Image k of a job
(classes in index order, `counts[c]` images each) is class `label(k)` drawn with seed `seed + k` through
`models.sampling`, exactly like image k of `ganforge sample` or of a /generate request with that seed.

Output folder:
    ganforge-augment.json     the job spec, written first; a rerun must ask for the same job
    .chunks/                  work in progress, removed at the end: chunk-000004.done (imagefolder) or
                              chunk-000004.npz (npz), each written atomically once its images are on disk
    03_Dress/000123.png       imagefolder: one PNG per image, named by its index k; the folder prefix is the
                              class index, so torchvision's ImageFolder (sorted folders) gets the model's labels
    images.npz                npz: the arrays of `ganforge sample` (images, labels, class_names, seeds)
    manifest.csv              written last, so its presence means the job is complete

Every file is written to a temporary name and renamed, so a kill at any moment leaves only whole files plus
temporary ones, which the next run deletes; a chunk's marker is written only after its images are on disk. Chunks are fixed slices of the
index range and each is generated in fixed `batch_size` slices, so a rerun regenerates unfinished chunks
bit-identically (on the same device) and the result equals an uninterrupted run. The folder is locked
(flock) while a run writes it, so two runs cannot interleave.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .checkpoint import atomic_write, file_hash, read_metadata
from .sampling import MAX_SEED, class_index

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs on one folder are then the user's problem
    fcntl = None

_sync = getattr(os, "sync", lambda: None)  # Unix; elsewhere rename order is all we get

SPEC_NAME = "ganforge-augment.json"
MANIFEST_NAME = "manifest.csv"
NPZ_NAME = "images.npz"
WORK_DIR = ".chunks"
FORMATS = ("imagefolder", "npz")
SPEC_VERSION = 1
MANIFEST_COLUMNS = ("file", "index", "class_index", "class_name", "seed", "model", "checkpoint_sha256")

# labels (B,) int64, seeds (B,) int64 -> uint8 images (B, H, W) or (B, H, W, C) at native size
Render = Callable[[np.ndarray, np.ndarray], np.ndarray]


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


def parse_per_class(text: str) -> int | dict[str, int]:
    """CLI value of --per-class: `500` or a JSON object `{"sneaker": 500, "bag": 200}`."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"--per-class must be a number or a JSON object like '{{\"sneaker\": 500}}', "
                         f"got {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--per-class must be a number or a JSON object, got {text!r}")
    return value


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
            raise ValueError(f"format must be one of {list(FORMATS)}, got {self.format!r}")
        if len(self.counts) != len(self.class_names) or min(self.counts, default=-1) < 0 or self.total < 1:
            raise ValueError(f"counts {list(self.counts)} do not fit classes {list(self.class_names)}")
        if not 0 <= self.seed <= MAX_SEED - (self.total - 1):
            raise ValueError(f"seed must be in 0..{MAX_SEED - (self.total - 1)} for {self.total} images "
                             f"(seed + index <= {MAX_SEED}), got {self.seed}")
        if self.truncation is not None and not self.truncation > 0:
            raise ValueError(f"truncation must be > 0 (or None), got {self.truncation}")
        if self.batch_size < 1 or self.chunk_size < 1:
            raise ValueError(f"batch_size and chunk_size must be >= 1, got {self.batch_size} and {self.chunk_size}")
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



class FolderBusy(ValueError):
    """Another process (or thread) holds the folder's lock."""


@contextlib.contextmanager
def locked(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on `folder` (created if needed); FolderBusy if another holds it.

    The lock dies with its process (kill -9 included), so a crashed run never blocks the next one."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(f"another process is writing {path} right now") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")  # atomic_write's temporary files


def _remove_temp_files(out: Path) -> None:
    for p in out.rglob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)


def read_spec(out: str | os.PathLike) -> AugmentJob | None:
    """The job an output folder holds, or None when it holds no spec."""
    path = Path(out) / SPEC_NAME
    if not path.is_file():
        return None
    try:
        return AugmentJob.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a readable augmentation spec: {e}") from None


def _prepare(out: Path, job: AugmentJob) -> AugmentJob:
    """Write the spec into a new/empty folder, or check that the folder holds this very job; returns it."""
    held = read_spec(out)
    if held is None:
        others = sorted(p.name for p in out.iterdir() if not _is_temp(p.name))
        if others:
            raise ValueError(f"{out} is not empty ({len(others)} entries, e.g. {others[:3]}) and holds no "
                             f"{SPEC_NAME}; refusing to write an augmentation job into it")
        text = json.dumps(job.to_dict(), indent=2) + "\n"
        atomic_write(out / SPEC_NAME, lambda tmp: tmp.write_text(text))
        return job
    mine, theirs = job.identity(), held.identity()
    if mine != theirs:
        diff = {k: {"in folder": theirs.get(k), "asked": mine.get(k)} for k in mine if mine[k] != theirs.get(k)}
        raise ValueError(f"{out} holds a different augmentation job ({SPEC_NAME} differs: "
                         f"{json.dumps(diff)}); rerun with its arguments to resume it, or choose another --out")
    return held  # keeps the model name it was started with


def _marker(out: Path, job: AugmentJob, i: int) -> Path:
    return out / WORK_DIR / (f"chunk-{i:06d}.npz" if job.format == "npz" else f"chunk-{i:06d}.done")


def completed(out: str | os.PathLike, job: AugmentJob) -> int:
    """Images of `job` already safely on disk in `out` (whole chunks; all of them once the manifest exists)."""
    out = Path(out)
    if (out / MANIFEST_NAME).is_file():
        return job.total
    try:
        names = {p.name for p in (out / WORK_DIR).iterdir()}
    except FileNotFoundError:  # not started, or just finished (the manifest is written before the cleanup)
        return job.total if (out / MANIFEST_NAME).is_file() else 0
    return sum(b - a for i in range(job.n_chunks) for a, b in [job.chunk(i)] if _marker(out, job, i).name in names)


def _save_png(path: Path, image: np.ndarray) -> None:
    """Temporary file + rename like atomic_write, without its fsync (7 ms each here, minutes per job):
    a killed process cannot lose written data, and `run` flushes each chunk with one os.sync()."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(image).save(f, format="PNG")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _save_chunk_npz(path: Path, images: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, images=images)

    atomic_write(path, write)


def _member(name: str, compress: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    """A zip entry with a fixed timestamp, so the same job always gives the same bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    return info


def _write_npz(out: Path, job: AugmentJob) -> None:
    """Assemble images.npz from the chunk files, streaming (memory: one chunk), like np.savez_compressed."""
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            first = np.load(_marker(out, job, 0))["images"]
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (job.total, *first.shape[1:])}
            with zf.open(_member("images.npy"), "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, header)
                for i in range(job.n_chunks):
                    images = first if i == 0 else np.load(_marker(out, job, i))["images"]
                    a, b = job.chunk(i)
                    if images.shape != (b - a, *first.shape[1:]) or images.dtype != np.uint8:
                        raise ValueError(f"{_marker(out, job, i)} holds {images.shape} {images.dtype}; "
                                         f"expected {(b - a, *first.shape[1:])} uint8")
                    f.write(np.ascontiguousarray(images).tobytes())
            arrays = {"labels": job.labels(), "class_names": np.asarray(job.class_names), "seeds": job.seeds()}
            for name, array in arrays.items():
                with zf.open(_member(name + ".npy"), "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, array, allow_pickle=False)

    atomic_write(out / NPZ_NAME, write)


def _write_manifest(out: Path, job: AugmentJob) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(MANIFEST_COLUMNS)
            for k, (label, seed) in enumerate(zip(job.labels().tolist(), job.seeds().tolist())):
                w.writerow([job.file(k, label), k, label, job.class_names[label], seed, job.model,
                            job.checkpoint_sha256])

    atomic_write(out / MANIFEST_NAME, write)


def run(job: AugmentJob, out: str | os.PathLike, render: Render,
        progress: Callable[[int, int], None] | None = None,
        between_batches: Callable[[], None] | None = None) -> dict[str, Any]:
    """Generate `job` into the folder `out`, resuming whatever an earlier run of the same job left there.

    `render(labels, seeds)` makes one batch of uint8 images; `progress(done, total)` is called after each
    batch; `between_batches()` after each batch's files are on disk (it may sleep, or raise to stop: the
    next run resumes). ValueError if `out` holds something else or another process is writing it.
    Returns {out, format, total, generated (this run), resumed_from, manifest}.
    """
    out = Path(out)
    with locked(out):
        job = _prepare(out, job)
        _remove_temp_files(out)
        done = completed(out, job)
        summary = {"out": str(out), "format": job.format, "total": job.total, "resumed_from": done,
                   "manifest": str(out / MANIFEST_NAME)}
        if progress:
            progress(done, job.total)
        generated = 0
        if not (out / MANIFEST_NAME).is_file():
            labels, seeds = job.labels(), job.seeds()
            (out / WORK_DIR).mkdir(exist_ok=True)
            for i in range(job.n_chunks):
                marker = _marker(out, job, i)
                if marker.is_file():
                    continue
                start, stop = job.chunk(i)
                parts = []
                for a in range(start, stop, job.batch_size):
                    b = min(a + job.batch_size, stop)
                    images = np.asarray(render(labels[a:b], seeds[a:b]))
                    if images.dtype != np.uint8 or len(images) != b - a:
                        raise ValueError(f"render returned {images.shape} {images.dtype} for {b - a} images")
                    if job.format == "imagefolder":
                        for k, image in zip(range(a, b), images):
                            _save_png(out / job.file(k, int(labels[k])), image)
                    else:
                        parts.append(images)
                    if b == stop:  # the chunk is whole: record it before anything may interrupt
                        if job.format == "npz":
                            _save_chunk_npz(marker, np.concatenate(parts))
                        else:
                            _sync()  # the chunk's PNGs reach the disk before the marker that vouches for them
                            atomic_write(marker, lambda tmp: tmp.write_text(f"{start} {stop}\n"))
                    done += b - a
                    generated += b - a
                    if progress:
                        progress(done, job.total)
                    if between_batches:
                        between_batches()
            if job.format == "npz":
                _write_npz(out, job)
            _write_manifest(out, job)  # last: marks the job complete
        shutil.rmtree(out / WORK_DIR, ignore_errors=True)
    return {**summary, "generated": generated}


def checkpoint_job(checkpoint: str | os.PathLike, per_class: int | Mapping[str, int] | None = None,
                   total: int | None = None, classes: Sequence[str | int] | None = None, seed: int = 0,
                   truncation: float | None = None, format: str = "imagefolder", chunk_size: int = 1024,
                   batch_size: int = 256) -> AugmentJob:
    """The AugmentJob for a class-conditional checkpoint file or folder (reads its metadata and hash only)."""
    meta = read_metadata(checkpoint)
    if meta.get("kind") != "conditional":
        raise ValueError(f"{checkpoint} is a {meta.get('kind')!r} checkpoint; augmentation needs a 'conditional' one")
    counts = resolve_counts(meta["class_names"], per_class, total, classes)
    path = Path(checkpoint)
    name = path.stem if path.suffix == ".safetensors" else path.resolve().name
    return AugmentJob(checkpoint_sha256=file_hash(checkpoint), class_names=tuple(meta["class_names"]),
                      counts=tuple(counts), seed=seed, truncation=truncation, format=format,
                      chunk_size=chunk_size, batch_size=batch_size, model=name)


def checkpoint_renderer(checkpoint: str | os.PathLike, truncation: float | None, device: str = "auto",
                        backend: Callable[[Any, dict, Any], Any] | None = None) -> Render:
    """`render` for `run` from a checkpoint, loaded on first use (a finished job never loads it). `backend`:
    `(module, meta, device) -> what runs its forward pass` (e.g. `backends.choose`); default the module."""
    from .checkpoint import load
    from .sampling import generate, pick_device, to_uint8

    loaded: list = []

    def render(labels: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        if not loaded:
            dev = pick_device(device)
            module, meta = load(checkpoint, dev)
            loaded.extend((backend(module, meta, dev) if backend else module, meta))
        G, meta = loaded
        return to_uint8(generate(G, labels.tolist(), seeds.tolist(), truncation), meta)

    return render


def augment_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, device: str = "auto",
                       progress: Callable[[int, int], None] | None = None,
                       backend: Callable[[Any, dict, Any], Any] | None = None, **job_args: Any) -> dict[str, Any]:
    """`ganforge augment`: build the job from the checkpoint and `job_args` (see `checkpoint_job`), run it
    (`backend`: see `checkpoint_renderer`)."""
    job = checkpoint_job(checkpoint, **job_args)
    return run(job, out, checkpoint_renderer(checkpoint, job.truncation, device, backend), progress)


def zip_folder(folder: str | os.PathLike, path: str | os.PathLike, skip: Callable[[str], bool] = _is_temp) -> Path:
    """Zip a finished output folder (PNGs stored, not recompressed) atomically to `path`."""
    folder = Path(folder)

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for p in sorted(folder.rglob("*")):
                rel = p.relative_to(folder).as_posix()
                if p.is_file() and not any(skip(part) or part == WORK_DIR for part in rel.split("/")):
                    compress = zipfile.ZIP_STORED if p.suffix == ".png" else zipfile.ZIP_DEFLATED
                    with open(p, "rb") as src, zf.open(_member(rel, compress), "w", force_zip64=True) as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)

    return atomic_write(path, write)


def read_manifest(out: str | os.PathLike) -> list[dict[str, str]]:
    """The manifest rows of a finished output folder."""
    with open(Path(out) / MANIFEST_NAME, newline="") as f:
        return list(csv.DictReader(f))


__all__ = ["AugmentJob", "FORMATS", "FolderBusy", "MANIFEST_NAME", "NPZ_NAME", "SPEC_NAME", "augment_checkpoint",
           "checkpoint_job", "checkpoint_renderer", "completed", "locked", "parse_per_class", "read_manifest",
           "read_spec", "resolve_counts", "run", "split_evenly", "zip_folder"]
