"""`ganforge evaluate`: sample quality in the domain classifier's feature space (or Inception's), with floors.

Metrics (conditional checkpoints): conditional accuracy (the classifier agrees with the requested class),
FID and KID against the real test set beside the real-vs-real floor (a real train subset of the same size
against the test set), precision/recall (Kynkaenniemi et al. 2019, k=3), and per-class diversity: the mean
pairwise feature distance of a class's samples divided by that of the real test images of the class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from models import load, save
from models.checkpoint import CLASSIFIER, CONDITIONAL, GENERATOR_KINDS, IMAGE_TO_IMAGE
from models.sampling import pick_device

from .classifier import normalize
from .data import load_dataset

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLASSIFIERS = {"fashion-mnist": PROJECT_ROOT / "checkpoints" / "fashion_mnist_classifier"}


class DomainFeatures(nn.Module):
    """uint8 (B, C, H, W) -> classifier penultimate features; the torchmetrics feature extractor."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.num_features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.classifier.parameters()).device
        return self.classifier.features(normalize(images).to(device)).float().cpu()


@torch.no_grad()
def embed(classifier: nn.Module, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, predicted labels) for uint8 (N, C, H, W) images."""
    classifier.eval()
    device = next(classifier.parameters()).device
    feats, preds = [], []
    for i in range(0, len(images), batch_size):
        f = classifier.features(normalize(images[i : i + batch_size]).to(device))
        feats.append(f.float().cpu())
        preds.append(classifier.head(f).argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)


def mean_pairwise_distance(features: torch.Tensor, max_samples: int = 1000) -> float:
    """Mean L2 distance between distinct pairs of (the first `max_samples`) feature vectors."""
    f = features[:max_samples].double()
    n = len(f)
    if n < 2:
        return 0.0
    return (torch.cdist(f, f).sum() / (n * (n - 1))).item()


def class_diversity(gen_feats: torch.Tensor, gen_labels: torch.Tensor, real_feats: torch.Tensor,
                    real_labels: torch.Tensor, num_classes: int) -> list[dict[str, float]]:
    """Per class: generated and real mean pairwise feature distance and their ratio (1 = as varied as real)."""
    out = []
    for c in range(num_classes):
        g = mean_pairwise_distance(gen_feats[gen_labels == c])
        r = mean_pairwise_distance(real_feats[real_labels == c])
        out.append({"generated": g, "real": r, "ratio": g / r if r > 0 else float("nan")})
    return out


def _knn_radii(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    radii = [torch.cdist(x[i : i + chunk], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), chunk)]
    return torch.cat(radii)  # k+1: the point itself is at distance 0


def _coverage(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> float:
    inside = [(torch.cdist(query[i : i + chunk], ref) <= radii[None]).any(1) for i in range(0, len(query), chunk)]
    return torch.cat(inside).float().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision/recall (Kynkaenniemi et al. 2019): the share of fake samples inside the real k-NN
    manifold, and the share of real samples inside the fake one."""
    real, fake = real.double(), fake.double()
    return _coverage(fake, real, _knn_radii(real, k)), _coverage(real, fake, _knn_radii(fake, k))


def fid_kid(feature: nn.Module | int, real: torch.Tensor, fake: torch.Tensor, subset_size: int = 1000,
            batch_size: int = 500) -> dict[str, float]:
    """FID and KID (torchmetrics) between two uint8 image sets, in the space of `feature`."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    custom = isinstance(feature, nn.Module)
    fid = FrechetInceptionDistance(feature=feature, normalize=False)
    kid = KernelInceptionDistance(feature=feature, subset_size=min(subset_size, len(real), len(fake)),
                                  normalize=False)
    for imgs, is_real in ((real, True), (fake, False)):
        for i in range(0, len(imgs), batch_size):
            batch = imgs[i : i + batch_size]
            if not custom and batch.shape[1] == 1:
                batch = batch.expand(-1, 3, -1, -1)  # Inception wants RGB
            fid.update(batch, real=is_real)
            kid.update(batch, real=is_real)
    kid_mean, kid_std = kid.compute()
    return {"fid": fid.compute().item(), "kid": kid_mean.item(), "kid_std": kid_std.item()}


def inception_feature() -> int:
    """2048: torchmetrics' standard Inception-v3 pool features; a clear error when its weights are absent."""
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    except Exception as e:  # missing torch-fidelity, or no network to fetch the weights
        raise ValueError(f"standard Inception FID is not available here ({type(e).__name__}: {e}); install "
                         "torch-fidelity and put its Inception weights in the torch hub cache, or use "
                         "--features domain") from None
    return 2048


def as_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) arrays -> (N, C, H, W) tensors."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def default_classifier(dataset: str) -> Path:
    """The bundled domain classifier for `dataset`; ValueError when there is none."""
    if dataset not in DEFAULT_CLASSIFIERS:
        raise ValueError(f"no bundled domain classifier for dataset {dataset!r}; train one with "
                         "`ganforge train-classifier --dataset ...` and pass --classifier")
    return DEFAULT_CLASSIFIERS[dataset]


def evaluate_conditional(checkpoint: str, classifier: str | None = None, per_class: int = 1000, seed: int = 0,
                         features: str = "domain", device: str = "auto", truncation: float | None = None,
                         ) -> dict[str, Any]:
    """The evaluation report of a class-conditional checkpoint (see the module docstring)."""
    from .sample import sample_arrays

    dev = pick_device(device)
    images, labels, _, meta = sample_arrays(checkpoint, per_class, seed, truncation=truncation, device=device)
    prov = meta.get("provenance", {})
    dataset = prov.get("dataset", "fashion-mnist")
    root = (prov.get("config") or {}).get("data", {}).get("root")
    clf_path = Path(classifier) if classifier else default_classifier(dataset)
    clf, clf_meta = load(clf_path, dev)
    if clf_meta.get("kind") != CLASSIFIER:
        raise ValueError(f"{clf_path} is not a classifier checkpoint (kind={clf_meta.get('kind')!r})")
    fake = as_nchw(images)
    if list(fake.shape[1:]) != [clf_meta["img_channels"], *clf_meta["native_size"]]:
        raise ValueError(f"samples are {list(fake.shape[1:])} but the classifier expects "
                         f"{[clf_meta['img_channels'], *clf_meta['native_size']]}")
    channels = meta["img_channels"]
    test = load_dataset(dataset, "test", root, channels=channels)
    train = load_dataset(dataset, "train", root, channels=channels)
    gen = torch.Generator().manual_seed(seed)
    floor_idx = torch.randperm(len(train), generator=gen)[: len(test)]
    floor_imgs = train.images[floor_idx]
    names = meta["class_names"]

    gen_f, gen_pred = embed(clf, fake)
    test_f, test_pred = embed(clf, test.images)
    floor_f, _ = embed(clf, floor_imgs)
    labels_t = torch.from_numpy(labels)
    correct = (gen_pred == labels_t).float()
    per_class_acc = {names[c]: correct[labels_t == c].mean().item() for c in range(len(names))}

    feature: nn.Module | int = DomainFeatures(clf) if features == "domain" else inception_feature()
    model_scores = fid_kid(feature, test.images, fake)
    floor_scores = fid_kid(feature, test.images, floor_imgs)
    precision, recall = precision_recall(test_f, gen_f)
    floor_precision, floor_recall = precision_recall(test_f, floor_f)
    diversity = class_diversity(gen_f, labels_t, test_f, test.labels, len(names))
    ratios = {names[c]: d["ratio"] for c, d in enumerate(diversity)}
    return {
        "checkpoint": str(checkpoint),
        "kind": CONDITIONAL,
        "feature_space": "domain" if features == "domain" else "inception-v3 pool3 (2048)",
        "classifier": str(clf_path),
        "classifier_test_accuracy": (test_pred == test.labels).float().mean().item(),
        "num_generated": len(fake), "num_real": len(test), "seed": seed, "truncation": truncation,
        "conditional_accuracy": (correct.mean().item()), "conditional_accuracy_per_class": per_class_acc,
        "fid": model_scores["fid"], "fid_floor": floor_scores["fid"],
        "kid": model_scores["kid"], "kid_std": model_scores["kid_std"], "kid_floor": floor_scores["kid"],
        "precision": precision, "recall": recall,
        "precision_floor": floor_precision, "recall_floor": floor_recall,
        "diversity_ratio_per_class": ratios,
        "diversity_ratio_min": min(ratios.values()),
        "low_diversity_classes": [n for n, r in ratios.items() if r < 0.85],
        "diversity_per_class": {names[c]: d for c, d in enumerate(diversity)},
    }


def _unit(images: np.ndarray) -> torch.Tensor:
    return as_nchw(images).float() / 255


def pixel_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean per-image L1 (in [0, 1] units), PSNR (dB) and SSIM (torchmetrics) between uint8 image sets."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    p, t = _unit(pred), _unit(target)
    return {"l1": (p - t).abs().mean().item(),
            "psnr": peak_signal_noise_ratio(p, t, data_range=1.0, dim=(1, 2, 3)).item(),
            "ssim": structural_similarity_index_measure(p, t, data_range=1.0).item()}


def evaluate_translation(checkpoint: str, classifier: str | None = None, seed: int = 0, features: str = "domain",
                         device: str = "auto", limit: int | None = None) -> dict[str, Any]:
    """Image-to-image report on the test split: L1/PSNR/SSIM against the targets (and of the input itself
    where its channels match), FID/KID in the domain feature space beside the real-vs-real floor, and class
    preservation (the domain classifier's accuracy on the outputs against the true labels)."""
    from models import read_metadata

    from .translate import translate_dataset

    meta = read_metadata(checkpoint)
    prov = meta.get("provenance", {})
    dataset = prov.get("dataset")
    root = (prov.get("config") or {}).get("data", {}).get("root")
    arrays = translate_dataset(checkpoint, dataset, "test", root, limit=limit, device=device)
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "kind": IMAGE_TO_IMAGE,
                              "derivation": meta["task"].get("derivation"), "num_images": len(arrays["outputs"]),
                              **pixel_metrics(arrays["outputs"], arrays["targets"])}
    if arrays["inputs"].shape == arrays["targets"].shape:
        report.update({f"input_{k}": v for k, v in pixel_metrics(arrays["inputs"], arrays["targets"]).items()})
    clf_path = Path(classifier) if classifier else (default_classifier(dataset) if dataset in DEFAULT_CLASSIFIERS
                                                    else None)
    if clf_path is None:
        return report  # no domain feature space for this data: pixel metrics only
    clf, clf_meta = load(clf_path, pick_device(device))
    outputs, targets = as_nchw(arrays["outputs"]), as_nchw(arrays["targets"])
    feature: nn.Module | int = DomainFeatures(clf) if features == "domain" else inception_feature()
    train = load_dataset(dataset, "train", root, channels=meta["img_channels"])
    floor_idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(targets)]
    scores = fid_kid(feature, targets, outputs)
    floor = fid_kid(feature, targets, train.images[floor_idx])
    report.update({"feature_space": "domain" if features == "domain" else "inception-v3 pool3 (2048)",
                   "classifier": str(clf_path), "fid": scores["fid"], "kid": scores["kid"],
                   "fid_floor": floor["fid"], "kid_floor": floor["kid"]})
    inputs = as_nchw(arrays["inputs"])
    if inputs.shape == targets.shape:
        report["input_fid"] = fid_kid(feature, targets, inputs)["fid"]
    if "labels" in arrays:
        labels = torch.from_numpy(arrays["labels"])
        report["class_preservation"] = (embed(clf, outputs)[1] == labels).float().mean().item()
        report["classifier_accuracy_on_targets"] = (embed(clf, targets)[1] == labels).float().mean().item()
        if inputs.shape == targets.shape:
            report["input_class_preservation"] = (embed(clf, inputs)[1] == labels).float().mean().item()
    return report


def evaluate(checkpoint: str, classifier: str | None = None, per_class: int = 1000, seed: int = 0,
             features: str = "domain", device: str = "auto", record: bool = False,
             truncation: float | None = None) -> dict[str, Any]:
    """Evaluate any checkpoint by its kind; with `record`, store the headline metrics in its metadata."""
    from models import read_metadata

    kind = read_metadata(checkpoint).get("kind")
    if kind == CONDITIONAL:
        report = evaluate_conditional(checkpoint, classifier, per_class, seed, features, device, truncation)
    elif kind == IMAGE_TO_IMAGE:
        report = evaluate_translation(checkpoint, classifier, seed, features, device)
    else:
        raise ValueError(f"cannot evaluate a {kind!r} checkpoint; supported: {list(GENERATOR_KINDS)}")
    if record:
        module, meta = load(checkpoint)
        meta["metrics"] = {k: v for k, v in report.items() if isinstance(v, (int, float)) and k != "seed"}
        save(module, checkpoint, meta)
    return report
