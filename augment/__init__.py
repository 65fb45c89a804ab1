"""Augmentation jobs: labelled synthetic images in bulk, written to a folder in resumable chunks.

The one engine behind `ganforge augment` and the service's /augment routes. `spec.py` holds the job and its
reproducibility contract (class order, image k = seed + k), `writer.py` the durable on-disk writer (chunks,
locks, manifest, zip), `select.py` the optional sample selection (classifier confidence, discriminator top
fraction), `render.py` a checkpoint's job end to end. Imports `models` only.
"""
from .render import augment_checkpoint, checkpoint_renderer
from .select import (REJECTED_NAME, SELECTION_NAME, SelectionExhausted, check_classifier, check_discriminator,
                     load_scorers)
from .spec import (FORMATS, MANIFEST_NAME, NPZ_NAME, SPEC_NAME, AugmentJob, JobSpecError, Selection,
                   checkpoint_job, resolve_counts, split_evenly)
from .writer import (MANIFEST_COLUMNS, SELECTION_COLUMNS, FolderBusy, Render, completed, locked, read_manifest,
                     read_spec, run, zip_folder)

__all__ = ["AugmentJob", "FORMATS", "FolderBusy", "JobSpecError", "MANIFEST_COLUMNS", "MANIFEST_NAME", "NPZ_NAME",
           "REJECTED_NAME", "Render", "SELECTION_COLUMNS", "SELECTION_NAME", "SPEC_NAME", "Selection",
           "SelectionExhausted", "augment_checkpoint", "check_classifier", "check_discriminator", "checkpoint_job",
           "checkpoint_renderer", "completed", "load_scorers", "locked", "read_manifest", "read_spec",
           "resolve_counts", "run", "split_evenly", "zip_folder"]
