"""Train the domain classifier that defines the evaluation feature space (`ganforge train-classifier`)."""
from __future__ import annotations

import itertools
import time
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import DomainClassifier, DomainClassifierConfig, save
from models.checkpoint import CLASSIFIER, NORMALIZATION, build_metadata
from models.sampling import pick_device

from .data import ImageData
from .datasets import ImageDataset, TensorImages, check_size, default_resolution, open_dataset
from .loader import GlobalBatchSampler, batches, collate, default_workers, make_loader, private_generator


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1] at native size (the classifier sees what sampling returns)."""
    return (images.float() / 255 - NORMALIZATION["mean"]) / NORMALIZATION["std"]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a shift of up to 2 pixels (reflection padded)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
    return torch.roll(F.pad(x, (2, 2, 2, 2), mode="replicate"), (dy, dx), (2, 3))[..., 2:-2, 2:-2]


def scaled_schedule(n: int, batch_size: int, epochs: int, min_steps: int) -> tuple[int, int]:
    """(batch, steps) for `n` training images: the batch is at most a quarter of the data (>= 4), and the
    run lasts `epochs` passes or `min_steps` steps, whichever is longer, so small data still trains."""
    batch = max(1, min(batch_size, n, max(4, n // 4)))
    return batch, max(epochs * (n // batch), min_steps)


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: ImageData | ImageDataset, batch_size: int = 500) -> float:
    """Top-1 accuracy of `model` on a uint8 dataset (in memory, or streamed through the DataLoader)."""
    dataset = TensorImages(data) if isinstance(data, ImageData) else data
    model.eval()
    device = next(model.parameters()).device
    chunks = [list(range(i, min(i + batch_size, len(dataset)))) for i in range(0, len(dataset), batch_size)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=chunks, collate_fn=collate,
                                         num_workers=min(default_workers(dataset), len(chunks)),
                                         generator=private_generator())
    correct = 0
    for images, labels in batches(loader):
        correct += (model(normalize(images).to(device)).argmax(1).cpu() == labels).sum().item()
    return correct / len(dataset)


def epoch_batches(n: int, batch_size: int, epochs: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches: a fresh permutation of range(n) per epoch, cut into full batches (the rest dropped)."""
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(n // batch_size):
            yield perm[i * batch_size : (i + 1) * batch_size]


def random_batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` index batches drawn with replacement: any training-set size gets the same compute."""
    for _ in range(steps):
        yield torch.randint(n, (batch_size,), generator=gen)


def fit_classifier(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int,
                   gen: torch.Generator, lr: float = 2e-3, progress: bool = False) -> torch.nn.Module:
    """The domain classifier's recipe: AdamW, one-cycle LR over `steps`, flip + shift, label smoothing 0.05.
    `model`: any module mapping images in [-1, 1] (B, C, H, W) to class logits (a DomainClassifier here).

    `batches` yields `steps` (uint8 images (B, C, H, W), labels (B,)) pairs on the CPU; `gen` drives the
    augmentation (and, in `epoch_batches` / `random_batches`, the batch order).
    """
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    with tqdm(total=steps, desc="classifier", unit="step", disable=not progress) as bar:
        for images, labels in batches:
            x = _augment(normalize(images), gen).to(device)
            loss = F.cross_entropy(model(x), labels.to(device), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            if progress:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return model


def train_classifier(dataset: str = "fashion-mnist", root: str | None = None, out: str = "runs/classifier",
                     epochs: int = 4, batch_size: int = 128, lr: float = 2e-3, width: int = 32, seed: int = 0,
                     device: str = "auto", channels: int | None = None, resolution: int | None = None,
                     fit: str = "crop", workers: int | None = None, min_steps: int = 100,
                     steps: int | None = None) -> dict:
    """Train a DomainClassifier on `dataset`'s train split, report test accuracy, save a checkpoint to `out`.

    `resolution` (default: the dataset's, `default_resolution`) and `fit` shape what is read. Batch and steps
    scale with the data (see `scaled_schedule`; `steps` overrides the count); fewer than 2 classes or 10
    training images, or an empty test split, is a ValueError."""
    torch.manual_seed(seed)
    dev = pick_device(device)
    resolution = default_resolution(dataset) if resolution is None else resolution
    train = open_dataset(dataset, "train", root, resolution, channels, fit)
    where = f"{dataset} {root}" if root else dataset
    check_size(train, f"{where} (train split)")
    test = open_dataset(dataset, "test", root, resolution, channels, fit)
    check_size(test, f"{where} (test split)", min_classes=1, min_images=1)
    h, w = train.native_size
    cfg = DomainClassifierConfig(num_classes=len(train.class_names), img_resolution=h,
                                 img_channels=train.channels, width=width)
    model = DomainClassifier(cfg).to(dev)
    batch, scaled = scaled_schedule(len(train), batch_size, epochs, min_steps)
    steps = steps or scaled
    gen = torch.Generator().manual_seed(seed)
    if isinstance(train, TensorImages):
        # in-memory data keeps the recipe the bundled classifier was trained with (same batches, same bytes):
        # per-epoch permutations drawn from `gen`, which also drives the shift augmentation
        data, per_epoch = train.data, len(train) // batch
        order = itertools.islice(epoch_batches(len(data), batch, -(-steps // per_epoch), gen), steps)
        stream = ((data.images[idx], data.labels[idx]) for idx in order)
    else:
        # streamed data: per-epoch shuffles in whole batches, decoded in DataLoader workers (GAN training's sampler)
        stream = batches(make_loader(train, GlobalBatchSampler(len(train), batch, seed, draws=range(steps)), workers))
    start = time.time()
    fit_classifier(model, stream, steps, gen, lr=lr, progress=True)
    acc = accuracy(model, test)
    report = {"test_accuracy": acc, "num_test": len(test), "num_train": len(train), "batch_size": batch,
              "steps": steps, "epochs": round(steps * batch / len(train), 2), "seconds": round(time.time() - start, 1)}
    meta = build_metadata(CLASSIFIER, train.class_names, h, cfg.img_channels, [h, w],
                          provenance={"dataset": dataset, "root": root, "split": "train", "seed": seed,
                                      "steps": steps, "batch_size": batch, "resolution": resolution, "fit": fit},
                          metrics=report)
    save(model, out, meta)
    return report
