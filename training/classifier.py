"""Train the domain classifier that defines the evaluation feature space (`ganforge train-classifier`)."""
from __future__ import annotations

import time

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
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    bar = tqdm(total=steps, desc="classifier", unit="step")
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        for i in range(len(train) // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = _augment(normalize(train.images[idx]), gen).to(dev)
            loss = F.cross_entropy(model(x), train.labels[idx].to(dev), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    acc = accuracy(model, test)
    report = {"test_accuracy": acc, "epochs": epochs, "seconds": round(time.time() - start, 1)}
    meta = build_metadata(CLASSIFIER, train.class_names, h, cfg.img_channels, [h, w],
                          provenance={"dataset": dataset, "split": "train", "seed": seed, "epochs": epochs},
                          metrics=report)
    save(model, out, meta)
    return report
