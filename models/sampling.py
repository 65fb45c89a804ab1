"""Seeds -> noise -> images: the one sampling path shared by the CLI, the augmentation jobs and the service.

Image i of a request with seed s is drawn from noise seeded with s + i, so any single image can be
reproduced alone (`seed = s + i, n = 1`), and merging requests into one batch never changes the noise.
(The float arithmetic of a different batch size can still move a few pixels by one grey level.)
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import image_geometry, model_resolution, normalization, task_channels

MAX_SEED = 2**63 - 1


def pick_device(name: str = "auto") -> torch.device:
    """`auto` -> CUDA if available, else MPS, else CPU; any other value is passed to torch.device."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def class_aliases(class_names: Sequence[str]) -> dict[str, int]:
    """Accepted spellings -> index: the name without case/punctuation, and each '/'-separated part ("tshirt")."""
    aliases: dict[str, int] = {}
    for i, name in enumerate(class_names):
        for key in [name, *name.split("/")]:
            aliases.setdefault(_norm(key), i)
    return aliases


def class_index(class_names: Sequence[str], value: str | int) -> int:
    """Resolve a class given by index or name (case-insensitive, aliases allowed); ValueError lists valid ones."""
    n = len(class_names)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= int(value) < n:
            return int(value)
        raise ValueError(f"class index {value} out of range 0..{n - 1}; classes: {list(class_names)}")
    text = str(value).strip()
    if text.isascii() and text.isdigit():  # "²".isdigit() is True but int("²") fails
        return class_index(class_names, int(text))
    idx = class_aliases(class_names).get(_norm(text))
    if idx is None or not _norm(text):
        raise ValueError(f"unknown class {value!r}; valid classes: {list(class_names)} (or an index 0..{n - 1})")
    return idx


def noise(seeds: Sequence[int], z_dim: int, truncation: float | None = None) -> torch.Tensor:
    """(len(seeds), z_dim) standard normal noise, one generator per seed; |z| > truncation is resampled."""
    if truncation is not None and not truncation > 0:
        raise ValueError(f"truncation must be > 0 (or None), got {truncation}")
    out = torch.empty(len(seeds), z_dim)
    gen = torch.Generator()
    for i, seed in enumerate(seeds):
        if not 0 <= int(seed) <= MAX_SEED:
            raise ValueError(f"seed must be in 0..{MAX_SEED}, got {seed}")
        gen.manual_seed(int(seed))
        z = torch.randn(z_dim, generator=gen)
        if truncation is not None:
            bad = z.abs() > truncation
            while bad.any():  # truncated normal by rejection; deterministic given the seed
                z[bad] = torch.randn(int(bad.sum()), generator=gen)
                bad = z.abs() > truncation
        out[i] = z
    return out


def placement(generator: Any) -> tuple[torch.device, torch.dtype]:
    """Device and dtype `generator` takes its inputs in: a module's parameters', else the host in float32 (an
    inference backend from `backends/` stands in for the module and moves its inputs itself)."""
    param = next(generator.parameters(), None) if isinstance(generator, nn.Module) else None
    return (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)


@torch.no_grad()
def generate(
    generator: nn.Module,
    labels: Sequence[int] | torch.Tensor,
    seeds: Sequence[int],
    truncation: float | None = None,
) -> torch.Tensor:
    """Images in [-1, 1], (B, C, R, R) float32 on CPU, for the given class indices and per-image seeds.
    `generator`: the module, or a backend standing in for its forward pass."""
    device, dtype = placement(generator)
    z = noise(seeds, generator.z_dim, truncation).to(device)
    y = torch.as_tensor(labels, dtype=torch.long, device=device)
    return generator(z.to(dtype), y).float().cpu()


def to_uint8(images: torch.Tensor, meta: dict[str, Any]) -> np.ndarray:
    """[-1, 1] model output -> uint8 at the data's native size: (N, H, W) for 1 channel, (N, H, W, C) otherwise."""
    norm = normalization(meta)
    x = images * norm["std"] + norm["mean"]
    h, w = meta.get("native_size") or images.shape[-2:]
    top, left = (images.shape[-2] - h) // 2, (images.shape[-1] - w) // 2
    x = x[..., top : top + h, left : left + w]
    arr = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def image_shape(meta: dict[str, Any]) -> tuple[int, ...]:
    """Shape of one image `to_uint8` gives for a generator's output: (H, W) or (H, W, C), at the data's native
    size (`native_size`, else the model resolution)."""
    c, h, w = image_geometry(meta)
    return (h, w) if c == 1 else (h, w, c)


def from_uint8(images: np.ndarray, meta: dict[str, Any]) -> torch.Tensor:
    """Inverse of `to_uint8` without the crop: uint8 (N, H, W[, C]) -> normalised float (N, C, H, W)."""
    norm = normalization(meta)
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float() / 255  # a copy: inputs may be read-only
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return (x - norm["mean"]) / norm["std"]


def to_network(images: np.ndarray, meta: dict[str, Any]) -> torch.Tensor:
    """Inverse of `to_uint8`: uint8 images at the data's native size -> normalised (N, C, R, R) at the model's
    resolution, centred on a black border (how 28x28 data is padded to 32 for training)."""
    x = from_uint8(images, meta)
    r = model_resolution(meta)
    h, w = x.shape[-2:]
    if h > r or w > r:
        raise ValueError(f"images of {h}x{w} do not fit the model's {r}x{r}")
    top, left = (r - h) // 2, (r - w) // 2
    black = -normalization(meta)["mean"] / normalization(meta)["std"]
    return torch.nn.functional.pad(x, (left, r - w - left, top, r - h - top), value=black)


def grid(images: np.ndarray, nrow: int, pad: int = 2) -> np.ndarray:
    """Tile uint8 images (N, H, W[, C]) into one (rows*H, nrow*W[, C]) image, row-major."""
    n, h, w = images.shape[:3]
    rows = -(-n // nrow)
    shape = (rows * (h + pad) + pad, nrow * (w + pad) + pad) + images.shape[3:]
    out = np.full(shape, 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return out


@torch.no_grad()
def translate(generator: nn.Module, images: np.ndarray, meta: dict[str, Any], derive_source: bool = False,
              batch_size: int = 64) -> np.ndarray:
    """Image-to-image: uint8 sources (N, H, W) or (N, H, W, C) of any size -> uint8 outputs of the same size.

    Inputs are padded (replicate) to a multiple of the network's stride and cropped back. With
    `derive_source`, the images are targets-like pictures and the checkpoint's stored derivation
    (e.g. `edges`) turns them into the model's input first.
    """
    from .derivations import derive

    task = meta.get("task", {})
    source, target = task_channels(meta)
    want = target if derive_source else source
    x = from_uint8(images, meta)
    if x.shape[1] != want:  # grey <-> RGB by luma or replication
        x = x.mean(1, keepdim=True) if want == 1 else x.expand(-1, want, -1, -1)
    if derive_source:
        if not task.get("derivation"):
            raise ValueError("this checkpoint stores no derivation; send the model's input image itself")
        x = derive(task["derivation"], x)
    h, w = x.shape[-2:]
    stride = getattr(generator, "stride", 1)
    ph, pw = (-h) % stride, (-w) % stride
    top, left = ph // 2, pw // 2
    if ph or pw:
        x = torch.nn.functional.pad(x, (left, pw - left, top, ph - top), mode="replicate")
    device, dtype = placement(generator)
    outs = [generator(x[i : i + batch_size].to(device, dtype)).float().cpu() for i in range(0, len(x), batch_size)]
    y = torch.cat(outs)[..., top : top + h, left : left + w]
    return to_uint8(y, {**meta, "native_size": [h, w]})
