"""Inference backends and the choice among them: accuracy against float32 eager, selection by fake and real
timings per batch size, and a backend that fails the precision check is never served."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import models
from backends import BACKENDS, available, choose
from backends.select import MAX_LEVEL_DIFF, MAX_MEAN_LEVEL_DIFF, MIN_SPEEDUP, build, probe
from models.sampling import generate, to_uint8, translate

from .conftest import SERVABLE


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("name", sorted(SERVABLE))
def test_every_backend_reproduces_float32_through_models_sampling(servable, name, backend):
    module, meta = models.load(servable[name])
    b = build(backend, module, meta, torch.device("cpu"))
    assert b.precision == ("bfloat16" if backend == "torch-autocast" else "float32")
    for batch in (1, 5):
        if meta["kind"] == "conditional":
            labels, seeds = [i % 10 for i in range(batch)], list(range(100, 100 + batch))
            ref = to_uint8(generate(module, labels, seeds), meta)
            got = to_uint8(generate(b, labels, seeds), meta)
        else:
            src = np.random.default_rng(batch).integers(0, 256, (batch, 20, 36), dtype=np.uint8)  # padded to 8
            ref, got = translate(module, src, meta), translate(b, src, meta)
        assert got.shape == ref.shape and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - ref.astype(int))
        if backend == "torch-autocast":
            assert diff.mean() <= MAX_MEAN_LEVEL_DIFF and diff.max() <= MAX_LEVEL_DIFF
        else:
            assert diff.max() <= 1  # float32 everywhere: at most a rounding flip


def test_auto_candidates_on_this_cpu():
    assert available("cpu") == ["torch", "torch-autocast", "onnxruntime"]


def fake_timer(table):
    """Seconds per batch from `table` for the backends and sizes `choose` times; the real timing never runs."""
    return lambda backends, sizes: {n: {b: table[n][b] for b in sizes} for n in backends}


@pytest.mark.parametrize("table,served", [
    # ONNX Runtime fastest at 1, autocast at 64: one Selection with both
    ({"torch": {1: 1.0, 64: 10.0}, "torch-autocast": {1: 1.2, 64: 4.0}, "onnxruntime": {1: 0.3, 64: 5.0}},
     ["onnxruntime", "torch-autocast"]),
    # faster, but not MIN_SPEEDUP times faster: float32 eager stays
    ({"torch": {1: 1.0, 64: 10.0}, "torch-autocast": {1: 0.95, 64: 9.5}, "onnxruntime": {1: 0.99, 64: 9.9}},
     ["torch", "torch"]),
    ({"torch": {1: 1.0, 64: 10.0}, "torch-autocast": {1: 2.0, 64: 20.0}, "onnxruntime": {1: 0.5, 64: 2.0}},
     ["onnxruntime", "onnxruntime"]),
])
def test_auto_serves_the_fastest_accurate_backend_per_batch_size(servable, table, served):
    module, meta = models.load(servable["ConditionalGenerator"])
    sel = choose(module, meta, "cpu", "auto", batch_sizes=(64, 1), timer=fake_timer(table))
    assert sel.sizes == [1, 64] and sel.served == served
    assert sel.report["served"] == {"1": served[0], "64": served[1]}
    assert set(sel.backends) == set(served)  # the others are dropped, not kept in memory
    assert [sel.for_batch(b).name for b in (1, 2, 64, 200)] == [served[0], served[1], served[1], served[1]]
    timed = {c["backend"]: c["seconds"] for c in sel.report["candidates"]}
    assert timed == {n: {str(b): t for b, t in v.items()} for n, v in table.items()}
    assert sel.report["speedup"]["64"] == round(10.0 / table[served[1]][64], 3)
    # and it serves: images through the selection equal those of the backends it picked
    for batch in (1, 3):
        out = generate(sel, [7] * batch, list(range(batch)))
        direct = generate(sel.for_batch(batch), [7] * batch, list(range(batch)))
        assert torch.equal(out, direct) and out.shape == (batch, 3, 32, 32)


def test_auto_times_its_candidates_for_real(servable):
    module, meta = models.load(servable["UNetGenerator"])
    sel = choose(module, meta, "cpu", "auto", batch_sizes=(1, 4))
    timed = {c["backend"]: c["seconds"] for c in sel.report["candidates"]}
    assert set(timed) == {"torch", "torch-autocast", "onnxruntime"}
    for b, name in zip(("1", "4"), sel.served):
        assert all(t > 0 for t in (timed[n][b] for n in timed))
        best = min(timed, key=lambda n: timed[n][b])
        expected = best if timed[best][b] * MIN_SPEEDUP <= timed["torch"][b] else "torch"
        assert name == expected  # the evidence decides
    assert sel.describe()["by_batch_size"] == {"1": sel.served[0], "4": sel.served[1]}


def test_auto_times_the_candidates_interleaved_with_a_rotating_order(monkeypatch):
    import backends.select as select

    calls = []

    class Fake:
        def __init__(self, name):
            self.name, self.meta = name, {}

    def fake_probe(backend, meta, size):
        calls.append((backend.name, size))

    monkeypatch.setattr(select, "probe", fake_probe)
    fakes = {n: Fake(n) for n in ("torch", "a", "b")}
    timings = select.interleaved(fakes, (1, 64), rounds=3, drop=float("inf"))  # no-op fakes: nobody dropped
    assert set(timings) == {"torch", "a", "b"} and all(set(t) == {1, 64} for t in timings.values())
    timed = calls[2 * 3 * 2:]  # after two warm-up calls per (size, backend)
    assert len(timed) == 3 * 2 * 3
    assert [n for n, _ in timed[:6]] == ["torch", "a", "b"] * 2  # round 0, sizes 1 then 64
    assert [n for n, _ in timed[6:9]] == ["a", "b", "torch"]  # round 1 starts one further on
    assert [n for n, _ in timed[12:15]] == ["b", "torch", "a"]


def test_a_candidate_far_slower_at_every_size_is_not_timed_after_its_warm_up(monkeypatch):
    import time

    import backends.select as select

    calls = []
    cost = {("torch", 1): 0.002, ("torch", 8): 0.004, ("slow", 1): 0.02, ("slow", 8): 0.04,  # 10x: dropped
            ("late", 1): 0.02, ("late", 8): 0.001}  # slow at 1 but the fastest at 8: kept

    class Fake:
        def __init__(self, name):
            self.name, self.meta = name, {}

    def fake_probe(backend, meta, size):
        calls.append((backend.name, size))
        time.sleep(cost[backend.name, size])

    monkeypatch.setattr(select, "probe", fake_probe)
    timings = select.interleaved({n: Fake(n) for n in ("torch", "slow", "late")}, (1, 8), rounds=2)
    timed = calls[2 * 3 * 2:]  # after the warm-ups
    assert {n for n, _ in timed} == {"torch", "late"} and len(timed) == 2 * 2 * 2
    assert set(timings) == {"torch", "slow", "late"}  # the dropped one keeps its warm-up figure as evidence
    assert timings["slow"][1] >= 0.02 and timings["slow"][8] >= 0.04
    assert min(timings, key=lambda n: timings[n][8]) == "late"


def broken_for_float16(module):
    """Activations beyond float16's range (65504): inf/NaN under float16 autocast, fine in float32."""
    module = copy.deepcopy(module)
    with torch.no_grad():
        module.fc.weight.mul_(1e6)
    return module


def test_a_backend_failing_the_precision_check_is_never_served(servable):
    module, meta = models.load(servable["ConditionalGenerator"])
    module = broken_for_float16(module)
    fastest = {"torch": {1: 1.0, 8: 1.0}, "torch-autocast": {1: 0.01, 8: 0.01}, "onnxruntime": {1: 2.0, 8: 2.0}}
    sel = choose(module, meta, "cpu", "auto", (1, 8), low_dtype=torch.float16, timer=fake_timer(fastest))
    entry = next(c for c in sel.report["candidates"] if c["backend"] == "torch-autocast")
    assert entry["precision"] == "float16" and not entry["accurate"] and entry["max_level_diff"] > MAX_LEVEL_DIFF
    assert "seconds" not in entry and "torch-autocast" not in sel.backends and sel.served == ["torch", "torch"]
    # requested by name, it is refused too: float32 eager serves, and the report says so
    sel = choose(module, meta, "cpu", "torch-autocast", (1, 8), low_dtype=torch.float16)
    assert sel.served == ["torch", "torch"] and sel.report["fallback"] == "torch"
    assert torch.equal(probe_tensor(sel, meta), probe_tensor(module, meta))


def probe_tensor(generator, meta):
    return torch.from_numpy(probe(generator, meta))


def test_a_backend_that_cannot_run_is_reported_not_served(servable, monkeypatch):
    import backends.select as select

    module, meta = models.load(servable["MLPGenerator"])

    def unavailable(*args, **kwargs):
        raise RuntimeError("CUDAExecutionProvider is not available\nsecond line")

    monkeypatch.setitem(select.BACKENDS, "onnxruntime", unavailable)
    sel = choose(module, meta, "cpu", "onnxruntime")
    assert sel.served == ["torch", "torch"] and sel.report["fallback"] == "torch"
    entry = sel.report["candidates"][-1]
    assert entry == {"backend": "onnxruntime", "accurate": False,
                     "error": "RuntimeError: CUDAExecutionProvider is not available"}


def test_requested_backend_is_served_when_accurate_and_names_are_checked(servable):
    module, meta = models.load(servable["UNetGenerator"])
    sel = choose(module, meta, "cpu", "onnxruntime", (1,))
    assert sel.name == "onnxruntime" and "fallback" not in sel.report
    assert sel.describe()["runtimes"]["onnxruntime"]["providers"] == ["CPUExecutionProvider"]
    assert choose(module, meta, "cpu", "torch").report["candidates"] == [
        {"backend": "torch", "precision": "float32", "reference": True}]
    with pytest.raises(ValueError, match=r"unknown backend 'tensorflow'; allowed: \['auto', 'torch'"):
        choose(module, meta, "cpu", "tensorflow")
