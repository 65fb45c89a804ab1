"""`ganforge augment` end to end: a checkpoint's job, rendered through `models.sampling`, written by the writer."""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from models.checkpoint import discriminator_path, load
from models.sampling import generate, pick_device, to_uint8

from . import select, writer
from .spec import checkpoint_job

# (module, meta, device) -> what runs the module's forward pass (e.g. a `backends.choose` Selection); the
# augment package stays below `backends` and takes it from its caller (the CLI's --backend).
BackendFactory = Callable[[Any, dict, Any], Any]


def checkpoint_renderer(checkpoint: str | os.PathLike, truncation: float | None, device: str = "auto",
                        backend: BackendFactory | None = None) -> writer.Render:
    """`render` for `writer.run` from a checkpoint, loaded on first use (a finished job never loads it), run by
    `backend(module, meta, device)` when given, else by the module itself."""
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
                       progress: Callable[[int, int], None] | None = None, backend: BackendFactory | None = None,
                       **job_args: Any) -> dict[str, Any]:
    """`ganforge augment`: build the job from the checkpoint and `job_args` (see `checkpoint_job`; `select`
    turns sample selection on), run it (`backend`: see `checkpoint_renderer`)."""
    job = checkpoint_job(checkpoint, **job_args)
    scorers = None
    if job.selection is not None:
        chosen = job_args["select"]
        scorers = select.load_scorers(job.selection, chosen.get("classifier"),
                                      chosen.get("discriminator") or discriminator_path(checkpoint),
                                      pick_device(device))
    return writer.run(job, out, checkpoint_renderer(checkpoint, job.truncation, device, backend), progress,
                      scorers=scorers)
