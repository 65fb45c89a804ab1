"""Augmentation jobs: labelled synthetic images in bulk, written to a folder in resumable chunks.

The one engine behind `ganforge augment` and the service's /augment routes. `spec.py` holds the job and its
reproducibility contract (class order, image k = seed + k), `writer.py` the durable on-disk writer (chunks,
locks, manifest, zip), `render.py` a checkpoint's job end to end. Imports `models` only.
"""
from .render import augment_checkpoint, checkpoint_renderer
from .spec import (FORMATS, MANIFEST_NAME, NPZ_NAME, SPEC_NAME, AugmentJob, JobSpecError, checkpoint_job,
                   resolve_counts, split_evenly)
from .writer import (MANIFEST_COLUMNS, FolderBusy, Render, completed, locked, read_manifest, read_spec, run,
                     zip_folder)

__all__ = ["AugmentJob", "FORMATS", "FolderBusy", "JobSpecError", "MANIFEST_COLUMNS", "MANIFEST_NAME", "NPZ_NAME",
           "Render", "SPEC_NAME", "augment_checkpoint", "checkpoint_job", "checkpoint_renderer", "completed",
           "locked", "read_manifest", "read_spec", "resolve_counts", "run", "split_evenly", "zip_folder"]
