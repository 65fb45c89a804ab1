"""A model once it is out of the store: loaded onto its device, run by the inference backend chosen for it
(`backends.choose`), with its metadata and per-worker counters, and the two things the service does with it
(render, translate).

Sampling itself is `models.sampling` (the same code as `ganforge sample`); the backend only replaces the
module's forward pass. So a seed means the same image over HTTP as on the command line, bit for bit on the
same backend and within the backends' precision tolerance across them (docs/deploy.md).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from backends import Selection, choose
from backends.select import probe
from models import load, sampling
from models.checkpoint import GENERATOR_KINDS, file_hash
from models.sampling import generate, pick_device, to_uint8

logger = logging.getLogger("ganforge.service")

KINDS = GENERATOR_KINDS  # the checkpoint kinds the service serves (`ganforge export` also stores classifiers)
LOW_DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float16": torch.float16}  # GANFORGE_DTYPE -> autocast's


@dataclass
class Served:
    """A loaded model: float32 module on its device, the backend that runs it, checkpoint metadata, counters."""

    name: str
    tag: str
    module: nn.Module
    meta: dict[str, Any]
    device: torch.device
    backend: Selection
    store_metadata: dict[str, Any] = field(default_factory=dict)
    forward_passes: int = 0
    images: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def count(self, images: int) -> None:
        with self._lock:
            self.forward_passes += 1
            self.images += images

    def info(self) -> dict[str, Any]:
        """The /models entry."""
        m = self.meta
        return {
            "name": self.name, "tag": self.tag, "kind": self.kind, "architecture": m["architecture"],
            "class_names": m.get("class_names"), "task": m.get("task"),
            "img_resolution": m.get("img_resolution", getattr(self.module, "img_resolution", 0)),
            "img_channels": m.get("img_channels", getattr(self.module, "img_channels", 0)),
            "native_size": m.get("native_size"), "provenance": m.get("provenance", {}),
            "metrics": m.get("metrics", {}), "sha256": self.store_metadata.get("sha256"),
            "device": str(self.device), "dtype": self.backend.precision, "backend": self.backend.describe(),
            "precision_check": self.backend.report, "forward_passes": self.forward_passes, "images": self.images,
        }


def batch_sizes(kind: str, max_batch_size: int, job_batch_size: int) -> tuple[int, ...]:
    """The batch sizes a served model really runs, which `auto` times: one image (a lone request; every
    /translate), the batcher's merged batches (8 and its maximum), and the jobs' batch."""
    if kind != "conditional":
        return (1,)
    return tuple(sorted({1, min(8, max_batch_size), max_batch_size, job_batch_size}))


class ModelMismatch(ValueError):
    """A store model whose weights are not the ones recorded at export (damaged, truncated or replaced)."""


def verify(name: str, stored_model: Any) -> str:
    """The sha256 of the store model's weights file, checked against the one `ganforge export` recorded.

    Reads the whole file (a few MB for these models; streamed in 1 MiB pieces, so large ones cost time, not
    memory). A truncated or altered file fails here, naming the model and both hashes, before anything loads.
    """
    if stored_model is None:
        raise FileNotFoundError(f"model {name!r} is not in the BentoML model store; "
                                f"run `ganforge export CHECKPOINT --name {name}` or change GANFORGE_MODELS")
    recorded = stored_model.info.metadata.get("sha256") or stored_model.info.labels.get("sha256")
    try:
        actual = file_hash(stored_model.path)
    except OSError as e:
        raise ModelMismatch(f"model {name!r} ({stored_model.tag}): cannot read its weights: {e}") from None
    if recorded is None:
        raise ModelMismatch(f"model {name!r} ({stored_model.tag}) has no recorded sha256 to check its weights "
                            f"against; export it again: ganforge export CHECKPOINT --name {name} --force")
    if actual != recorded:
        raise ModelMismatch(f"model {name!r} ({stored_model.tag}): its weights have sha256 {actual}, but "
                            f"{recorded} was recorded at export; the store copy is damaged or was replaced. "
                            f"Export it again: ganforge export CHECKPOINT --name {name} --force")
    return actual


def load_served(name: str, stored_model: Any, device_name: str = "auto", backend_name: str = "auto",
                dtype_name: str = "auto", max_batch_size: int = 64, job_batch_size: int = 32) -> Served:
    """Load a store model (a `bentoml.Model`) onto the chosen device, after checking its weights against their
    recorded hash (`verify`), and choose its backend (`backends.choose`; `auto` times the candidates at
    `batch_sizes(kind, max_batch_size, job_batch_size)`)."""
    digest = verify(name, stored_model)
    device = pick_device(device_name)
    module, meta = load(stored_model.path, device)
    if meta.get("kind") not in KINDS:
        raise ValueError(f"store model {stored_model.tag} is a {meta.get('kind')!r} checkpoint; "
                         f"the service serves {list(KINDS)}")
    store_metadata = {**stored_model.info.metadata, "sha256": digest}  # what jobs record: the weights loaded
    if dtype_name == "float32" and backend_name == "torch-autocast":
        raise ValueError("GANFORGE_BACKEND=torch-autocast runs in a low precision; GANFORGE_DTYPE=float32 "
                         "leaves it none (use GANFORGE_BACKEND=torch, or GANFORGE_DTYPE=auto|bfloat16|float16)")
    candidates = None if dtype_name != "float32" else ["torch", "onnxruntime"]  # float32 only
    sizes = batch_sizes(meta["kind"], max_batch_size, job_batch_size)
    selection = choose(module, meta, device, backend_name, sizes,
                       low_dtype=LOW_DTYPES.get(dtype_name), candidates=candidates)
    for backend in selection.backends.values():
        probe(backend, meta)  # warm-up: the first request should not pay for kernel selection
    return Served(name=name, tag=str(stored_model.tag), module=module, meta=meta, device=device,
                  backend=selection, store_metadata=store_metadata)


def render(served: Served, labels: list[int], seeds: list[int], truncation: float | None) -> np.ndarray:
    """uint8 images (N, H, W[, C]) from one forward pass through `models.sampling.generate`."""
    images = to_uint8(generate(served.backend, labels, seeds, truncation), served.meta)
    served.count(len(labels))
    return images


def translate(served: Served, image: np.ndarray, derive: bool) -> np.ndarray:
    """One uint8 image (H, W[, C]) through an image-to-image model, same size out."""
    out = sampling.translate(served.backend, image[None], served.meta, derive_source=derive)
    served.count(1)
    return out[0]
