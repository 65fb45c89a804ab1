"""Self-describing checkpoints: safetensors weights + JSON metadata in the same file.

A checkpoint is either a `.safetensors` file or a folder holding `model.safetensors` (plus, for humans,
the run's config, command, report and sample grid). The file's safetensors header carries
`{"ganforge": <json>}` with the format version, architecture name and config, class names, image
geometry, normalisation and provenance, so `load(path)` rebuilds the module from the file alone.
Nothing is unpickled.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "ganforge"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
DISCRIMINATOR_NAME = "discriminator.safetensors"  # a run's D beside its exported G (never needed to serve G)

# The metadata contract: what a checkpoint is, how its pixels map to the network's range, and its geometry.
CONDITIONAL = "conditional"  # noise + class label -> image
IMAGE_TO_IMAGE = "image-to-image"  # source image -> target image (pix2pix)
CLASSIFIER = "classifier"  # image -> class logits (the domain classifier of the evaluation)
DISCRIMINATOR = "discriminator"  # (image, condition) -> realism logit: a run's D, exported beside its G on request
KINDS = (CONDITIONAL, IMAGE_TO_IMAGE, CLASSIFIER, DISCRIMINATOR)
GENERATOR_KINDS = (CONDITIONAL, IMAGE_TO_IMAGE)  # the kinds `models.sampling` draws from (and the service serves)
NORMALIZATION = {"mean": 0.5, "std": 0.5}  # x = (u8 / 255 - mean) / std  ->  [-1, 1]
# What a reader assumes for a field an older or hand-made checkpoint does not carry.
DEFAULT_RESOLUTION = 32
DEFAULT_CHANNELS = 1


def build_metadata(kind: str, class_names: Sequence[str], img_resolution: int, img_channels: int,
                   native_size: Sequence[int], task: dict[str, Any] | None = None,
                   provenance: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                   normalization: dict[str, float] = NORMALIZATION) -> dict[str, Any]:
    """The metadata `save` stores with a checkpoint of `kind`: classes, geometry (model resolution and channels,
    the data's native [H, W]), pixel normalisation, the task's own fields (image-to-image), provenance, metrics."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; allowed: {list(KINDS)}")
    meta: dict[str, Any] = {"kind": kind, "class_names": list(class_names), "img_resolution": int(img_resolution),
                            "img_channels": int(img_channels), "native_size": [int(n) for n in native_size],
                            "normalization": dict(normalization)}
    if task is not None:
        meta["task"] = task
    if provenance is not None:
        meta["provenance"] = provenance
    if metrics is not None:
        meta["metrics"] = metrics
    return meta


def normalization(meta: dict[str, Any]) -> dict[str, float]:
    """The checkpoint's pixel normalisation (`mean`, `std`)."""
    return meta.get("normalization", NORMALIZATION)


def image_geometry(meta: dict[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) of the images the checkpoint's data has: its native size, else the model's."""
    r = int(meta.get("img_resolution", DEFAULT_RESOLUTION))
    h, w = meta.get("native_size") or (r, r)
    return int(meta.get("img_channels", DEFAULT_CHANNELS)), int(h), int(w)


def model_resolution(meta: dict[str, Any]) -> int:
    """The side of the square images the network itself takes or makes."""
    return int(meta.get("img_resolution", DEFAULT_RESOLUTION))


def task_channels(meta: dict[str, Any]) -> tuple[int, int]:
    """An image-to-image checkpoint's (source, target) channels."""
    task = meta.get("task") or {}
    return int(task.get("source_channels", DEFAULT_CHANNELS)), int(task.get("target_channels", DEFAULT_CHANNELS))


def require_kind(meta: dict[str, Any], kind: str, what: str | os.PathLike, user: str = "this command") -> None:
    """ValueError naming both kinds unless the checkpoint `what` is of `kind`, which `user` needs."""
    if meta.get("kind") != kind:
        raise ValueError(f"{what} is a {meta.get('kind')!r} checkpoint; {user} needs a {kind!r} one")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def weights_path(path: str | os.PathLike) -> Path:
    """The safetensors file of a checkpoint given as a file or a folder."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def discriminator_path(checkpoint: str | os.PathLike) -> Path:
    """Where a generator checkpoint's discriminator lives: `discriminator.safetensors` in its folder, or
    `NAME.discriminator.safetensors` beside a `NAME.safetensors` file (it may not exist)."""
    path = Path(checkpoint)
    if path.suffix == ".safetensors":
        return path.with_name(path.stem + "." + DISCRIMINATOR_NAME)
    return path / DISCRIMINATOR_NAME


def build(architecture: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate a registered architecture from its config dict; unknown names or fields raise ValueError."""
    from . import ARCHITECTURES

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[architecture]
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = set(config) - fields
    if unknown:
        raise ValueError(f"unknown {architecture} config field(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    return cls(cls.config_class(**config))


def save(module: nn.Module, path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write `module`'s weights and self-description to `path` (a .safetensors file, or a folder) atomically."""
    from . import ARCHITECTURES

    module = getattr(module, "_orig_mod", module)  # torch.compile wrapper: save the real module
    name = type(module).__name__
    if ARCHITECTURES.get(name) is not type(module):
        raise ValueError(f"{name} is not a registered architecture; known: {sorted(ARCHITECTURES)}")
    meta = dict(metadata)
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, architecture=name,
                config=dataclasses.asdict(module.config))
    path = Path(path)
    target = path if path.suffix == ".safetensors" else path / WEIGHTS_NAME
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    header = {FORMAT: json.dumps(meta, sort_keys=True)}
    return atomic_write(target, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's metadata dict, validated; raises ValueError for corrupt or foreign files."""
    file = weights_path(path)
    try:
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{file} is not a readable safetensors checkpoint (corrupt or truncated?): {e}") from None
    if FORMAT not in header:
        raise ValueError(f"{file} is a safetensors file but not a ganforge checkpoint (no '{FORMAT}' metadata)")
    try:
        meta = json.loads(header[FORMAT])
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} has corrupt ganforge metadata: {e}") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{file} has checkpoint format_version {version!r}; this ganforge reads {FORMAT_VERSION}")
    return meta


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the module described by the checkpoint at `path`, load its weights, return (module.eval(), metadata).
    On the CPU the module's convolution weights are channels-last."""
    meta = read_metadata(path)
    file = weights_path(path)
    module = build(meta["architecture"], meta["config"])
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{file}: cannot read weights (corrupt or truncated?): {e}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ValueError(f"{file}: weights do not match {meta['architecture']} with its config: {first}") from None
    return to_device(module, device).eval(), meta


def to_device(module: nn.Module, device: str | torch.device) -> nn.Module:
    """`module` on `device`, on the CPU with its convolution weights channels-last: oneDNN's fast layout, in
    which the bundled models sample 1.1-1.75x and the cGAN trains 1.2x faster (benchmarks/RESULTS.md). Only
    4-D weights change, and `save` writes contiguous tensors regardless."""
    module = module.to(device)
    return module.to(memory_format=torch.channels_last) if torch.device(device).type == "cpu" else module


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of the checkpoint's weights file (identifies the exact model in manifests)."""
    h = hashlib.sha256()
    with open(weights_path(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
