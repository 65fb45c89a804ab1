"""Paired data for image-to-image training, three ways:

1. `aligned`: pix2pix's format, each file holds A and B side by side, under train/ val/ test/;
2. `folders`: two folders A/ and B/ with matching file names (optionally under train/ val/ test/);
3. a derivation name (`edges`, `downsample`, `mask`, `grayscale`): sources derived deterministically
   from any image dataset's images (the targets), see models/derivations.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.derivations import DERIVATIONS, derive, source_channels

from .data import ImageData, load_dataset, prepare

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
FORMATS = ("aligned", "folders", *DERIVATIONS)


@dataclass
class PairedData:
    targets: torch.Tensor  # uint8 (N, Ct, H, W)
    sources: torch.Tensor | None  # uint8 (N, Cs, H, W); None when derived from the targets on the fly
    labels: torch.Tensor | None  # int64 (N,) when the underlying dataset has classes
    class_names: list[str]
    derivation: str | None
    name: str

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def target_channels(self) -> int:
        return int(self.targets.shape[1])

    @property
    def source_channels(self) -> int:
        if self.sources is not None:
            return int(self.sources.shape[1])
        return source_channels(self.derivation, self.target_channels)

    @property
    def native_size(self) -> list[int]:
        return list(self.targets.shape[-2:])

    def batch(self, idx: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, target) float batches in [-1, 1] at the model resolution."""
        target = prepare(self.targets[idx], resolution)
        if self.sources is None:
            return derive(self.derivation, target), target
        return prepare(self.sources[idx], resolution), target


def _read(path: Path, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    from PIL import Image

    img = Image.open(path).convert("RGB" if channels == 3 else "L")
    if size is not None and img.size != size:
        img = img.resize(size, Image.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({sorted(IMAGE_SUFFIXES)}) in {folder}")
    return files


def _split_folder(root: Path, split: str) -> Path:
    for name in (split, "val" if split == "test" else split):
        if (root / name).is_dir():
            return root / name
    return root


def load_aligned(root: str, split: str, resolution: int, channels: tuple[int, int], direction: str) -> PairedData:
    """pix2pix 'aligned' files: the left half is A, the right half B; direction AtoB or BtoA."""
    folder = _split_folder(Path(root), split)
    a_list, b_list = [], []
    for path in _files(folder):
        from PIL import Image

        with Image.open(path) as img:
            w, h = img.size
            if w % 2:
                raise ValueError(f"{path}: aligned pairs need an even width (A|B side by side), got {w}")
            halves = [img.crop((0, 0, w // 2, h)), img.crop((w // 2, 0, w, h))]
        for half, out, ch in zip(halves, (a_list, b_list), channels):
            half = half.convert("RGB" if ch == 3 else "L").resize((resolution, resolution), Image.BICUBIC)
            arr = np.asarray(half, dtype=np.uint8)
            out.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    a, b = torch.from_numpy(np.stack(a_list)), torch.from_numpy(np.stack(b_list))
    src, tgt = (a, b) if direction == "AtoB" else (b, a)
    return PairedData(tgt, src, None, [], None, "aligned")


def load_folders(root: str, split: str, resolution: int, channels: tuple[int, int], direction: str) -> PairedData:
    """Two folders A/ and B/ whose files pair up by name."""
    base = _split_folder(Path(root), split)
    if not (base / "A").is_dir() or not (base / "B").is_dir():
        raise ValueError(f"paired folders need {base / 'A'} and {base / 'B'}")
    a_files = {p.stem: p for p in _files(base / "A")}
    b_files = {p.stem: p for p in _files(base / "B")}
    missing = sorted(set(a_files) ^ set(b_files))
    if missing:
        raise ValueError(f"A/ and B/ must hold the same file names; unmatched: {missing[:5]}")
    size = (resolution, resolution)
    names = sorted(a_files)
    a = torch.from_numpy(np.stack([_read(a_files[n], channels[0], size) for n in names]))
    b = torch.from_numpy(np.stack([_read(b_files[n], channels[1], size) for n in names]))
    src, tgt = (a, b) if direction == "AtoB" else (b, a)
    return PairedData(tgt, src, None, [], None, "folders")


def load_paired(paired: str, name: str, split: str, root: str | None, resolution: int,
                channels: int | None = None, source_channels_: int | None = None,
                direction: str = "AtoB") -> PairedData:
    """Paired data by format: 'aligned', 'folders', or a derivation applied to dataset `name`."""
    if direction not in ("AtoB", "BtoA"):
        raise ValueError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
    if paired in ("aligned", "folders"):
        if not root:
            raise ValueError(f"paired format {paired!r} needs data.root")
        chans = (source_channels_ or channels or 3, channels or 3)
        if direction == "BtoA":
            chans = chans[::-1]
        loader = load_aligned if paired == "aligned" else load_folders
        return loader(root, split, resolution, chans, direction)
    if paired not in DERIVATIONS:
        raise ValueError(f"unknown paired format {paired!r}; allowed: {list(FORMATS)}")
    data: ImageData = load_dataset(name, split, root, resolution, channels)
    source_channels(paired, data.images.shape[1])  # validates the derivation fits the data
    if paired == "grayscale" and data.images.shape[1] != 3:
        raise ValueError(f"the 'grayscale' derivation needs RGB data; {name} has {data.images.shape[1]} channel(s)")
    return PairedData(data.images, None, data.labels, data.class_names, paired, name)
