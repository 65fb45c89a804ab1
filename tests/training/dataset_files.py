"""Small datasets written in the real on-disk formats (CIFAR-10 python batches, class folders of images)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 3072) uint8, CIFAR's channel-major rows: a class-coloured square on a noisy background, so a
    small classifier or GAN has something class-dependent to learn."""
    n = len(labels)
    img = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
    colours = np.array([[(c * 97) % 256, (c * 53 + 80) % 256, (c * 31 + 160) % 256] for c in range(10)])
    for i, c in enumerate(labels):
        x, y = rng.integers(2, 14, 2)
        img[i, :, y : y + 16, x : x + 16] = colours[c][:, None, None]
    return img.reshape(n, 3072)


def write_cifar(folder: Path, per_batch: int = 40, test: int = 40, seed: int = 0, protocol: int = 5,
                classes: list[str] = CIFAR_CLASSES) -> Path:
    """A CIFAR-10-layout folder: data_batch_1..5 and test_batch (dicts with bytes keys b'data' uint8
    (N, 3072) and b'labels', as the real files have) and batches.meta (b'label_names')."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        labels = np.arange(n) % len(classes)
        rng.shuffle(labels)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": cifar_images(labels, rng),
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [c.encode() for c in classes], b"num_cases_per_batch": per_batch, b"num_vis": 3072},
        protocol=protocol))
    return folder


def write_imagefolder(root: Path, per_class: int = 10, classes: tuple[str, ...] = ("cat", "dog"),
                      seed: int = 0) -> Path:
    """Class folders of mixed files: non-square JPEGs (RGB and greyscale), an RGBA PNG and a palette PNG,
    each class a colour of its own."""
    rng = np.random.default_rng(seed)
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        colour = np.array([(200, 40, 40), (40, 40, 200), (40, 200, 40)][c % 3], dtype=np.uint8)
        for i in range(per_class):
            h, w = (48, 80) if i % 2 else (90, 60)  # landscape and portrait
            arr = rng.integers(0, 50, (h, w, 3)).astype(np.uint8)
            arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = colour
            img = Image.fromarray(arr)
            if i == 0:
                rgba = img.convert("RGBA")
                rgba.putalpha(Image.fromarray(np.where(np.arange(w)[None] < w // 8, 0, 255).astype(np.uint8)
                                              .repeat(h, 0)))
                rgba.save(root / cls / f"{i:03d}.png")
            elif i == 1:
                img.convert("P", palette=Image.ADAPTIVE, colors=16).save(root / cls / f"{i:03d}.png")
            elif i == 2:
                img.convert("L").save(root / cls / f"{i:03d}.jpg", quality=90)
            else:
                img.save(root / cls / f"{i:03d}.jpg", quality=90)
    return root
