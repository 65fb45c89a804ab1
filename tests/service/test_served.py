"""Device/dtype choice and its low-precision safety check (on CPU, where bfloat16/float16 also run); the served model."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import models


def test_auto_on_cpu_is_float32_unchecked(checkpoints):
    from service.precision import choose_dtype

    G, meta = models.load(checkpoints["tiny-cgan"])
    module, dtype, check = choose_dtype(G, meta, torch.device("cpu"), "auto")
    assert module is G and dtype == torch.float32 and check == {"requested": "auto", "checked": False}


@pytest.mark.parametrize("name", ["tiny-cgan", "tiny-i2i"])
def test_requested_bfloat16_is_checked_and_kept_when_close(checkpoints, name):
    from service.precision import MAX_MEAN_LEVEL_DIFF, choose_dtype

    G, meta = models.load(checkpoints[name])
    module, dtype, check = choose_dtype(G, meta, torch.device("cpu"), "bfloat16")
    assert dtype == torch.bfloat16 and next(module.parameters()).dtype == torch.bfloat16
    assert check["checked"] and check["tried"][0]["mean_level_diff"] <= MAX_MEAN_LEVEL_DIFF
    assert next(G.parameters()).dtype == torch.float32  # the float32 original is untouched


@pytest.mark.parametrize("low_seconds,expected", [(0.5, torch.bfloat16), (0.95, torch.float32)])
def test_auto_keeps_an_accurate_low_precision_only_when_it_is_faster(checkpoints, monkeypatch, low_seconds,
                                                                       expected):
    import service.precision as precision

    G, meta = models.load(checkpoints["tiny-cgan"])
    monkeypatch.setitem(precision.AUTO_CANDIDATES, "cpu", (torch.bfloat16,))  # stands in for CUDA's list
    fake = {torch.float32: 1.0, torch.bfloat16: low_seconds}
    monkeypatch.setattr(precision, "_seconds", lambda module, meta: fake[next(module.parameters()).dtype])
    module, dtype, check = precision.choose_dtype(G, meta, torch.device("cpu"), "auto")
    assert dtype == expected and next(module.parameters()).dtype == expected
    assert check["float32_seconds"] == 1.0 and check["tried"][0]["seconds"] == low_seconds
    assert check.get("fallback") == (None if expected == torch.bfloat16 else "float32")
    assert check["tried"][0].get("slower", False) == (expected == torch.float32)


def test_auto_times_its_candidates_for_real(checkpoints, monkeypatch):
    import service.precision as precision

    G, meta = models.load(checkpoints["tiny-i2i"])
    monkeypatch.setitem(precision.AUTO_CANDIDATES, "cpu", (torch.bfloat16,))
    _, dtype, check = precision.choose_dtype(G, meta, torch.device("cpu"), "auto")
    low, ref = check["tried"][0]["seconds"], check["float32_seconds"]
    assert low > 0 and ref > 0
    assert (dtype == torch.bfloat16) == (low * precision.MIN_SPEEDUP <= ref)  # the evidence decides


def test_low_precision_that_breaks_the_model_falls_back_to_float32(checkpoints):
    from service.precision import choose_dtype

    G, meta = models.load(checkpoints["tiny-cgan"])
    G = copy.deepcopy(G)
    with torch.no_grad():
        G.fc.weight.mul_(1e6)  # activations beyond float16's range (65504): inf/NaN in half precision
    module, dtype, check = choose_dtype(G, meta, torch.device("cpu"), "float16")
    assert dtype == torch.float32 and module is G
    assert check["fallback"] == "float32" and check["tried"][0]["max_level_diff"] > 100


def test_served_model_reports_device_dtype_and_counts(store):
    import bentoml

    from service.served import load_served, render

    stored = bentoml.models.get(store["tiny-cgan"])
    full = load_served("tiny-cgan", stored, "cpu", "float32")
    half = load_served("tiny-cgan", stored, "cpu", "bfloat16")
    assert (full.info()["dtype"], half.info()["dtype"], half.info()["device"]) == ("float32", "bfloat16", "cpu")
    a, b = render(full, [1, 2, 3], [5, 6, 7], None), render(half, [1, 2, 3], [5, 6, 7], None)
    assert a.shape == b.shape == (3, 28, 28)
    assert np.abs(a.astype(int) - b.astype(int)).mean() <= 1.0
    assert (full.forward_passes, full.images) == (1, 3)


def test_missing_store_model_fails_with_the_fix():
    from service.served import load_served

    with pytest.raises(FileNotFoundError, match="ganforge export"):
        load_served("absent", None)
