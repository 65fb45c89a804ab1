"""The served model: its backend (chosen by `backends.choose`, tested in tests/backends/), what /models says
about it, counters, its weights check, and the settings that steer the choice."""
from __future__ import annotations

import numpy as np
import pytest

import models


def test_served_model_reports_device_backend_and_counts(store):
    import bentoml

    from service.served import load_served, render

    stored = bentoml.models.get(store["tiny-cgan"])
    full = load_served("tiny-cgan", stored, "cpu", "torch")
    low = load_served("tiny-cgan", stored, "cpu", "torch-autocast")
    assert (full.info()["dtype"], low.info()["dtype"], low.info()["device"]) == ("float32", "bfloat16", "cpu")
    assert full.info()["backend"] == {"name": "torch", "precision": "float32",
                                      "by_batch_size": {"1": "torch", "8": "torch", "32": "torch", "64": "torch"},
                                      "runtimes": {"torch": {"backend": "torch", "precision": "float32",
                                                             "device": "cpu"}}}
    check = low.info()["precision_check"]
    assert check["requested"] == "torch-autocast" and check["candidates"][1]["accurate"]
    a, b = render(full, [1, 2, 3], [5, 6, 7], None), render(low, [1, 2, 3], [5, 6, 7], None)
    assert a.shape == b.shape == (3, 28, 28)
    assert np.abs(a.astype(int) - b.astype(int)).mean() <= 1.0
    assert (full.forward_passes, full.images) == (1, 3)
    G, meta = models.load(stored.path)
    assert np.array_equal(a, models.sampling.to_uint8(models.sampling.generate(G, [1, 2, 3], [5, 6, 7]), meta))


def test_auto_times_the_sizes_the_server_runs_and_float32_keeps_low_precision_out(store):
    import bentoml

    from service.served import batch_sizes, load_served

    assert batch_sizes("conditional", 64, 32) == (1, 8, 32, 64)
    assert batch_sizes("conditional", 4, 32) == (1, 4, 32) and batch_sizes("image-to-image", 64, 32) == (1,)
    stored = bentoml.models.get(store["tiny-cgan"])
    served = load_served("tiny-cgan", stored, "cpu", "auto", "float32", max_batch_size=16, job_batch_size=4)
    check = served.info()["precision_check"]
    assert check["batch_sizes"] == [1, 4, 8, 16]
    assert [c["backend"] for c in check["candidates"]] == ["torch", "onnxruntime"]  # no torch-autocast
    assert all(set(c["seconds"]) == {"1", "4", "8", "16"} for c in check["candidates"])
    assert set(served.info()["backend"]["by_batch_size"].values()) <= {"torch", "onnxruntime"}
    with pytest.raises(ValueError, match="GANFORGE_DTYPE=float32 leaves it none"):
        load_served("tiny-cgan", stored, "cpu", "torch-autocast", "float32")


def test_missing_store_model_fails_with_the_fix():
    from service.served import load_served

    with pytest.raises(FileNotFoundError, match="ganforge export"):
        load_served("absent", None)


def test_damaged_weights_are_refused_naming_the_model_and_both_hashes(store, tmp_path):
    import shutil
    from types import SimpleNamespace

    import bentoml

    from service.served import ModelMismatch, load_served

    stored = bentoml.models.get(store["tiny-cgan"])
    copy_dir = tmp_path / "copy"
    shutil.copytree(stored.path, copy_dir)
    weights = copy_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = bytes(4096)
    weights.write_bytes(bytes(data))
    fake = SimpleNamespace(path=str(copy_dir), tag=stored.tag, info=stored.info)
    recorded = stored.info.metadata["sha256"]
    with pytest.raises(ModelMismatch, match=f"'tiny-cgan'.*{recorded}") as e:
        load_served("tiny-cgan", fake, "cpu", "torch")
    assert models.checkpoint.file_hash(copy_dir) in str(e.value)
    assert load_served("tiny-cgan", stored, "cpu", "torch").info()["sha256"] == recorded  # intact: served
