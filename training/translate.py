"""`ganforge translate`: image files in -> PNG out, or a whole dataset split -> .npz of (inputs, outputs, targets)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models import load
from models.checkpoint import IMAGE_TO_IMAGE, model_resolution, require_kind, task_channels
from models.sampling import pick_device, to_uint8, translate

from .paired import load_paired
from .sample import save_npz, save_png


def translate_files(checkpoint: str, files: list[str], out_dir: str, derive_source: bool = False,
                    device: str = "auto") -> list[Path]:
    """Translate each image file (PNG/JPEG, any size) and write `<out_dir>/<stem>.png` of the same size."""
    from PIL import Image, UnidentifiedImageError

    G, meta = load(checkpoint, pick_device(device))
    require_kind(meta, IMAGE_TO_IMAGE, checkpoint)
    written = []
    for name in files:
        path = Path(name)
        try:
            with Image.open(path) as img:
                source, target = task_channels(meta)
                channels = target if derive_source else source
                arr = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such image: {path}") from None
        except UnidentifiedImageError:
            raise ValueError(f"{path} is not an image PIL can read") from None
        output = translate(G, arr[None], meta, derive_source=derive_source)[0]
        target = Path(out_dir) / f"{path.stem}.png"
        save_png(target, output)
        written.append(target)
    return written


@torch.no_grad()
def translate_dataset(checkpoint: str, dataset: str | None, split: str, root: str | None = None,
                      paired: str | None = None, limit: int | None = None, device: str = "auto",
                      batch_size: int = 256) -> dict[str, np.ndarray]:
    """Inputs, outputs and targets (uint8 at native size, dataset order) and labels when the data has them.

    Sources are made exactly as in training: targets padded/resized to the model resolution, then the
    checkpoint's derivation (or the paired files for 'aligned'/'folders')."""
    G, meta = load(checkpoint, pick_device(device))
    require_kind(meta, IMAGE_TO_IMAGE, checkpoint)
    task = meta["task"]
    paired = paired or task.get("derivation")
    if not paired:
        raise ValueError("this checkpoint was trained on paired files; give --paired aligned|folders and --root")
    resolution = model_resolution(meta)
    source_channels, target_channels = task_channels(meta)
    data = load_paired(paired, dataset or meta["provenance"].get("dataset"), split, root, resolution,
                       target_channels, source_channels, task.get("direction", "AtoB"))
    n = len(data) if limit is None else min(limit, len(data))
    dev = next(G.parameters()).device
    inputs, outputs, targets = [], [], []
    for i in range(0, n, batch_size):
        idx = torch.arange(i, min(i + batch_size, n))
        source, target = data.batch(idx, resolution)
        output = G(source.to(dev)).float().cpu()
        inputs.append(to_uint8(source, meta))
        outputs.append(to_uint8(output, meta))
        targets.append(to_uint8(target, meta))
    result = {"inputs": np.concatenate(inputs), "outputs": np.concatenate(outputs),
              "targets": np.concatenate(targets)}
    if data.labels is not None:
        result["labels"] = data.labels[:n].numpy().astype(np.int64)
        result["class_names"] = np.asarray(data.class_names)
    return result


def translate_to_npz(checkpoint: str, dataset: str | None, split: str, out: str, root: str | None,
                     paired: str | None, limit: int | None, device: str) -> None:
    """CLI body of the dataset mode."""
    if not out.endswith(".npz"):
        raise ValueError(f"--out must name an .npz file in dataset mode, got {out!r}")
    arrays = translate_dataset(checkpoint, dataset, split, root, paired, limit, device)
    save_npz(out, **arrays)
    print(f"wrote {len(arrays['outputs'])} translations to {out}")
