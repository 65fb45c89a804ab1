"""`ganforge sample`: per-class samples from a conditional checkpoint to an .npz and/or a PNG grid."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from models import load
from models.checkpoint import CONDITIONAL, atomic_write, require_kind
from models.sampling import class_index, generate, grid, pick_device, to_uint8


def sample_arrays(checkpoint: str, per_class: int, seed: int, classes: list[str] | None = None,
                  truncation: float | None = None, device: str = "auto", batch_size: int = 256,
                  backend: str = "torch"):
    """Exactly `per_class` images of each requested class, in class order; image k uses seed + k. `backend`
    runs the forward pass (`backends.choose`: torch, the float32 reference, by default; auto times the others).

    Returns (images uint8 at native size, labels int64, seeds int64, metadata).
    """
    from backends import choose

    if per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {per_class}")
    dev = pick_device(device)
    module, meta = load(checkpoint, dev)
    require_kind(meta, CONDITIONAL, checkpoint)
    names = meta["class_names"]
    wanted = sorted({class_index(names, c) for c in classes}) if classes else list(range(len(names)))
    labels = np.repeat(np.asarray(wanted, dtype=np.int64), per_class)
    G = choose(module, meta, dev, backend, (min(batch_size, len(labels)),))  # timed at the batch it runs
    seeds = seed + np.arange(len(labels), dtype=np.int64)
    chunks = [to_uint8(generate(G, labels[i : i + batch_size], seeds[i : i + batch_size].tolist(), truncation), meta)
              for i in range(0, len(labels), batch_size)]
    return np.concatenate(chunks), labels, seeds, meta


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write an .npz atomically."""
    def write(tmp: Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        tmp.write_bytes(buf.getvalue())

    atomic_write(path, write)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 (H, W) or (H, W, C) array as PNG atomically."""
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def sample_to_files(checkpoint: str, per_class: int, seed: int, out: str | None, grid_path: str | None,
                    classes: list[str] | None, truncation: float | None, device: str, backend: str = "torch") -> None:
    """CLI body: sample, then write the .npz contract (images, labels, class_names, seeds) and/or a grid."""
    if not out and not grid_path:
        raise ValueError("nothing to write: give --out FILE.npz and/or --grid FILE.png")
    images, labels, seeds, meta = sample_arrays(checkpoint, per_class, seed, classes, truncation, device,
                                                backend=backend)
    if out:
        save_npz(out, images=images, labels=labels, class_names=np.asarray(meta["class_names"]), seeds=seeds)
        print(f"wrote {len(images)} images to {out}")
    if grid_path:
        columns = min(per_class, 10)
        keep = np.concatenate([np.arange(c * per_class, c * per_class + columns)
                               for c in range(len(images) // per_class)])
        save_png(grid_path, grid(images[keep], columns))
        print(f"wrote grid to {grid_path}")
