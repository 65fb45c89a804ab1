"""Decoding an uploaded image safely: size, pixel count and mode are checked before any pixel is decoded."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

UPLOAD_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")  # no EPS/PSD/...: some decoders run external tools
UPLOAD_MODES = {"1": "L", "L": "L", "LA": "L", "P": "RGB", "RGB": "RGB", "RGBA": "RGB"}  # accepted -> decoded


class UploadError(ValueError):
    """An uploaded file that is not an acceptable image; the message says why."""


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
