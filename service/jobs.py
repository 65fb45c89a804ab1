"""Augmentation jobs inside the service: checked at submit, kept on disk, run by a background thread.

The images come from `augment` (the engine of `ganforge augment`) rendering through
`served.render`, the function behind the online batched route. Jobs folder (GANFORGE_JOBS_DIR, default
`$BENTOML_HOME/ganforge_jobs`), one folder per job, named by its id:

    <id>/job.json          the resolved job (the augment spec, served model and store tag, the request,
                           creation time); written once: the folder is built under a hidden name and renamed
    <id>/state.json        queued | running | done | failed | cancelled, times, attempts, interruptions,
                           error, note; atomic
    <id>/cancel            present once a cancel was asked for (the runner, in whichever worker, stops)
    <id>/out/              the augment output folder: spec, chunks, then class folders/npz + manifest;
                           removed once the result is published unless the request said keep_files
    <id>/augment-<id>.zip  the result (imagefolder: the zipped out/ folder) or augment-<id>.npz, once done
    .submit.lock           held (flock) while a submit counts the active jobs and adds one, so that
                           GANFORGE_JOB_MAX_ACTIVE holds across workers

Each worker runs one daemon thread that takes the oldest queued or running job whose folder lock (flock)
it can get and runs it. The lock dies with its process, so with several workers a job runs in exactly one,
and a job whose worker died is taken again by the next scan (every `poll_s`) or after a restart, resuming
from its last whole chunk; at the MAX_INTERRUPTIONS-th such death it is marked failed with that reason. A job
whose model is no longer served, or is served with other weights, fails with a reason instead of running.

Faults: a full disk (ENOSPC/EDQUOT) while a job renders, publishes or records its state never fails the job:
it goes back to `queued` with a note saying why (when the note can be written) and this worker leaves it alone
for `retry_s` seconds, then tries again, so a job whose images are done publishes once space is back. Any
other error raised while handling one job holds that job back the same way (one log line, not a traceback
per scan) and the scan goes on to the jobs behind it. A failed or cancelled job can be re-queued with
`retry`. Jobs finished more than `retention_s` ago are deleted by the scan (0: kept until deleted).

Online requests come first: before each of its forward passes (`job_batch_size` images) a job waits until
no online request is in flight (`OnlineGate`, at most `batch_wait_s`), and it sleeps `pause_s`
after each batch. An online request therefore waits for at most one small job batch.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

import augment
from augment import AugmentJob
from models.checkpoint import atomic_write

from .gate import OnlineGate
from .selection import job_scorers
from .served import Served, render

logger = logging.getLogger("ganforge.service")

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
STATES = ACTIVE + FINISHED
MAX_INTERRUPTIONS = 3  # a job whose worker died this often (OOM kill, crash loop) is failed, not resumed again
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
CANCEL_MARKER = "cancel"
SUBMIT_LOCK = ".submit.lock"
MAX_PAGE = 1000
EXPIRE_EVERY_S = 60.0
JOB_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")
STALE_SUBMIT_S = 600  # hidden half-made job folders older than this come from a crash mid-submit


class JobNotFound(KeyError):
    """No job with this id."""


class JobNotReady(Exception):
    """The job has no result (yet, or ever: it failed)."""


class TooManyJobs(Exception):
    """GANFORGE_JOB_MAX_ACTIVE jobs are queued or running."""


class JobConflict(Exception):
    """The job is in a state that does not allow this (cancel a finished job, delete a running one, ...)."""


class StorageFull(Exception):
    """The jobs folder's disk is full (or over quota): nothing was stored."""


class _Cancelled(Exception):
    """A cancel was asked for while the job ran."""


def _disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL


class _Stopping(Exception):
    """The service is shutting down: leave the job to resume at the next start."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


class JobManager:
    """Submit, inspect and run the augmentation jobs stored under `root` for the models in `served`."""

    def __init__(self, root: str | os.PathLike, served: Mapping[str, Served], gate: OnlineGate,
                 max_active: int = 16, batch_wait_s: float = 1.0, pause_s: float = 0.0, poll_s: float = 2.0,
                 retry_s: float = 30.0, retention_s: float = 0.0):
        self.root = Path(root)
        self.retry_s = retry_s
        self.retention_s = retention_s
        self._held: dict[str, tuple[float, str]] = {}  # job id -> (monotonic time it may run again, why)
        self._expired_at = -EXPIRE_EVERY_S
        self.served = served
        self.gate = gate
        self.max_active = max_active
        self.batch_wait_s = batch_wait_s
        self.pause_s = pause_s
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._submit_lock = threading.Lock()

    # --- the background runner ------------------------------------------------------------------

    def start(self) -> None:
        """Start the runner thread: it resumes unfinished jobs first, then takes new ones."""
        self.root.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.glob(".new-*"):
            if time.time() - tmp.stat().st_mtime > STALE_SUBMIT_S:
                shutil.rmtree(tmp, ignore_errors=True)
        for gone in self.root.glob(".deleted-*"):  # a delete interrupted after its rename
            shutil.rmtree(gone, ignore_errors=True)
        self._thread = threading.Thread(target=self._loop, name="ganforge-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the runner to stop after its current batch (the job stays queued) and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "JobManager":
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            ran = False
            try:
                pending = self._pending()
            except Exception as e:  # the jobs folder itself is unreadable: say so once per scan, no traceback
                logger.warning("augmentation job scan failed: %s: %s", type(e).__name__, e)
                pending = []
            for job_id in pending:
                held = self._held.get(job_id)
                if held and held[0] > time.monotonic():
                    continue
                try:
                    if self._run(job_id):
                        ran = True
                        break  # after each run: rescan, oldest first
                except Exception as e:  # one job's fault must not stop the jobs behind it
                    self._hold(job_id, e)
            self._expire()
            if not ran:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def _hold(self, job_id: str, e: BaseException) -> None:
        """Leave a job this worker could not handle alone for `retry_s` seconds; one log line saying why."""
        why = f"{type(e).__name__}: {e}"
        if self._held.get(job_id, (0, ""))[1] != why:  # first time for this reason: with the traceback
            logger.warning("augmentation job %s: %s; retrying in %g s", job_id, why, self.retry_s,
                           exc_info=not isinstance(e, OSError))
        self._held[job_id] = (time.monotonic() + self.retry_s, why)

    def _expire(self) -> None:
        """Delete jobs finished more than `retention_s` ago (checked every EXPIRE_EVERY_S at most)."""
        now = time.monotonic()
        if not self.retention_s or now - self._expired_at < EXPIRE_EVERY_S:
            return
        self._expired_at = now
        cutoff = time.time() - self.retention_s
        for folder in self._job_folders():
            try:
                state = self._state(folder)
                if state["state"] in FINISHED and state.get("finished_at", time.time()) < cutoff:
                    self.delete(folder.name)
                    logger.info("augmentation job %s deleted: finished over %g h ago (GANFORGE_JOB_RETENTION_HOURS)",
                                folder.name, self.retention_s / 3600)
            except (JobConflict, JobNotFound, OSError, ValueError):
                continue

    def _job_folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [f for f in self.root.iterdir() if JOB_ID.fullmatch(f.name)]

    def _pending(self) -> list[str]:
        """Ids of queued or running jobs, oldest first."""
        found = []
        for folder in self._job_folders():
            try:
                state = self._state(folder)
            except (OSError, ValueError):
                continue
            if state["state"] in ACTIVE:
                found.append((state.get("submitted", 0.0), folder.name))
        return [job_id for _, job_id in sorted(found)]

    def _run(self, job_id: str) -> bool:
        """Run one job if this thread can lock it and it is unfinished; True if it did something."""
        folder = self.root / job_id
        try:
            with augment.locked(folder):
                return self._run_locked(job_id, folder)
        except augment.FolderBusy:
            return False  # another worker runs it

    def _run_locked(self, job_id: str, folder: Path) -> bool:
        state = self._state(folder)
        if state["state"] not in ACTIVE:
            return False
        for tmp in folder.glob(".*.tmp"):  # a result or state file half-written when a worker died
            tmp.unlink(missing_ok=True)
        if (folder / CANCEL_MARKER).exists():
            self._set(folder, state, state="cancelled", finished=_now(), finished_at=time.time(),
                      note="cancelled before it ran")
            return True
        try:
            record = json.loads((folder / "job.json").read_text())
            job = AugmentJob.from_dict(record["job"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._set(folder, state, state="failed", finished=_now(), error=f"unreadable job.json: {e}")
            return True
        out = folder / "out"
        if state["state"] == "running" and job_id not in self._held:  # its last runner died without a word
            #                           (kill -9, OOM, power); a held job is "running" only because the disk was
            #                           too full to write "queued"
            state["interruptions"] = state.get("interruptions", 0) + 1
            if state["interruptions"] >= MAX_INTERRUPTIONS:
                self._set(folder, state, state="failed", finished=_now(),
                          error=f"the server stopped {state['interruptions']} times while running this job "
                                f"(at {augment.completed(out, job)}/{job.total} images); giving up")
                return True
        served = self.served.get(job.model)
        if served is None or served.kind != "conditional":
            self._set(folder, state, state="failed", finished=_now(),
                      error=f"model {job.model!r} is not served any more (served: {list(self.served)}); "
                            "submit the job again to another model")
            return True
        sha = served.store_metadata.get("sha256")
        if sha != job.checkpoint_sha256:
            self._set(folder, state, state="failed", finished=_now(),
                      error=f"model {job.model!r} is now served with other weights (sha256 {sha}; the job "
                            f"was made with {job.checkpoint_sha256}); submit it again for the new weights")
            return True
        keep = bool(record.get("request", {}).get("keep_files"))
        state = self._set(folder, state, state="running", started=state.get("started") or _now(),
                          attempts=state.get("attempts", 0) + 1, note=None)
        try:
            augment.run(job, out, self._renderer(served, job.truncation),
                        between_batches=lambda: self._between_batches(folder),
                        scorers=job_scorers(job.selection, served))
            result = self._publish(folder, job_id, job)
            self._set(folder, state, state="done", finished=_now(), finished_at=time.time(), result=result.name,
                      result_bytes=result.stat().st_size, error=None,
                      note=None if not keep else "out/ kept beside the result (keep_files)")
            logger.info("augmentation job %s done: %d images", job_id, job.total)
            self._held.pop(job_id, None)
            if not keep:  # the images are in the result now; out/ doubled the disk use
                shutil.rmtree(out, ignore_errors=True)
        except _Stopping:
            self._set(folder, state, state="queued",
                      note=f"interrupted by a shutdown at {augment.completed(out, job)}/{job.total} images; "
                           "resumes when the service starts again")
        except _Cancelled:
            self._set(folder, state, state="cancelled", finished=_now(), finished_at=time.time(),
                      note=f"cancelled at {augment.completed(out, job)}/{job.total} images")
        except Exception as e:
            if not _disk_full(e):
                logger.exception("augmentation job %s failed", job_id)
                self._set(folder, state, state="failed", finished=_now(), finished_at=time.time(),
                          error=f"{type(e).__name__}: {e}; POST /augment/retry runs it again")
                return True
            self._hold(job_id, e)  # before the note: writing it may fail the same way
            self._set(folder, state, state="queued",
                      note=f"paused at {augment.completed(out, job)}/{job.total} images: no space left in the "
                           f"jobs folder ({e.strerror}); retried every {self.retry_s:g} s, resumes once space "
                           "is freed")
        return True

    def _renderer(self, served: Served, truncation: float | None) -> augment.Render:
        def render_batch(labels: np.ndarray, seeds: np.ndarray) -> np.ndarray:
            self.gate.wait_idle(self.batch_wait_s)  # online requests first
            if self._stop.is_set():
                raise _Stopping
            return render(served, labels.tolist(), seeds.tolist(), truncation)

        return render_batch

    def _between_batches(self, folder: Path) -> None:
        if self.pause_s:
            self._stop.wait(self.pause_s)
        else:
            time.sleep(0)  # let other threads have the GIL
        if self._stop.is_set():
            raise _Stopping
        if (folder / CANCEL_MARKER).exists():  # asked for in any worker: one stat per batch
            raise _Cancelled

    def _publish(self, folder: Path, job_id: str, job: AugmentJob) -> Path:
        """The downloadable result, written atomically: a zip of the folder, or the npz (hard-linked)."""
        if job.format == "imagefolder":
            return augment.zip_folder(folder / "out", folder / f"augment-{job_id}.zip")
        target = folder / f"augment-{job_id}.npz"
        tmp = folder / f".{target.name}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(folder / "out" / augment.NPZ_NAME, tmp)
        except OSError:
            shutil.copyfile(folder / "out" / augment.NPZ_NAME, tmp)
        os.replace(tmp, target)
        return target

    # --- state on disk --------------------------------------------------------------------------

    @staticmethod
    def _state(folder: Path) -> dict[str, Any]:
        state = json.loads((folder / "state.json").read_text())
        if state.get("state") not in STATES:
            raise ValueError(f"{folder}/state.json has state {state.get('state')!r}")
        return state

    @staticmethod
    def _set(folder: Path, current: dict[str, Any], **changes: Any) -> dict[str, Any]:
        new = {**current, **changes}
        _write_json(folder / "state.json", new)
        return new

    def _folder(self, job_id: str) -> Path:
        folder = self.root / job_id
        if not JOB_ID.fullmatch(job_id) or not (folder / "job.json").is_file():
            raise JobNotFound(job_id)
        return folder

    # --- the API --------------------------------------------------------------------------------

    def submit(self, job: AugmentJob, model_tag: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store a new job (queued) and wake the runner; TooManyJobs beyond `max_active`. Returns its status."""
        now = time.time()  # the id sorts by submission time: second, then milliseconds (3 hex digits)
        millis = f"{int(now % 1 * 1000):03x}"
        job_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{millis}{secrets.token_hex(3)[:5]}"
        tmp = self.root / f".new-{job_id}"
        try:
            with self._submit_lock, self._root_locked():  # threads of this worker, then the other workers
                active = len(self._pending())
                if active >= self.max_active:
                    raise TooManyJobs(f"{active} augmentation jobs are queued or running; the limit is "
                                      f"{self.max_active} (GANFORGE_JOB_MAX_ACTIVE): retry when one has finished")
                tmp.mkdir(parents=True)
                created = _now()
                _write_json(tmp / "job.json", {"job_id": job_id, "job": job.to_dict(), "model_tag": model_tag,
                                               "request": request or {}, "created": created})
                _write_json(tmp / "state.json", {"state": "queued", "created": created, "submitted": time.time(),
                                                 "attempts": 0, "interruptions": 0})
                os.rename(tmp, self.root / job_id)  # the job appears whole or not at all
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if _disk_full(e):
                raise StorageFull(f"the jobs folder has no space left ({e.strerror}); nothing was stored: "
                                  "retry once space is freed") from None
            raise
        self._wake.set()
        return self.status(job_id)

    @contextlib.contextmanager
    def _root_locked(self) -> Iterator[None]:
        """An exclusive flock on the jobs folder's SUBMIT_LOCK file, shared by every worker using the folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / SUBMIT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for a directory scan and a few small writes
            yield
        finally:
            os.close(fd)

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's state and progress (images safely on disk); JobNotFound for an unknown id. A state.json
        that cannot be read reports the job failed with why (retry re-queues it)."""
        folder = self._folder(job_id)
        record = json.loads((folder / "job.json").read_text())
        try:
            state = self._state(folder)
        except (OSError, ValueError) as e:
            state = {"state": "failed", "error": f"its state.json is unreadable ({type(e).__name__}: {e}); "
                                                 "POST /augment/retry re-queues the job"}
        job = AugmentJob.from_dict(record["job"])
        done = job.total if state["state"] == "done" else augment.completed(folder / "out", job)
        held = self._held.get(job_id)
        if held and state["state"] in ACTIVE and not state.get("note"):
            state = {**state, "note": f"held back in this worker: {held[1]}"}
        return {
            "job_id": job_id, "state": state["state"], "done": done, "total": job.total,
            "progress": round(done / job.total, 4), "model": job.model, "model_tag": record.get("model_tag", ""),
            "checkpoint_sha256": job.checkpoint_sha256, "format": job.format, "seed": job.seed,
            "truncation": job.truncation,
            "per_class": {name: n for name, n in zip(job.class_names, job.counts) if n},
            "created": record["created"], "started": state.get("started"), "finished": state.get("finished"),
            "attempts": state.get("attempts", 0), "interruptions": state.get("interruptions", 0),
            "error": state.get("error"), "note": state.get("note"), "result": state.get("result"),
            "result_bytes": state.get("result_bytes"), "keep_files": bool(record.get("request", {}).get("keep_files")),
        }

    def list(self, limit: int = 100, before: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of job statuses, newest first, and the cursor of the next page (None on the last).

        Ids start with their submission time (UTC, to the millisecond), so the order is the ids' and only the
        page's folders are read. `before`: the cursor a
        previous page returned (jobs with smaller ids)."""
        names = sorted((f.name for f in self._job_folders()), reverse=True)
        if before is not None:
            names = [n for n in names if n < before]
        page: list[dict[str, Any]] = []
        for i, name in enumerate(names):
            if len(page) == limit:
                return page, page[-1]["job_id"]
            try:
                page.append(self.status(name))
            except (JobNotFound, OSError, ValueError, KeyError) as e:
                logger.warning("skipping unreadable job folder %s: %s", name, e)
        return page, None

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Stop a queued or running job (in whichever worker runs it, after its current batch); JobConflict
        for a finished one."""
        status = self.status(job_id)
        if status["state"] not in ACTIVE:
            raise JobConflict(f"job {job_id} is {status['state']}: only queued or running jobs can be cancelled")
        folder = self.root / job_id
        (folder / CANCEL_MARKER).touch()
        try:
            with augment.locked(folder):  # nobody runs it: cancel now
                state = self._state(folder)
                if state["state"] in ACTIVE:
                    self._set(folder, state, state="cancelled", finished=_now(), finished_at=time.time(),
                              note=f"cancelled at {status['done']}/{status['total']} images")
        except augment.FolderBusy:
            pass  # its runner sees the marker after its current batch
        return self.status(job_id)

    def retry(self, job_id: str) -> dict[str, Any]:
        """Queue a failed or cancelled job again (it resumes from its last whole chunk); JobConflict otherwise."""
        status = self.status(job_id)
        if status["state"] not in ("failed", "cancelled"):
            raise JobConflict(f"job {job_id} is {status['state']}: only failed or cancelled jobs can be retried")
        folder = self.root / job_id
        try:
            with augment.locked(folder):
                try:
                    state = self._state(folder)
                except (OSError, ValueError):  # unreadable: start from what job.json says
                    state = {"created": status["created"], "submitted": time.time(), "attempts": 0}
                (folder / CANCEL_MARKER).unlink(missing_ok=True)
                self._set(folder, state, state="queued", finished=None, finished_at=None, error=None,
                          interruptions=0, note=f"retried at {_now()} after: "
                                                f"{status['error'] or status['note'] or status['state']}")
        except augment.FolderBusy:
            raise JobConflict(f"job {job_id} is being changed by another request; retry shortly") from None
        self._held.pop(job_id, None)
        self._wake.set()
        return self.status(job_id)

    def delete(self, job_id: str) -> dict[str, Any]:
        """Remove a finished (done, failed or cancelled) job and its files; JobConflict for an active one."""
        status = self.status(job_id)
        if status["state"] in ACTIVE:
            raise JobConflict(f"job {job_id} is {status['state']}: cancel it first")
        folder = self.root / job_id
        try:
            with augment.locked(folder):
                gone = self.root / f".deleted-{job_id}"
                os.rename(folder, gone)  # it disappears at once, whole; the files go after
        except augment.FolderBusy:
            raise JobConflict(f"job {job_id} is being changed by another request; retry shortly") from None
        shutil.rmtree(gone, ignore_errors=True)
        return {"job_id": job_id, "deleted": True, "state": status["state"]}

    def result(self, job_id: str) -> Path:
        """The finished job's result file; JobNotReady (with the reason) while it is not done."""
        status = self.status(job_id)
        if status["state"] == "failed":
            raise JobNotReady(f"job {job_id} failed: {status['error']}")
        if status["state"] != "done":
            raise JobNotReady(f"job {job_id} is {status['state']} ({status['done']}/{status['total']} images); "
                              "poll /augment/status until its state is 'done'")
        return self.root / job_id / status["result"]
