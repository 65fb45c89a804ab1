"""Map-style datasets read from disk one sample at a time (decoding happens in DataLoader workers).

Every dataset here is indexed by an int or by a sampler key `(index, flip)` and returns
(uint8 (C, H, W), label); its `labels` (int64, in memory: small), `class_names`, `channels`,
`native_size`, `name` and `hflip` (whether horizontal flips are safe: on for photos) describe it.

- `CifarBatches`: CIFAR-10's python version (`data_batch_1..5`, `test_batch`, `batches.meta`). The batch
  files are pickles; they are read with `SafeUnpickler`, which resolves only numpy's array-reconstruction
  functions, so a tampered file cannot run code; the image bytes are then memory-mapped from the file
  (their offset found by walking the pickle's opcodes, no unpickling), not held in RAM.
- `ImageFolderFiles`: `root/<class>/**/<image>` (or `root/train/<class>`, `root/test/<class>`); class names
  are the folder names; each image is decoded, converted to RGB (alpha over white, palette and greyscale
  expanded; or to L), EXIF-rotated, and fitted to the model resolution when it is read.
- `TensorImages`: data already in memory (`training.data.ImageData`: Fashion-MNIST, MNIST, shapes).
"""
from __future__ import annotations

import codecs
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import ImageData, convert_channels

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
FITS = ("crop", "squash", "pad")  # shorter side to R + centre crop | resize to R x R | longer side to R + pad
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white (as image viewers show them)
HOLDOUT_EVERY = 10  # an ImageFolder without train/ test/ subfolders: every 10th image of a class is `test`
# (counted back from its last file, so every class with 2 or more images has one test image)
MIN_CLASSES, MIN_IMAGES = 2, 10  # below this an ImageFolder is refused (see `check_size`)


class ImageDataset(Dataset):
    """Base class: `read(i)` gives uint8 (C, H, W); indexing adds the flip and the label."""

    name: str
    class_names: list[str]
    labels: torch.Tensor  # int64 (N,)
    channels: int
    native_size: list[int]
    hflip: bool = False  # horizontal flips are safe (photos), used when data.hflip is not set
    in_memory: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, bool]) -> tuple[torch.Tensor, int]:
        index, flip = key if isinstance(key, tuple) else (key, False)
        img = self.read(int(index))
        return (img.flip(-1) if flip else img), int(self.labels[index])


class TensorImages(ImageDataset):
    """An in-memory `ImageData` (uint8 (N, C, H, W)) as a dataset."""

    in_memory = True

    def __init__(self, data: ImageData, hflip: bool = False):
        self.data, self.name, self.class_names = data, data.name, data.class_names
        self.labels, self.channels = data.labels, int(data.images.shape[1])
        self.native_size, self.hflip = data.native_size, hflip

    def read(self, index: int) -> torch.Tensor:
        return self.data.images[index]


def materialize(dataset: ImageDataset, indices: Any = None, workers: int | None = None,
                batch_size: int = 256) -> ImageData:
    """Read `indices` (default: all) of `dataset` into memory, in order, through the DataLoader."""
    from .loader import batches, collate, default_workers, private_generator

    if isinstance(dataset, TensorImages) and indices is None:
        return dataset.data
    idx = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    if len(idx) == 0:
        raise ValueError(f"{dataset.name}: no images to read")
    chunks = [idx[i : i + batch_size].tolist() for i in range(0, len(idx), batch_size)]
    workers = default_workers(dataset) if workers is None else workers
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=chunks, num_workers=min(workers, len(chunks)),
                                         collate_fn=collate, generator=private_generator())
    images, labels = zip(*batches(loader))
    return ImageData(torch.cat(images), torch.cat(labels), list(dataset.class_names), dataset.name)


# ----------------------------------------------------------------------------------------------- CIFAR-10
def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 keeps these under numpy._core; pickles written by numpy 1.x name numpy.core
        from numpy._core.multiarray import _reconstruct, scalar
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
        from numpy.core.numeric import _frombuffer
    found = {"_reconstruct": _reconstruct, "scalar": scalar, "_frombuffer": _frombuffer}
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                         ("_codecs", "encode"): codecs.encode}  # protocol-2 bytes
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = found["_reconstruct"]
        table[(f"{package}.multiarray", "scalar")] = found["scalar"]
        table[(f"{package}.numeric", "_frombuffer")] = found["_frombuffer"]
    return table


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy array/dtype reconstruction (and `_codecs.encode`, which
    protocol-2 pickles use for bytes); any other global - the way a pickle runs code - is refused."""

    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="latin1")  # CIFAR-10's batches were written by Python 2
        self.path = path
        self.allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise ValueError(f"{self.path}: refusing to unpickle {module}.{name} (only numpy arrays, lists, "
                         "dicts, strings and numbers are allowed in a CIFAR-10 batch)")


def safe_unpickle(path: Path) -> Any:
    """Unpickle `path` with `SafeUnpickler`; a damaged file is a ValueError naming it."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, path).load()
    except ValueError:
        raise
    except Exception as e:  # truncated / not a pickle
        raise ValueError(f"{path}: not a readable CIFAR-10 pickle ({type(e).__name__}: {e})") from None


_RAW_OPCODES = {"BINSTRING": 4, "SHORT_BINSTRING": 1, "BINBYTES": 4, "SHORT_BINBYTES": 1, "BINBYTES8": 8,
                "BYTEARRAY8": 8}


def _raw_offset(path: Path, nbytes: int) -> int | None:
    """File offset of the first raw byte string of length `nbytes` in pickle `path` (walking opcodes only)."""
    with open(path, "rb") as f:
        for op, arg, pos in pickletools.genops(f):
            if op.name in _RAW_OPCODES and arg is not None and len(arg) == nbytes:
                return pos + 1 + _RAW_OPCODES[op.name]
    return None


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> (images uint8 (N, 3072), memory-mapped when possible; labels int64 (N,))."""
    batch = safe_unpickle(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: a CIFAR-10 batch is a dict with 'data' and 'labels', got {type(batch).__name__}")
    batch = {_text(k): v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: CIFAR-10 batch has keys {sorted(batch)}; expected 'data' and 'labels'")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path}: 'data' must be uint8 (N, 3072) (32x32 RGB, channel-major), got "
                         f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'labels' must be {len(data)} integers, got {labels.dtype} {labels.shape}")
    offset = _raw_offset(path, data.nbytes) if data.flags.c_contiguous else None
    if offset is not None:
        mapped = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=data.shape)
        if np.array_equal(mapped, data):
            return mapped, labels.astype(np.int64)
    return np.ascontiguousarray(data), labels.astype(np.int64)  # no raw byte string: kept in memory


CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]
CIFAR_BASE = "cifar-10-batches-py"


def cifar_folder(root: str | None) -> Path:
    """The folder holding the batch files: `root` itself, or `root/cifar-10-batches-py` (downloaded there
    through torchvision, archive md5 checked, when it is absent and the network allows)."""
    base = Path(root or "data")
    for folder in (base, base / CIFAR_BASE):
        if (folder / "batches.meta").exists() or (folder / "test_batch").exists():
            return folder
    try:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(base), train=True, download=True)
    except Exception as e:
        raise FileNotFoundError(f"{base}: no CIFAR-10 batches (cifar-10-batches-py/data_batch_1..5, test_batch, "
                                f"batches.meta) and the download failed ({type(e).__name__}: {e})") from None
    return base / CIFAR_BASE


class CifarBatches(ImageDataset):
    """CIFAR-10 (or any folder in its python-batch layout) for one split; images memory-mapped."""

    hflip = True

    def __init__(self, root: str | None, split: str, channels: int | None = None):
        folder = cifar_folder(root)
        names = CIFAR_TRAIN if split == "train" else CIFAR_TEST
        missing = [n for n in names + ["batches.meta"] if not (folder / n).exists()]
        if missing:
            raise FileNotFoundError(f"{folder}: missing CIFAR-10 file(s) {missing}")
        meta = safe_unpickle(folder / "batches.meta")
        meta = {_text(k): v for k, v in meta.items()} if isinstance(meta, dict) else {}
        if "label_names" not in meta:
            raise ValueError(f"{folder / 'batches.meta'}: expected a dict with 'label_names', got keys "
                             f"{sorted(meta)}")
        self.class_names = [_text(n) for n in meta["label_names"]]
        self.files = [folder / n for n in names]
        parts = [read_cifar_batch(p) for p in self.files]
        labels = np.concatenate([lab for _, lab in parts])
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"{folder}: labels must be in 0..{len(self.class_names) - 1} "
                             f"({len(self.class_names)} label_names), found {labels.min()}..{labels.max()}")
        self._arrays: list[np.ndarray] | None = [a for a, _ in parts]
        self._kept = [not isinstance(a, np.memmap) for a, _ in parts]  # in memory: travel with the object
        self.offsets = np.cumsum([0] + [len(a) for a, _ in parts])
        self.labels = torch.from_numpy(labels)
        self.name, self.native_size = "cifar10", [32, 32]
        self.channels = channels or 3

    def __getstate__(self) -> dict[str, Any]:  # spawned workers re-open the memory maps
        state = dict(self.__dict__)
        if self._arrays is not None:
            state["_arrays"] = [a if kept else None for a, kept in zip(self._arrays, self._kept)]
        return state

    def _array(self, k: int) -> np.ndarray:
        if self._arrays is None or self._arrays[k] is None:
            arrays = self._arrays or [None] * len(self.files)
            arrays[k] = read_cifar_batch(self.files[k])[0]
            self._arrays = arrays
        return self._arrays[k]

    def read(self, index: int) -> torch.Tensor:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        row = np.array(self._array(k)[index - self.offsets[k]])  # a copy out of the map
        img = torch.from_numpy(row).view(3, 32, 32)
        return convert_channels(img[None], self.channels)[0] if self.channels != 3 else img


# --------------------------------------------------------------------------------------------- ImageFolder
def _to_mode(img: Any, channels: int) -> Any:
    """Any PIL image -> RGB (alpha composited over white; palette, greyscale, CMYK and 16-bit expanded) or L."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit greyscale: scale to 8 bits
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray((arr / top * 255).round().clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        img.paste(rgba, mask=rgba.getchannel("A"))
    img = img.convert("RGB")
    return img.convert("L") if channels == 1 else img


def fit_image(img: Any, resolution: int, fit: str) -> Any:
    """Fit a PIL image to resolution x resolution: 'crop' (shorter side to R, centre crop), 'squash'
    (resize, aspect not kept) or 'pad' (longer side to R, centred on black)."""
    from PIL import Image

    r = resolution
    if fit == "squash":
        return img.resize((r, r), Image.BICUBIC) if img.size != (r, r) else img
    w, h = img.size
    scale = r / (min(w, h) if fit == "crop" else max(w, h))
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if fit == "crop":
        nw, nh = max(r, nw), max(r, nh)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    if fit == "crop":
        left, top = (nw - r) // 2, (nh - r) // 2
        return img.crop((left, top, left + r, top + r))
    canvas = Image.new(img.mode, (r, r), 0)
    canvas.paste(img, ((r - nw) // 2, (r - nh) // 2))
    return canvas


def decode_image(path: str | Path, resolution: int, channels: int, fit: str) -> torch.Tensor:
    """An image file -> uint8 (channels, R, R); ValueError naming the file when it cannot be decoded."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB" if channels == 3 else "L", (resolution, resolution))  # DCT-domain downscale
            img = ImageOps.exif_transpose(img)
            img = fit_image(_to_mode(img, channels), resolution, fit)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    t = torch.from_numpy(arr.copy())
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _scan(folder: Path) -> tuple[list[str], list[list[str]]]:
    """Class names (sorted subfolders) and, per class, its image files relative to `folder` (sorted)."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    files = []
    for cls in classes:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, folder)
            found += [os.path.join(rel, f) for f in sorted(filenames)
                      if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
        files.append(found)
    return classes, files


def imagefolder_split(root: str | None, split: str) -> tuple[Path, bool]:
    """(folder of class subfolders, whether `split` is a hold-out of it). `root/train` and `root/test` (or
    `root/val`) are used when present; otherwise `root` holds the classes and the split is a hold-out."""
    if not root:
        raise ValueError("dataset 'imagefolder' needs data.root (a folder with one subfolder per class)")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no such folder (data.root of an imagefolder dataset)")
    if (base / "train").is_dir():
        names = ["train"] if split == "train" else ["test", "val"]
        for name in names:
            if (base / name).is_dir():
                return base / name, False
        return base / "train", True  # train/ only: hold out its every 10th image as the test split
    return base, True


class ImageFolderFiles(ImageDataset):
    """Class folders of image files, decoded and fitted to `resolution` when read (see the module doc)."""

    hflip = True

    def __init__(self, root: str | None, split: str, resolution: int = 64, channels: int | None = None,
                 fit: str = "crop"):
        if fit not in FITS:
            raise ValueError(f"unknown data.fit {fit!r}; allowed: {list(FITS)}")
        folder, holdout = imagefolder_split(root, split)
        classes, per_class = _scan(folder)
        if not classes:
            raise ValueError(f"{folder}: no class subfolders (expected {folder}/<class name>/<image files>)")
        empty = [c for c, f in zip(classes, per_class) if not f]
        if len(empty) == len(classes):
            raise ValueError(f"{folder}: no images (suffixes {list(IMAGE_SUFFIXES)}) in its class subfolders "
                             f"{classes[:10]}")
        if empty:
            raise ValueError(f"{folder}: class folder(s) {empty[:10]} hold no images (suffixes "
                             f"{list(IMAGE_SUFFIXES)}); remove them or add images")
        if len(classes) < MIN_CLASSES:
            raise ValueError(f"{folder}: found {len(classes)} class folder ({classes}); a class-conditional "
                             f"dataset needs at least {MIN_CLASSES} class subfolders")
        paths, labels = [], []
        for label, files in enumerate(per_class):
            if holdout:  # the class's last file and every 10th before it (none of a one-image class)
                n = len(files)
                files = [f for i, f in enumerate(files)
                         if (n >= 2 and (n - 1 - i) % HOLDOUT_EVERY == 0) == (split == "test")]
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise ValueError(f"{folder}: no images in split {split!r} (a hold-out split takes every "
                             f"{HOLDOUT_EVERY}th image of a class; add images or test/ and train/ folders)")
        self.folder = str(folder)
        # one numpy byte-string array, not a list of str: forked workers do not copy it page by page
        # (reference counts of millions of Python strings would touch every page)
        self.paths = np.array([os.fsencode(p) for p in paths])
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.class_names, self.name = classes, "imagefolder"
        self.channels, self.native_size = channels or 3, [resolution, resolution]
        self.resolution, self.fit = resolution, fit

    def path(self, index: int) -> str:
        return os.path.join(self.folder, os.fsdecode(self.paths[index]))

    def read(self, index: int) -> torch.Tensor:
        return decode_image(self.path(index), self.resolution, self.channels, self.fit)


def check_size(dataset: ImageDataset, where: str, min_classes: int = MIN_CLASSES,
               min_images: int = MIN_IMAGES) -> None:
    """ValueError unless `dataset` has at least `min_classes` classes with images and `min_images` images."""
    present = int((torch.bincount(dataset.labels, minlength=len(dataset.class_names)) > 0).sum())
    if present < min_classes or len(dataset) < min_images:
        raise ValueError(f"{where}: {len(dataset)} images in {present} class(es); need at least {min_classes} "
                         f"classes and {min_images} images")


def _cifar(root: str | None, split: str, resolution: int, channels: int | None, fit: str) -> ImageDataset:
    return CifarBatches(root, split, channels)


# datasets streamed from disk; every other name is loaded into memory by training.data.load_dataset
STREAMED = {"cifar10": _cifar, "imagefolder": ImageFolderFiles}
# the resolution a dataset is read at when none is given: the loaders' 32, photo folders 64 (the recipe's)
DEFAULT_RESOLUTION = {"imagefolder": 64}


def default_resolution(name: str) -> int:
    """The resolution `name` is read at when the caller gives none."""
    return DEFAULT_RESOLUTION.get(name, 32)


def open_dataset(name: str, split: str = "train", root: str | None = None, resolution: int = 32,
                 channels: int | None = None, fit: str = "crop") -> ImageDataset:
    """The dataset `name`'s split as an `ImageDataset`: streamed from disk (cifar10, imagefolder) or in memory."""
    from .data import SPLITS, load_dataset

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {list(SPLITS)}")
    if name in STREAMED:
        return STREAMED[name](root, split, resolution, channels, fit)
    return TensorImages(load_dataset(name, split, root, resolution, channels))
