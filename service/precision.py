"""Which dtype a loaded model is served in: float32, or a low precision checked to reproduce float32's images
(and, for `auto`, timed to be worth it)."""
from __future__ import annotations

import copy
import logging
import time
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from models import sampling
from models.sampling import generate, to_uint8

logger = logging.getLogger("ganforge.service")

# Low precision is kept only if, on a fixed probe batch, its uint8 output stays this close to float32's.
MAX_MEAN_LEVEL_DIFF = 1.0  # grey levels, averaged over pixels
MAX_LEVEL_DIFF = 24  # grey levels, worst pixel (GAN outputs sit on tanh edges; a few pixels move)
PROBE_SIZE = 8
# `auto` also times each accurate candidate against float32 on a TIMING_SIZE batch and keeps it only if it is
# MIN_SPEEDUP times as fast: small GANs are launch-bound, and on an H100 float16 was slower than float32.
AUTO_CANDIDATES = {"cuda": (torch.float16, torch.bfloat16), "mps": (torch.float16,)}
TIMING_SIZE = 64
MIN_SPEEDUP = 1.1


def probe(module: nn.Module, meta: dict[str, Any], size: int = PROBE_SIZE) -> np.ndarray:
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
    probe(module, meta, TIMING_SIZE)  # warm-up: kernel selection, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        probe(module, meta, TIMING_SIZE)
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
    reference = probe(module, meta).astype(np.int16)
    tried: list[dict[str, Any]] = []
    float32_seconds = None
    for dtype in candidates:
        low = copy.deepcopy(module).to(dtype)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # NaN casts are what the check is for
                diff = np.abs(probe(low, meta).astype(np.int16) - reference)
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
