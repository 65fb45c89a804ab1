"""`ganforge augment` end to end: a checkpoint's job, rendered through `models.sampling`, written by the writer."""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from models.checkpoint import discriminator_path, load
from models.sampling import generate, pick_device, to_uint8

from . import select, writer
from .spec import checkpoint_job


def checkpoint_renderer(checkpoint: str | os.PathLike, truncation: float | None,
                        device: str = "auto") -> writer.Render:
    """`render` for `writer.run` from a checkpoint, loaded on first use (a finished job never loads it)."""
    loaded: list = []

    def render(labels: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        if not loaded:
            loaded.extend(load(checkpoint, pick_device(device)))
        G, meta = loaded
        return to_uint8(generate(G, labels.tolist(), seeds.tolist(), truncation), meta)

    return render


def augment_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, device: str = "auto",
                       progress: Callable[[int, int], None] | None = None, **job_args: Any) -> dict[str, Any]:
    """`ganforge augment`: build the job from the checkpoint and `job_args` (see `checkpoint_job`; `select`
    turns sample selection on), run it."""
    job = checkpoint_job(checkpoint, **job_args)
    scorers = None
    if job.selection is not None:
        chosen = job_args["select"]
        scorers = select.load_scorers(job.selection, chosen.get("classifier"),
                                      chosen.get("discriminator") or discriminator_path(checkpoint),
                                      pick_device(device))
    return writer.run(job, out, checkpoint_renderer(checkpoint, job.truncation, device), progress,
                      scorers=scorers)
