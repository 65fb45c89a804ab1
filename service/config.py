"""Service settings, read once from `GANFORGE_*` environment variables when the service module is imported.

BentoML takes batching limits, threads and workers from the `@bentoml.service` / `@bentoml.api`
decorators, and packs the models declared on the class, so these values must be known at import time.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from backends.select import CHOICES as BACKEND_CHOICES

BUNDLED_MODELS = ("fashion_mnist_cgan", "fashion_mnist_edges2image")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is outside {low}..{high}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {list(allowed)}")
    return value


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...] = BUNDLED_MODELS  # GANFORGE_MODELS: store names served, comma-separated
    max_n: int = 64  # GANFORGE_MAX_N: images per request
    batching: bool = True  # GANFORGE_BATCHING=off serves every request with its own forward pass
    max_batch_size: int = 64  # GANFORGE_MAX_BATCH_SIZE: images merged into one forward pass
    max_latency_ms: int = 2000  # GANFORGE_MAX_LATENCY_MS: queue + compute budget; beyond it BentoML answers 503
    threads: int = 2  # GANFORGE_THREADS: worker threads for sync work (render, translate)
    workers: int = 1  # GANFORGE_WORKERS: processes, each with its own model copies
    device: str = "auto"  # GANFORGE_DEVICE: auto | cpu | cuda | cuda:N | mps
    backend: str = "auto"  # GANFORGE_BACKEND: auto (the fastest accurate one, timed at start-up) | torch |
    #                        torch-autocast | onnxruntime (docs/deploy.md)
    dtype: str = "auto"  # GANFORGE_DTYPE: torch-autocast's low precision: auto (bfloat16 on CPU, float16 on
    #                      CUDA/MPS) | bfloat16 | float16 | float32 (no low precision: auto never tries it)
    timeout_s: int = 60  # GANFORGE_TIMEOUT: per-request timeout (504 beyond it)
    max_upload_bytes: int = 4 << 20  # GANFORGE_MAX_UPLOAD_BYTES: /translate upload size
    max_pixels: int = 1 << 20  # GANFORGE_MAX_PIXELS: /translate width * height (decompression bombs)
    max_side: int = 2048  # GANFORGE_MAX_SIDE: /translate width and height
    max_uploads: int = 4  # GANFORGE_MAX_UPLOADS: /translate uploads read and processed at once per worker
    #                       (the others wait); bounds the memory uploads hold (docs/http-api.md)
    body_timeout_s: int = 10  # GANFORGE_BODY_TIMEOUT: seconds a request body may stall before a 408
    gpus: int = 0  # GANFORGE_GPUS: GPUs requested from the scheduler (BentoCloud / bentoml resources)
    jobs_dir: str = ""  # GANFORGE_JOBS_DIR: augmentation jobs and their results; empty: $BENTOML_HOME/ganforge_jobs
    job_max_images: int = 100_000  # GANFORGE_JOB_MAX_IMAGES: images per augmentation job
    job_max_active: int = 16  # GANFORGE_JOB_MAX_ACTIVE: queued + running jobs (429 beyond it)
    job_batch_size: int = 32  # GANFORGE_JOB_BATCH_SIZE: images per job forward pass (an online request waits
    #                           at most one of these)
    job_chunk_size: int = 512  # GANFORGE_JOB_CHUNK_SIZE: images per resumable chunk (and progress step)
    job_max_wait_ms: int = 1000  # GANFORGE_JOB_MAX_WAIT_MS: how long a job batch waits for online requests to
    #                              finish before it runs anyway (so busy servers still make job progress)
    job_pause_ms: int = 0  # GANFORGE_JOB_PAUSE_MS: sleep after every job batch (caps the jobs' share further)
    job_quiet_ms: int = 50  # GANFORGE_JOB_QUIET_MS: a job batch starts only this long after the last online
    #                         request ended (so back-to-back requests from one client are not held up)
    job_retention_hours: int = 0  # GANFORGE_JOB_RETENTION_HOURS: finished jobs older than this are deleted (0: kept)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Settings from `env` (default: os.environ); ValueError names the bad variable and its allowed values."""
        env = os.environ if env is None else env
        names = tuple(n.strip() for n in env.get("GANFORGE_MODELS", "").split(",") if n.strip()) or BUNDLED_MODELS
        if len(set(names)) != len(names):
            raise ValueError(f"GANFORGE_MODELS lists a model twice: {list(names)}")
        for name in names:
            check_model_name(name)
        return cls(
            models=names,
            max_n=_int(env, "GANFORGE_MAX_N", cls.max_n, 1, 1024),
            batching=_choice(env, "GANFORGE_BATCHING", "on", ("on", "off")) == "on",
            max_batch_size=_int(env, "GANFORGE_MAX_BATCH_SIZE", cls.max_batch_size, 2, 4096),
            max_latency_ms=_int(env, "GANFORGE_MAX_LATENCY_MS", cls.max_latency_ms, 1, 600_000),
            threads=_int(env, "GANFORGE_THREADS", cls.threads, 1, 256),
            workers=_int(env, "GANFORGE_WORKERS", cls.workers, 1, 256),
            device=env.get("GANFORGE_DEVICE", "").strip() or cls.device,
            backend=_choice(env, "GANFORGE_BACKEND", cls.backend, BACKEND_CHOICES),
            dtype=_choice(env, "GANFORGE_DTYPE", cls.dtype, ("auto", "float32", "float16", "bfloat16")),
            timeout_s=_int(env, "GANFORGE_TIMEOUT", cls.timeout_s, 1, 3600),
            max_upload_bytes=_int(env, "GANFORGE_MAX_UPLOAD_BYTES", cls.max_upload_bytes, 1024, 1 << 30),
            max_pixels=_int(env, "GANFORGE_MAX_PIXELS", cls.max_pixels, 1, 1 << 28),
            max_side=_int(env, "GANFORGE_MAX_SIDE", cls.max_side, 1, 1 << 16),
            max_uploads=_int(env, "GANFORGE_MAX_UPLOADS", cls.max_uploads, 1, 1024),
            body_timeout_s=_int(env, "GANFORGE_BODY_TIMEOUT", cls.body_timeout_s, 1, 3600),
            gpus=_int(env, "GANFORGE_GPUS", cls.gpus, 0, 64),
            jobs_dir=env.get("GANFORGE_JOBS_DIR", "").strip(),
            job_max_images=_int(env, "GANFORGE_JOB_MAX_IMAGES", cls.job_max_images, 1, 100_000_000),
            job_max_active=_int(env, "GANFORGE_JOB_MAX_ACTIVE", cls.job_max_active, 1, 100_000),
            job_batch_size=_int(env, "GANFORGE_JOB_BATCH_SIZE", cls.job_batch_size, 1, 4096),
            job_chunk_size=_int(env, "GANFORGE_JOB_CHUNK_SIZE", cls.job_chunk_size, 1, 1 << 20),
            job_max_wait_ms=_int(env, "GANFORGE_JOB_MAX_WAIT_MS", cls.job_max_wait_ms, 0, 3_600_000),
            job_pause_ms=_int(env, "GANFORGE_JOB_PAUSE_MS", cls.job_pause_ms, 0, 60_000),
            job_quiet_ms=_int(env, "GANFORGE_JOB_QUIET_MS", cls.job_quiet_ms, 0, 60_000),
            job_retention_hours=_int(env, "GANFORGE_JOB_RETENTION_HOURS", cls.job_retention_hours, 0, 1_000_000),
        )

    @property
    def max_json_bytes(self) -> int:
        """Body limit of the JSON routes: room for max_n render items, at least 64 KiB."""
        return max(64 << 10, 256 * self.max_n)

    def public(self) -> dict:
        """The limits and batching settings clients may rely on (reported by /models)."""
        keep = ("max_n", "batching", "max_batch_size", "max_latency_ms", "threads", "workers", "timeout_s",
                "max_upload_bytes", "max_pixels", "max_side", "max_uploads", "body_timeout_s", "max_json_bytes",
                "job_max_images", "job_max_active", "job_batch_size", "job_chunk_size", "job_quiet_ms", "job_retention_hours")
        return {name: getattr(self, name) for name in keep}


def jobs_root(settings: Settings, env: Mapping[str, str] | None = None) -> Path:
    """Where augmentation jobs live: GANFORGE_JOBS_DIR, else `ganforge_jobs` in BentoML's home."""
    env = os.environ if env is None else env
    if settings.jobs_dir:
        return Path(settings.jobs_dir).expanduser()
    return Path(env.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser() / "ganforge_jobs"


def check_model_name(name: str) -> str:
    """BentoML store names: lowercase letters, digits, '_', '-', '.', starting with a letter or digit."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.\-]{0,62}", name):
        raise ValueError(f"model name {name!r} is not a valid BentoML model name "
                         "(lowercase letters, digits, '_', '-', '.'; at most 63 characters)")
    return name


SETTINGS = Settings.from_env()
