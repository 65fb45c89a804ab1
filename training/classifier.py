"""Train the domain classifier that defines the evaluation feature space (`ganforge train-classifier`)."""
from __future__ import annotations

import time
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import DomainClassifier, DomainClassifierConfig, save
from models.checkpoint import CLASSIFIER, NORMALIZATION, build_metadata
from models.sampling import pick_device

from .data import ImageData, load_dataset


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1] at native size (the classifier sees what sampling returns)."""
    return (images.float() / 255 - NORMALIZATION["mean"]) / NORMALIZATION["std"]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a shift of up to 2 pixels (reflection padded)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
    return torch.roll(F.pad(x, (2, 2, 2, 2), mode="replicate"), (dy, dx), (2, 3))[..., 2:-2, 2:-2]


@torch.no_grad()
def accuracy(model: DomainClassifier, data: ImageData, batch_size: int = 500) -> float:
    """Top-1 accuracy of `model` on a uint8 dataset."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(data), batch_size):
        x = normalize(data.images[i : i + batch_size]).to(device)
        correct += (model(x).argmax(1).cpu() == data.labels[i : i + batch_size]).sum().item()
    return correct / len(data)


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


def fit_classifier(model: DomainClassifier, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int,
                   gen: torch.Generator, lr: float = 2e-3, progress: bool = False) -> DomainClassifier:
    """The domain classifier's recipe: AdamW, one-cycle LR over `steps`, flip + shift, label smoothing 0.05.

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


def train_classifier(dataset: str = "fashion-mnist", root: str | None = None, out: str = "checkpoints/classifier",
                     epochs: int = 4, batch_size: int = 128, lr: float = 2e-3, width: int = 32, seed: int = 0,
                     device: str = "auto", channels: int | None = None) -> dict:
    """Train a DomainClassifier on `dataset`'s train split, report test accuracy, save a checkpoint to `out`."""
    torch.manual_seed(seed)
    dev = pick_device(device)
    train = load_dataset(dataset, "train", root, channels=channels)
    test = load_dataset(dataset, "test", root, channels=channels)
    h, w = train.native_size
    cfg = DomainClassifierConfig(num_classes=len(train.class_names), img_resolution=h,
                                 img_channels=train.images.shape[1], width=width)
    model = DomainClassifier(cfg).to(dev)
    steps = epochs * (len(train) // batch_size)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    batches = ((train.images[idx], train.labels[idx]) for idx in epoch_batches(len(train), batch_size, epochs, gen))
    fit_classifier(model, batches, steps, gen, lr=lr, progress=True)
    acc = accuracy(model, test)
    report = {"test_accuracy": acc, "epochs": epochs, "seconds": round(time.time() - start, 1)}
    meta = build_metadata(CLASSIFIER, train.class_names, h, cfg.img_channels, [h, w],
                          provenance={"dataset": dataset, "split": "train", "seed": seed, "epochs": epochs},
                          metrics=report)
    save(model, out, meta)
    return report
