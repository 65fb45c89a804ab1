"""Augmentation jobs inside the service: checked at submit, kept on disk, run by a background thread.

The images come from `models.augment` (the engine of `ganforge augment`) rendering through
`served.render`, the function behind the online batched route. Jobs folder (GANFORGE_JOBS_DIR, default
`$BENTOML_HOME/ganforge_jobs`), one folder per job, named by its id:

    <id>/job.json          the resolved job (the models.augment spec, served model and store tag, the request,
                           creation time); written once: the folder is built under a hidden name and renamed
    <id>/state.json        queued | running | done | failed, times, attempts, interruptions, error; atomic
    <id>/out/              the models.augment output folder: spec, chunks, then class folders/npz + manifest
    <id>/augment-<id>.zip  the result (imagefolder: the zipped out/ folder) or augment-<id>.npz, once done

Each worker runs one daemon thread that takes the oldest queued or running job whose folder lock (flock)
it can get and runs it. The lock dies with its process, so with several workers a job runs in exactly one,
and a job whose worker died is taken again by the next scan (every `poll_s`) or after a restart, resuming
from its last whole chunk; after MAX_INTERRUPTIONS such deaths it is marked failed with that reason. A job
whose model is no longer served, or is served with other weights, fails with a reason instead of running.

Online requests come first: before each of its forward passes (`job_batch_size` images) a job waits until
no online request is in flight (`OnlineGate`, at most `batch_wait_s`), and it sleeps `pause_s`
after each batch. An online request therefore waits for at most one small job batch.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from models import augment
from models.augment import AugmentJob
from models.checkpoint import atomic_write

from .gate import OnlineGate
from .served import Served, render

logger = logging.getLogger("ganforge.service")

ACTIVE = ("queued", "running")
STATES = ("queued", "running", "done", "failed")
MAX_INTERRUPTIONS = 3  # a job whose worker died this often (OOM kill, crash loop) is failed, not retried
JOB_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")
STALE_SUBMIT_S = 600  # hidden half-made job folders older than this come from a crash mid-submit


class JobNotFound(KeyError):
    """No job with this id."""


class JobNotReady(Exception):
    """The job has no result (yet, or ever: it failed)."""


class TooManyJobs(Exception):
    """GANFORGE_JOB_MAX_ACTIVE jobs are queued or running."""


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
                 max_active: int = 16, batch_wait_s: float = 1.0, pause_s: float = 0.0, poll_s: float = 2.0):
        self.root = Path(root)
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
        self._thread = threading.Thread(target=self._loop, name="ganforge-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the runner to stop after its current batch (the job stays queued) and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = any(self._run(job_id) for job_id in self._pending())  # after each run: rescan, oldest first
            except Exception:  # a broken folder must not kill the runner
                logger.exception("augmentation job scan failed")
                ran = False
            if not ran:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def _pending(self) -> list[str]:
        """Ids of queued or running jobs, oldest first."""
        found = []
        for folder in self.root.iterdir() if self.root.is_dir() else []:
            if not JOB_ID.fullmatch(folder.name):
                continue
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
        try:
            record = json.loads((folder / "job.json").read_text())
            job = AugmentJob.from_dict(record["job"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._set(folder, state, state="failed", finished=_now(), error=f"unreadable job.json: {e}")
            return True
        out = folder / "out"
        if state["state"] == "running":  # the last runner died without a word (kill -9, OOM, power)
            state["interruptions"] = state.get("interruptions", 0) + 1
            if state["interruptions"] > MAX_INTERRUPTIONS:
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
        state = self._set(folder, state, state="running", started=state.get("started") or _now(),
                          attempts=state.get("attempts", 0) + 1, note=None)
        try:
            augment.run(job, out, self._renderer(served, job.truncation), between_batches=self._between_batches)
            result = self._publish(folder, job_id, job)
            self._set(folder, state, state="done", finished=_now(), result=result.name,
                      result_bytes=result.stat().st_size)
            logger.info("augmentation job %s done: %d images", job_id, job.total)
        except _Stopping:
            self._set(folder, state, state="queued",
                      note=f"interrupted by a shutdown at {augment.completed(out, job)}/{job.total} images; "
                           "resumes when the service starts again")
        except Exception as e:
            logger.exception("augmentation job %s failed", job_id)
            self._set(folder, state, state="failed", finished=_now(), error=f"{type(e).__name__}: {e}")
        return True

    def _renderer(self, served: Served, truncation: float | None) -> augment.Render:
        def render_batch(labels: np.ndarray, seeds: np.ndarray) -> np.ndarray:
            self.gate.wait_idle(self.batch_wait_s)  # online requests first
            if self._stop.is_set():
                raise _Stopping
            return render(served, labels.tolist(), seeds.tolist(), truncation)

        return render_batch

    def _between_batches(self) -> None:
        if self.pause_s:
            self._stop.wait(self.pause_s)
        else:
            time.sleep(0)  # let other threads have the GIL
        if self._stop.is_set():
            raise _Stopping

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
        with self._submit_lock:
            active = len(self._pending())
            if active >= self.max_active:
                raise TooManyJobs(f"{active} augmentation jobs are queued or running; the limit is "
                                  f"{self.max_active} (GANFORGE_JOB_MAX_ACTIVE): retry when one has finished")
            job_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"
            tmp = self.root / f".new-{job_id}"
            tmp.mkdir(parents=True)
            created = _now()
            _write_json(tmp / "job.json", {"job_id": job_id, "job": job.to_dict(), "model_tag": model_tag,
                                           "request": request or {}, "created": created})
            _write_json(tmp / "state.json", {"state": "queued", "created": created, "submitted": time.time(),
                                             "attempts": 0, "interruptions": 0})
            os.rename(tmp, self.root / job_id)  # the job appears whole or not at all
        self._wake.set()
        return self.status(job_id)

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's state and progress (images safely on disk); JobNotFound for an unknown id."""
        folder = self._folder(job_id)
        record = json.loads((folder / "job.json").read_text())
        state = self._state(folder)
        job = AugmentJob.from_dict(record["job"])
        done = job.total if state["state"] == "done" else augment.completed(folder / "out", job)
        return {
            "job_id": job_id, "state": state["state"], "done": done, "total": job.total,
            "progress": round(done / job.total, 4), "model": job.model, "model_tag": record.get("model_tag", ""),
            "checkpoint_sha256": job.checkpoint_sha256, "format": job.format, "seed": job.seed,
            "truncation": job.truncation,
            "per_class": {name: n for name, n in zip(job.class_names, job.counts) if n},
            "created": record["created"], "started": state.get("started"), "finished": state.get("finished"),
            "attempts": state.get("attempts", 0), "interruptions": state.get("interruptions", 0),
            "error": state.get("error"), "note": state.get("note"), "result": state.get("result"),
            "result_bytes": state.get("result_bytes"),
        }

    def list(self) -> list[dict[str, Any]]:
        """Every job's status, newest first (by submission time: ids only have one-second resolution)."""
        found = []
        for folder in self.root.iterdir() if self.root.is_dir() else []:
            if not JOB_ID.fullmatch(folder.name):
                continue
            try:
                found.append((self._state(folder).get("submitted", 0.0), folder.name, self.status(folder.name)))
            except (JobNotFound, OSError, ValueError, KeyError) as e:
                logger.warning("skipping unreadable job folder %s: %s", folder.name, e)
        return [status for _, _, status in sorted(found, reverse=True)]

    def result(self, job_id: str) -> Path:
        """The finished job's result file; JobNotReady (with the reason) while it is not done."""
        status = self.status(job_id)
        if status["state"] == "failed":
            raise JobNotReady(f"job {job_id} failed: {status['error']}")
        if status["state"] != "done":
            raise JobNotReady(f"job {job_id} is {status['state']} ({status['done']}/{status['total']} images); "
                              "poll /augment/status until its state is 'done'")
        return self.root / job_id / status["result"]
