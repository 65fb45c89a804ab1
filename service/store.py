"""The BentoML model store side of ganforge: `ganforge export CKPT --name NAME` puts a checkpoint there.

A stored model is a folder holding the checkpoint's `model.safetensors` (which describes itself, so
`models.load(folder)` rebuilds it) plus BentoML metadata copied from the checkpoint (kind, classes,
geometry, provenance, metrics) and labels `kind` / `sha256`. Exporting the same weights again is a
no-op, so `make serve` can call it on every start.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from models import load
from models.checkpoint import CLASSIFIER, WEIGHTS_NAME, discriminator_path, file_hash, weights_path

from .config import check_model_name
from .served import KINDS


def _plain(value: Any) -> Any:
    """A copy BentoML accepts as model metadata: None values dropped (its validator rejects them)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value if v is not None]
    return value


def stored(name: str):
    """The latest stored model called `name`, or None."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(f"{name}:latest")
    except NotFound:
        return None


def export(checkpoint: str | os.PathLike, name: str, force: bool = False) -> tuple[str, bool]:
    """Copy a servable checkpoint into the BentoML model store as `name`; returns (tag, created).

    Skips the copy (created=False) when the latest `name` already holds the same weights, unless `force`.
    """
    import bentoml

    check_model_name(name)
    module, meta = load(checkpoint, "cpu")  # the weights must rebuild, not just parse
    del module
    kind = meta.get("kind")
    if kind not in (*KINDS, CLASSIFIER):  # a classifier is stored for augmentation jobs' selection
        raise ValueError(f"{checkpoint} is a {kind!r} checkpoint; the store takes {[*KINDS, CLASSIFIER]}")
    digest = file_hash(checkpoint)
    latest = stored(name)
    stale_d = discriminator_path(checkpoint).is_file() and not (
        latest is not None and discriminator_path(latest.path).is_file())  # a D exported after G: store it too
    if latest is not None and latest.info.labels.get("sha256") == digest and not force and not stale_d:
        return str(latest.tag), False
    metadata = {**_plain(meta), "sha256": digest, "source": str(Path(checkpoint).resolve())}
    with bentoml.models.create(name, labels={"kind": kind, "sha256": digest}, metadata=metadata) as ref:
        shutil.copyfile(weights_path(checkpoint), Path(ref.path) / WEIGHTS_NAME)
        if discriminator_path(checkpoint).is_file():  # optional: augmentation jobs' d_keep_fraction filter
            shutil.copyfile(discriminator_path(checkpoint), discriminator_path(ref.path))
    return str(ref.tag), True
