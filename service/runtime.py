"""What the service does with a model once it is out of the store: device and dtype, counters, PNG in/out.

Sampling itself is `models.sampling` (the same code as `ganforge sample`), so a seed means the same image
over HTTP as on the command line.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import io
import logging
import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from models import load
from models.checkpoint import file_hash
from models import sampling
from models.sampling import generate, pick_device, to_uint8

logger = logging.getLogger("ganforge.service")

KINDS = ("conditional", "image-to-image")
# Low precision is kept only if, on a fixed probe batch, its uint8 output stays this close to float32's.
MAX_MEAN_LEVEL_DIFF = 1.0  # grey levels, averaged over pixels
MAX_LEVEL_DIFF = 24  # grey levels, worst pixel (GAN outputs sit on tanh edges; a few pixels move)
PROBE_SIZE = 8
# `auto` also times each accurate candidate against float32 on a TIMING_SIZE batch and keeps it only if it is
# MIN_SPEEDUP times as fast: small GANs are launch-bound, and on an H100 float16 was slower than float32.
AUTO_CANDIDATES = {"cuda": (torch.float16, torch.bfloat16), "mps": (torch.float16,)}
TIMING_SIZE = 64
MIN_SPEEDUP = 1.1

UPLOAD_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")  # no EPS/PSD/...: some decoders run external tools
UPLOAD_MODES = {"1": "L", "L": "L", "LA": "L", "P": "RGB", "RGB": "RGB", "RGBA": "RGB"}  # accepted -> decoded


class UploadError(ValueError):
    """An uploaded file that is not an acceptable image; the message says why."""


@dataclass
class Served:
    """A loaded model: module on its device in its dtype, checkpoint metadata, per-worker counters."""

    name: str
    tag: str
    module: nn.Module
    meta: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    precision_check: dict[str, Any]
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
            "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
            "precision_check": self.precision_check, "forward_passes": self.forward_passes, "images": self.images,
        }


class OnlineGate:
    """Counts online requests in flight, so that background jobs can give way to them.

    Online handlers hold `online()` while they wait for their images; a job calls `wait_idle` before each
    of its (small) forward passes and so starts none while an online request is in flight, nor within
    `quiet_s` seconds after the last one ended (a client sending one request after another leaves gaps of a
    few ms; a job batch started in every gap would add its whole duration to every request). It waits at
    most `timeout` seconds, so that a saturated server still makes some job progress.
    """

    def __init__(self, quiet_s: float = 0.0) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._last_end = -math.inf
        self.quiet_s = quiet_s

    @property
    def active(self) -> int:
        return self._active

    @contextlib.contextmanager
    def online(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._last_end = time.monotonic()
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no online request has been in flight for `quiet_s` seconds (True) or `timeout` seconds
        pass (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                quiet_left = self.quiet_s - (now - self._last_end)
                if not self._active and quiet_left <= 0:
                    return True
                if now >= deadline:
                    return False
                self._cond.wait(deadline - now if self._active else min(deadline - now, quiet_left))


def _probe(module: nn.Module, meta: dict[str, Any], size: int = PROBE_SIZE) -> np.ndarray:
    """A fixed uint8 batch from the model, to compare dtypes on."""
    if meta["kind"] == "conditional":
        labels = [i % module.num_classes for i in range(size)]
        return to_uint8(generate(module, labels, list(range(size))), meta)
    r = int(meta.get("img_resolution", 32))
    channels = int(meta.get("task", {}).get("source_channels", 1))
    shape = (size, r, r) if channels == 1 else (size, r, r, channels)
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    return sampling.translate(module, images, meta)


def _seconds(module: nn.Module, meta: dict[str, Any], repeats: int = 5) -> float:
    """Median wall time of one TIMING_SIZE batch to uint8 on the host (the copy waits for the device)."""
    _probe(module, meta, TIMING_SIZE)  # warm-up: kernel selection, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _probe(module, meta, TIMING_SIZE)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def choose_dtype(module: nn.Module, meta: dict[str, Any], device: torch.device,
                 requested: str) -> tuple[nn.Module, torch.dtype, dict[str, Any]]:
    """The module in the dtype to serve with, that dtype, and the evidence for it.

    `auto` tries float16 then bfloat16 on CUDA (float16 first: more mantissa for pixel values) and float32
    elsewhere. Any low-precision candidate, automatic or requested, must reproduce float32's probe images
    within MAX_MEAN_LEVEL_DIFF / MAX_LEVEL_DIFF grey levels with no NaN, or the float32 module is kept.
    `auto` also keeps a candidate only if it is MIN_SPEEDUP times as fast as float32 (timed here); a
    requested dtype is served whatever its speed.
    """
    timed = requested == "auto"  # only `auto` weighs speed
    if timed:
        candidates = list(AUTO_CANDIDATES.get(device.type, ()))
    elif requested == "float32":
        candidates = []
    else:
        candidates = [getattr(torch, requested)]
    if not candidates:
        return module, torch.float32, {"requested": requested, "checked": False}
    reference = _probe(module, meta).astype(np.int16)
    tried: list[dict[str, Any]] = []
    float32_seconds = None
    for dtype in candidates:
        low = copy.deepcopy(module).to(dtype)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # NaN casts are what the check is for
                diff = np.abs(_probe(low, meta).astype(np.int16) - reference)
        except RuntimeError as e:  # op not implemented for this dtype on this device
            tried.append({"dtype": str(dtype).removeprefix("torch."), "error": str(e).splitlines()[0]})
            continue
        result = {"dtype": str(dtype).removeprefix("torch."), "mean_level_diff": round(float(diff.mean()), 4),
                  "max_level_diff": int(diff.max())}
        tried.append(result)
        if result["mean_level_diff"] > MAX_MEAN_LEVEL_DIFF or result["max_level_diff"] > MAX_LEVEL_DIFF:
            continue
        if not timed:
            return low, dtype, {"requested": requested, "checked": True, "tried": tried}
        if float32_seconds is None:
            float32_seconds = _seconds(module, meta)
        result["seconds"] = round(_seconds(low, meta), 6)
        if result["seconds"] * MIN_SPEEDUP <= float32_seconds:
            return low, dtype, {"requested": requested, "checked": True, "tried": tried,
                                "float32_seconds": round(float32_seconds, 6)}
        result["slower"] = True  # accurate, but not worth it: try the next one
    check = {"requested": requested, "checked": True, "tried": tried, "fallback": "float32"}
    if float32_seconds is not None:
        check["float32_seconds"] = round(float32_seconds, 6)
    if any(not t.get("slower") for t in tried):
        logger.warning("%s: low precision rejected (%s); serving float32", meta.get("architecture"), tried)
    return module, torch.float32, check


def load_served(name: str, stored_model: Any, device_name: str = "auto", dtype_name: str = "auto") -> Served:
    """Load a store model (a `bentoml.Model`) onto the chosen device, in the safest fast dtype."""
    if stored_model is None:
        raise FileNotFoundError(f"model {name!r} is not in the BentoML model store; "
                                f"run `ganforge export CHECKPOINT --name {name}` or change GANFORGE_MODELS")
    device = pick_device(device_name)
    module, meta = load(stored_model.path, device)
    if meta.get("kind") not in KINDS:
        raise ValueError(f"store model {stored_model.tag} is a {meta.get('kind')!r} checkpoint; "
                         f"the service serves {list(KINDS)}")
    if meta["kind"] == "image-to-image" and not hasattr(sampling, "translate"):
        raise ValueError(f"{stored_model.tag} is image-to-image but this ganforge has no models.sampling.translate")
    store_metadata = dict(stored_model.info.metadata)
    store_metadata.setdefault("sha256", file_hash(stored_model.path))  # jobs record the exact weights
    module, dtype, check = choose_dtype(module, meta, device, dtype_name)
    _probe(module, meta)  # warm-up: the first request should not pay for kernel selection
    return Served(name=name, tag=str(stored_model.tag), module=module, meta=meta, device=device, dtype=dtype,
                  precision_check=check, store_metadata=store_metadata)


def render(served: Served, labels: list[int], seeds: list[int], truncation: float | None) -> np.ndarray:
    """uint8 images (N, H, W[, C]) from one forward pass through `models.sampling.generate`."""
    images = to_uint8(generate(served.module, labels, seeds, truncation), served.meta)
    served.count(len(labels))
    return images


def translate(served: Served, image: np.ndarray, derive: bool) -> np.ndarray:
    """One uint8 image (H, W[, C]) through an image-to-image model, same size out."""
    out = sampling.translate(served.module, image[None], served.meta, derive_source=derive)
    served.count(1)
    return out[0]


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """PNG of a uint8 (H, W) or (H, W, C) array, optionally upscaled by an integer factor (nearest)."""
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)  # speed over a few bytes
    return buf.getvalue()


def png_b64(image: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def raw_b64(image: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).decode("ascii")


def from_raw_b64(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.uint8).reshape(shape)


def read_upload(path: Path, max_bytes: int, max_pixels: int, max_side: int) -> np.ndarray:
    """Decode an uploaded image to uint8 (H, W) or (H, W, 3), checking size before decoding any pixel."""
    size = path.stat().st_size
    if size == 0:
        raise UploadError("the uploaded file is empty")
    if size > max_bytes:
        raise UploadError(f"the uploaded file has {size} bytes; the limit is {max_bytes}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path, formats=UPLOAD_FORMATS)
        except Exception as e:  # UnidentifiedImageError, DecompressionBombError, and whatever a decoder throws
            raise UploadError(f"not a readable image (accepted formats: {list(UPLOAD_FORMATS)}): "
                              f"{type(e).__name__}") from None
        with im:
            w, h = im.size  # from the header: nothing decoded yet
            if w * h > max_pixels or max(w, h) > max_side or min(w, h) < 1:
                raise UploadError(f"the image is {w}x{h} = {w * h} pixels; the limits are {max_pixels} pixels "
                                  f"and {max_side} per side")
            if im.mode not in UPLOAD_MODES:
                raise UploadError(f"image mode {im.mode!r} is not supported; send one of {sorted(UPLOAD_MODES)} "
                                  "(8-bit grey, palette or RGB, alpha is dropped)")
            try:
                return np.array(im.convert(UPLOAD_MODES[im.mode]))  # writable: torch.from_numpy needs it
            except Exception as e:
                raise UploadError(f"the image is corrupt or truncated: {type(e).__name__}") from None
