"""The benefit benchmark's experiment design (benchmarks/augment_benefit.py; the benchmark itself is run by
hand): which rows a plan trains, and that the mixed recipe really feeds the stated synthetic fraction."""
from __future__ import annotations

import pytest
import torch

from benchmarks.augment_benefit import FULL, conditions, mixed, uniform


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
