"""Datasets held in memory as uint8 tensors at their native size, and their preparation for a model.

Every loader returns `ImageData`: `images` uint8 (N, C, H, W), `labels` int64 (N,), `class_names`.
`prepare` turns a uint8 batch into the model's input: channels converted, padded (28 -> 32, so
sampling can crop back without resampling) or resized to the model resolution, scaled to [-1, 1].
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoint import NORMALIZATION

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SHAPES_CLASSES = ["circle", "square", "triangle", "cross"]
SPLITS = ("train", "test")


@dataclass
class ImageData:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    class_names: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def native_size(self) -> list[int]:
        return list(self.images.shape[-2:])


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed), the MNIST family's on-disk format."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} bytes")
    return body.reshape(shape)


def _fashion_mnist(root: str | None, split: str) -> ImageData:
    prefix = "train" if split == "train" else "t10k"
    folder = Path(root) if root else FASHION_MNIST_DIR
    files = [folder / f"{prefix}-{kind}-idx{n}-ubyte{ext}" for kind, n in (("images", 3), ("labels", 1))
             for ext in (".gz", "")]
    images_file = next((f for f in files[:2] if f.exists()), None)
    labels_file = next((f for f in files[2:] if f.exists()), None)
    if images_file and labels_file:
        images, labels = read_idx(images_file), read_idx(labels_file)
    else:  # not installed from Debian: torchvision's copy (downloads when the network allows it)
        from torchvision.datasets import FashionMNIST

        ds = FashionMNIST(root or "data", train=split == "train", download=True)
        images, labels = ds.data.numpy(), ds.targets.numpy()
    return ImageData(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)),
                     list(FASHION_MNIST_CLASSES), "fashion-mnist")


def _mnist(root: str | None, split: str) -> ImageData:
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(root or "data", train=split == "train", download=False)
    except RuntimeError:
        ds = MNIST(root or "data", train=split == "train", download=True)
    return ImageData(ds.data[:, None].clone(), ds.targets.long().clone(), list(ds.classes), "mnist")


def _cifar10(root: str | None, split: str) -> ImageData:
    from torchvision.datasets import CIFAR10

    class _CIFAR10(CIFAR10):
        # Check that the batch files exist but not their md5 sums, so re-packed copies load too.
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    folder = root or "data"
    if not (Path(folder) / CIFAR10.base_folder).is_dir():
        _CIFAR10(folder, train=split == "train", download=True)  # fails cleanly offline
    ds = _CIFAR10(folder, train=split == "train", download=False)
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return ImageData(images, torch.as_tensor(ds.targets, dtype=torch.long), list(ds.classes), "cifar10")


def _imagefolder(root: str | None, split: str, resolution: int, channels: int) -> ImageData:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    if not root:
        raise ValueError("dataset 'imagefolder' needs data.root (a folder with one subfolder per class)")
    folder = Path(root) / split if (Path(root) / split).is_dir() else Path(root)
    ds = ImageFolder(str(folder), loader=lambda p: Image.open(p).convert("RGB" if channels == 3 else "L"))
    images = []
    for path, _ in ds.samples:
        img = ds.loader(path)
        scale = resolution / min(img.size)  # shorter side to `resolution`, then centre crop
        w, h = max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))
        img = img.resize((w, h), Image.BICUBIC)
        left, top = (w - resolution) // 2, (h - resolution) // 2
        arr = np.asarray(img.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    if not images:
        raise ValueError(f"no images found under {folder}")
    return ImageData(torch.from_numpy(np.stack(images)), torch.as_tensor(ds.targets, dtype=torch.long),
                     list(ds.classes), "imagefolder")


def make_shapes(n: int, resolution: int = 32, seed: int = 0) -> ImageData:
    """Procedural RGB dataset: a bright circle, square, triangle or cross of random size/place/colour on dark."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:resolution, 0:resolution].astype(np.float32) + 0.5
    labels = rng.integers(0, len(SHAPES_CLASSES), n)
    images = np.empty((n, 3, resolution, resolution), dtype=np.uint8)
    for i, label in enumerate(labels):
        r = rng.uniform(0.22, 0.36) * resolution
        cx, cy = rng.uniform(r, resolution - r, 2)
        dx, dy = xx - cx, yy - cy
        if label == 0:
            mask = dx**2 + dy**2 <= r**2
        elif label == 1:
            mask = (np.abs(dx) <= r * 0.8) & (np.abs(dy) <= r * 0.8)
        elif label == 2:
            mask = (dy <= r * 0.7) & (dy >= -r + 2 * np.abs(dx) * 0.9)
        else:
            mask = ((np.abs(dx) <= r * 0.3) | (np.abs(dy) <= r * 0.3)) & (np.abs(dx) <= r) & (np.abs(dy) <= r)
        colour = rng.uniform(120, 255, 3)
        background = rng.uniform(0, 50, 3)
        img = np.where(mask[None], colour[:, None, None], background[:, None, None])
        images[i] = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return ImageData(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)),
                     list(SHAPES_CLASSES), "shapes")


def _shapes(root: str | None, split: str, resolution: int, channels: int | None) -> ImageData:
    return make_shapes(4000 if split == "train" else 1000, resolution, seed=0 if split == "train" else 1)


# name -> loader(root, split, resolution, channels); the loaders that ignore size and channels get them converted
LOADERS: dict[str, Callable[[str | None, str, int, int | None], ImageData]] = {
    "fashion-mnist": lambda root, split, resolution, channels: _fashion_mnist(root, split),
    "mnist": lambda root, split, resolution, channels: _mnist(root, split),
    "cifar10": lambda root, split, resolution, channels: _cifar10(root, split),
    "imagefolder": lambda root, split, resolution, channels: _imagefolder(root, split, resolution, channels or 3),
    "shapes": _shapes,
}
DATASETS = tuple(LOADERS)


def load_dataset(name: str, split: str = "train", root: str | None = None, resolution: int = 32,
                 channels: int | None = None) -> ImageData:
    """Load a named dataset split into memory. Names: the keys of LOADERS."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {list(SPLITS)}")
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {list(DATASETS)}")
    data = LOADERS[name](root, split, resolution, channels)
    if channels is not None and channels != data.images.shape[1]:
        data.images = convert_channels(data.images, channels)
    return data


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, channels, H, W): RGB -> luma (ITU-R 601), or grey replicated to RGB."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    c = images.shape[1]
    if c == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def geometry(native_size: list[int], resolution: int) -> tuple[str, list[int]]:
    """How native-size images reach `resolution`: ('pad', native) when they fit within it, else ('resize', [R, R])."""
    h, w = native_size
    if h <= resolution and w <= resolution and min(h, w) * 4 >= resolution * 3:
        return "pad", [h, w]
    return "resize", [resolution, resolution]


def prepare(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float (B, C, R, R) in [-1, 1]; pads with black when it fits, else resizes."""
    x = (images.float() / 255 - NORMALIZATION["mean"]) / NORMALIZATION["std"]
    h, w = x.shape[-2:]
    mode, _ = geometry([h, w], resolution)
    if mode == "pad":
        top, left = (resolution - h) // 2, (resolution - w) // 2
        return F.pad(x, (left, resolution - w - left, top, resolution - h - top), value=-1.0)
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
