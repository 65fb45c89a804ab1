"""The benefit benchmark's experiment design (benchmarks/augment_benefit.py; the benchmark itself is run by
hand): which rows a plan trains, and that the mixed recipe really feeds the stated synthetic fraction."""
from __future__ import annotations

import pytest
import torch

from benchmarks.augment_benefit import EVALUATORS, FULL, benefit_markdown, conditions, fit_and_test, mixed, uniform
from training.data import ImageData


def test_the_plan_has_every_recipe_at_every_size_and_the_same_compute():
    plan = conditions([50, 6000], [1], [4000], True, ["mix:0.5", "filtered:0.5", "mix:0.2", "pretrain"], 4000)
    names = [c["name"] for c in plan]
    assert names == ["real 50", "real 50 + syn 1:1", "real 50 + mix 0.5", "real 50 + filtered mix 0.5",
                     "real 50 + mix 0.2", "real 50: pretrain syn, finetune",
                     "real 6000", "real 6000 + mix 0.5", "real 6000 + filtered mix 0.5", "real 6000 + mix 0.2",
                     "real 6000: pretrain syn, finetune",  # no fixed 1:r set from 1000 up, no second full row
                     "syn only 4000", "filtered syn only 4000"]
    assert [c.get("fraction") for c in plan[2:5]] == [0.5, 0.5, 0.2]
    assert all(c["pool"] == "filtered" for c in plan if "filtered" in c["name"])
    assert conditions([50], [], [], True)[-1]["real"] == FULL
    d_plan = conditions([50], [], [4000], False, ["dfiltered:0.5"], 4000)
    assert [(c["name"], c.get("pool")) for c in d_plan] == [
        ("real 50", None), ("real 50 + D-filtered mix 0.5", "dfiltered"), ("syn only 4000", None),
        ("dfiltered syn only 4000", "dfiltered")]
    with pytest.raises(ValueError, match="unknown recipe 'pool'"):
        conditions([50], [], [], False, ["pool"])


def test_mixed_batches_hold_the_stated_synthetic_fraction_and_uniform_covers_its_set():
    real = (torch.zeros(30, 1, 4, 4, dtype=torch.uint8), torch.zeros(30, dtype=torch.long))
    syn = (torch.full((500, 1, 4, 4), 255, dtype=torch.uint8), torch.ones(500, dtype=torch.long))
    gen = torch.Generator().manual_seed(0)
    batches = list(mixed(real, syn, 0.25, 64)(gen, 5))
    assert len(batches) == 5
    for images, labels in batches:
        assert images.shape == (64, 1, 4, 4) and int((labels == 1).sum()) == 16
        assert torch.equal(images[labels == 1], torch.full((16, 1, 4, 4), 255, dtype=torch.uint8))
    seen = torch.cat([y for _, y in uniform(*syn, 64)(torch.Generator().manual_seed(1), 3)])
    assert len(seen) == 192 and bool((seen == 1).all())


def test_annealed_and_filtered_pretrain_recipes_name_their_pool_and_bad_ones_are_refused():
    plan = conditions([200], [], [], False, ["filtered:0.5:anneal", "mix:0.3:anneal", "pretrain:filtered",
                                             "pretrain"], 4000)
    assert [(c["name"], c["recipe"], c.get("pool"), c.get("anneal", False)) for c in plan] == [
        ("real 200", "union", None, False),
        ("real 200 + filtered mix 0.5→0", "mix", "filtered", True),
        ("real 200 + mix 0.3→0", "mix", None, True),
        ("real 200: pretrain filtered syn, finetune", "pretrain", "filtered", False),
        ("real 200: pretrain syn, finetune", "pretrain", None, False)]
    for bad in ("filtered:0.5:slow", "mix", "mix:2", "mix:0", "mix:x", "mix:0.5:", "pretrain:mix", "pretrain:filtered:0.5",
                "anneal:0.5"):
        with pytest.raises(ValueError, match=f"unknown recipe '{bad}'; allowed: mix:A"):
            conditions([50], [], [], False, [bad])


def test_an_annealed_mix_falls_linearly_from_the_stated_fraction_to_no_synthetic_row():
    real = (torch.zeros(30, 1, 4, 4, dtype=torch.uint8), torch.zeros(30, dtype=torch.long))
    syn = (torch.full((500, 1, 4, 4), 255, dtype=torch.uint8), torch.ones(500, dtype=torch.long))
    batches = list(mixed(real, syn, 0.5, 64, anneal=True)(torch.Generator().manual_seed(0), 5))
    assert [int((labels == 1).sum()) for _, labels in batches] == [32, 24, 16, 8, 0]
    assert all(images.shape == (64, 1, 4, 4) for images, _ in batches)


@pytest.mark.parametrize("evaluator", sorted(EVALUATORS))
def test_every_evaluator_trains_from_scratch_on_the_stages_and_is_named_in_the_report(evaluator):
    torch.manual_seed(0)
    model = EVALUATORS[evaluator](8, 28)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    # two separable classes (dark vs bright images): a few steps of either network learn them
    images = torch.cat([torch.zeros(32, 1, 28, 28), torch.full((32, 1, 28, 28), 255.0)]).to(torch.uint8)
    labels = torch.cat([torch.zeros(32), torch.ones(32)]).long()
    test = ImageData(images, labels, ["dark", "bright"], "toy")
    acc = fit_and_test([(uniform(images, labels, 16), 30)], test, 8, 0, torch.device("cpu"), evaluator)
    assert acc == 1.0
    row = {"name": "real 50", "real": 50, "syn": 0, "mean": acc, "std": 0.0}
    text = benefit_markdown({"when": "now", "machine": "m", "device": "cpu", "checkpoint": "c",
                             "checkpoint_sha256": "0" * 64, "truncation": None, "width": 8, "evaluator": evaluator,
                             "steps": 30, "batch_size": 16, "seeds": 1, "rows": [row]})
    assert {"domain": "DomainClassifier width 8", "mlp": "MLP 512-256", "resnet18": "torchvision ResNet-18"}[evaluator] in text
