"""The durable writer of an augmentation job: an output folder filled in resumable chunks.

Output folder:
    ganforge-augment.json     the job spec, written first; a rerun must ask for the same job
    .chunks/                  work in progress, removed at the end: chunk-000004.done (imagefolder) or
                              chunk-000004.npz (npz), each written atomically once its images are on disk
    03_Dress/000123.png       imagefolder: one PNG per image, named by its index k; the folder prefix is the
                              class index, so torchvision's ImageFolder (sorted folders) gets the model's labels
    images.npz                npz: the arrays of `ganforge sample` (images, labels, class_names, seeds)
    manifest.csv              written last, so its presence means the job is complete

Every file is written to a temporary name and renamed, so a kill at any moment leaves only whole files plus
temporary ones, which the next run deletes; a chunk's marker is written only after its images are on disk.
Chunks are fixed slices of the index range and each is generated in fixed `batch_size` slices, so a rerun
regenerates unfinished chunks bit-identically (on the same device) and the result equals an uninterrupted
run. The folder is locked (flock) while a run writes it, so two runs cannot interleave.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from models.checkpoint import atomic_write

from . import select
from .spec import MANIFEST_NAME, NPZ_NAME, SPEC_NAME, AugmentJob

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs on one folder are then the user's problem
    fcntl = None

_sync = getattr(os, "sync", lambda: None)  # Unix; elsewhere rename order is all we get

WORK_DIR = ".chunks"
MANIFEST_COLUMNS = ("file", "index", "class_index", "class_name", "seed", "model", "checkpoint_sha256")
SELECTION_COLUMNS = ("candidate", *select.SCORES)  # a selection job's manifest: candidate index j and scores
REJECTED_COLUMNS = ("class_index", "class_name", "candidate", "seed", *select.SCORES, "failed")

# labels (B,) int64, seeds (B,) int64 -> uint8 images (B, H, W) or (B, H, W, C) at native size
Render = Callable[[np.ndarray, np.ndarray], np.ndarray]


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


def _write_npz(out: Path, job: AugmentJob, seeds: np.ndarray) -> None:
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
            arrays = {"labels": job.labels(), "class_names": np.asarray(job.class_names), "seeds": seeds}
            for name, array in arrays.items():
                with zf.open(_member(name + ".npy"), "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, array, allow_pickle=False)

    atomic_write(out / NPZ_NAME, write)


def _write_manifest(out: Path, job: AugmentJob, seeds: np.ndarray, accepted: list[list] | None = None) -> None:
    """One row per image; a selection job adds its candidate index and scores (SELECTION_COLUMNS)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(MANIFEST_COLUMNS + (() if accepted is None else SELECTION_COLUMNS))
            for k, (label, seed) in enumerate(zip(job.labels().tolist(), seeds.tolist())):
                row = [job.file(k, label), k, label, job.class_names[label], seed, job.model, job.checkpoint_sha256]
                if accepted is not None:
                    row += [accepted[k][1], *_scores(accepted[k])]
                w.writerow(row)

    atomic_write(out / MANIFEST_NAME, write)


def run(job: AugmentJob, out: str | os.PathLike, render: Render,
        progress: Callable[[int, int], None] | None = None,
        between_batches: Callable[[], None] | None = None,
        scorers: Mapping[str, select.Scorer] | None = None) -> dict[str, Any]:
    """Generate `job` into the folder `out`, resuming whatever an earlier run of the same job left there.

    `render(labels, seeds)` makes one batch of uint8 images; `progress(done, total)` is called after each
    batch; `between_batches()` after each batch's files are on disk (it may sleep, or raise to stop: the
    next run resumes). ValueError if `out` holds something else or another process is writing it.
    A job with a selection needs `scorers` (augment/select.py: `load_scorers`) for its filters, and fails with
    `select.SelectionExhausted` when a class cannot reach its count.
    Returns {out, format, total, generated (this run), resumed_from, manifest} (+ selection: the totals).
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
            labels = job.labels()
            (out / WORK_DIR).mkdir(exist_ok=True)
            if job.selection is None:
                seeds = job.seeds()
                take = lambda a, b: render(labels[a:b], seeds[a:b])  # noqa: E731
                selecting = None
            else:
                selecting = _Selecting(out, job, render, scorers or {})
                take = selecting.take
            for i in range(job.n_chunks):
                marker = _marker(out, job, i)
                if marker.is_file():
                    continue
                start, stop = job.chunk(i)
                parts = []
                for a in range(start, stop, job.batch_size):
                    b = min(a + job.batch_size, stop)
                    images = np.asarray(take(a, b))
                    if images.dtype != np.uint8 or len(images) != b - a:
                        raise ValueError(f"render returned {images.shape} {images.dtype} for {b - a} images")
                    if job.format == "imagefolder":
                        for k, image in zip(range(a, b), images):
                            _save_png(out / job.file(k, int(labels[k])), image)
                    else:
                        parts.append(images)
                    if b == stop:  # the chunk is whole: record it before anything may interrupt
                        if selecting is not None:
                            selecting.end_chunk(i)  # what it drew, before the marker that vouches for it
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
            draws = None if job.selection is None else _read_draws(out, job)
            seeds = job.seeds() if draws is None else np.asarray([d[2] for d in draws[0]], dtype=np.int64)
            if job.format == "npz":
                _write_npz(out, job, seeds)
            if draws is not None:
                _write_selection(out, job, *draws)
            _write_manifest(out, job, seeds, None if draws is None else draws[0])  # last: marks the job complete
        shutil.rmtree(out / WORK_DIR, ignore_errors=True)
        if job.selection is not None:
            summary["selection"] = json.loads((out / select.SELECTION_NAME).read_text())["total"]
    return {**summary, "generated": generated}


def _chunk_record(out: Path, i: int) -> Path:
    return out / WORK_DIR / f"chunk-{i:06d}.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({e}); delete the output folder and run the job again") from None


class _Selecting:
    """The images of a selection job, in index order, continuing from its last whole chunk."""

    def __init__(self, out: Path, job: AugmentJob, render: Render, scorers: Mapping[str, select.Scorer]):
        missing = [n for n in job.selection.filters if n not in scorers]
        if missing:
            raise ValueError(f"this job filters by {missing}: run it with their scorers (augment.load_scorers)")
        self.out, self.job = out, job
        have = [_marker(out, job, i).is_file() for i in range(job.n_chunks)]
        m = have.index(False) if False in have else job.n_chunks  # chunks are written in order: a prefix
        if any(have[m:]):
            raise ValueError(f"{out / WORK_DIR} holds chunk {have.index(True, m)} without chunk {m}; a selection "
                             "job writes its chunks in order. Delete the output folder and run the job again")
        calibration = out / WORK_DIR / select.CALIBRATION_NAME
        if calibration.is_file():
            self.limits = _read_json(calibration)
        else:
            self.limits = select.thresholds(job, render, scorers)
            text = json.dumps(self.limits)
            atomic_write(calibration, lambda tmp: tmp.write_text(text))
        start = job.chunk(m)[0] if m < job.n_chunks else job.total
        first = 0
        if 0 < start < job.total and job.labels()[start - 1] == job.labels()[start]:
            first = _read_json(_chunk_record(out, m - 1))["accepted"][-1][1] + 1  # after the last one it kept
        self.accepted: list[select.Draw] = []
        self.rejected: list[select.Draw] = []
        self.draws = select.draw(job, render, scorers, self.limits, start, first, self.rejected)

    def take(self, a: int, b: int) -> np.ndarray:
        got = [next(self.draws) for _ in range(b - a)]
        self.accepted += got
        return np.stack([d.image for d in got])

    def end_chunk(self, i: int) -> None:
        text = json.dumps({"accepted": [d.record() for d in self.accepted],
                           "rejected": [d.record() for d in self.rejected]})
        atomic_write(_chunk_record(self.out, i), lambda tmp: tmp.write_text(text))
        self.accepted = []
        self.rejected.clear()  # in place: the draw generator appends to this very list


def _read_draws(out: Path, job: AugmentJob) -> tuple[list[list], list[list], dict[str, list]]:
    """(accepted records in index order, rejected records, thresholds) of a selection job's whole chunks."""
    accepted, rejected = [], []
    for i in range(job.n_chunks):
        record = _read_json(_chunk_record(out, i))
        accepted += record["accepted"]
        rejected += record["rejected"]
    return accepted, rejected, _read_json(out / WORK_DIR / select.CALIBRATION_NAME)


def _scores(record: list) -> list[str]:
    return ["" if v is None else repr(v) for v in record[3:]]


def _write_selection(out: Path, job: AugmentJob, accepted: list[list], rejected: list[list],
                     limits: dict[str, list]) -> None:
    """rejected.csv (every rejected draw and the filters it failed) and selection.json (per class: drawn,
    accepted, rejected, acceptance rate, seeds drawn; the thresholds)."""
    def failed(r: list) -> str:
        scores = dict(zip(select.SCORES, r[3:]))
        return "+".join(n for n in job.selection.filters if scores[n] < limits[n][r[0]])

    def write_rejected(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(REJECTED_COLUMNS)
            for r in sorted(rejected, key=lambda r: (r[0], r[1])):
                w.writerow([r[0], job.class_names[r[0]], r[1], r[2], *_scores(r), failed(r)])

    classes = []
    for c, n in enumerate(job.counts):
        if not n:
            continue
        drawn = 1 + max(r[1] for r in accepted if r[0] == c)  # candidates 0..the last one kept
        base = job.candidate_base(c)
        classes.append({"class_index": c, "class_name": job.class_names[c], "requested": n, "drawn": drawn,
                        "accepted": n, "rejected": drawn - n, "acceptance_rate": round(n / drawn, 6),
                        "seeds_drawn": [base, base + drawn - 1], "max_draws": job.max_draws(c),
                        **{f"threshold_{k}": v[c] for k, v in limits.items()}})
    drawn = sum(c["drawn"] for c in classes)
    summary = {"selection": job.to_dict()["selection"], "classes": classes,
               "total": {"drawn": drawn, "accepted": job.total, "rejected": drawn - job.total,
                         "acceptance_rate": round(job.total / drawn, 6)}}
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(out / select.REJECTED_NAME, write_rejected)
    atomic_write(out / select.SELECTION_NAME, lambda tmp: tmp.write_text(text))


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
