"""The domain classifier's training recipe (`training.classifier`), shared by `train-classifier` and benchmarks."""
from __future__ import annotations

import torch

from models import DomainClassifier, DomainClassifierConfig
from training.classifier import accuracy, epoch_batches, fit_classifier, random_batches
from training.data import ImageData, load_dataset


def test_epoch_batches_visit_every_item_once_per_epoch_in_full_batches():
    batches = list(epoch_batches(10, 3, 2, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [3] * 6  # 10 // 3 full batches per epoch; the rest is dropped
    for epoch in (batches[:3], batches[3:]):
        seen = torch.cat(epoch).tolist()
        assert len(set(seen)) == 9 and set(seen) <= set(range(10))
    assert torch.cat(batches[:3]).tolist() != torch.cat(batches[3:]).tolist()  # a fresh permutation each epoch


def test_random_batches_give_the_same_compute_for_any_set_size():
    for n in (5, 5000):
        batches = list(random_batches(n, 8, 7, torch.Generator().manual_seed(0)))
        assert len(batches) == 7 and all(len(b) == 8 and 0 <= int(b.min()) and int(b.max()) < n for b in batches)


def fresh(data: ImageData, seed: int) -> DomainClassifier:
    torch.manual_seed(seed)
    return DomainClassifier(DomainClassifierConfig(num_classes=len(data.class_names),
                                                   img_resolution=data.images.shape[-1],
                                                   img_channels=data.images.shape[1], width=8))


def test_fit_classifier_learns_and_is_deterministic():
    train, test = load_dataset("shapes", "train"), load_dataset("shapes", "test")
    train = ImageData(train.images[:512], train.labels[:512], train.class_names, train.name)
    runs = []
    for _ in range(2):
        model = fresh(train, 0)
        gen = torch.Generator().manual_seed(0)
        batches = ((train.images[idx], train.labels[idx]) for idx in random_batches(len(train), 32, 40, gen))
        fit_classifier(model, batches, 40, gen)
        runs.append(model)
    assert accuracy(fresh(train, 0), test) < 0.5 < accuracy(runs[0], test)
    a, b = runs[0].state_dict(), runs[1].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
