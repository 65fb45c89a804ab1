"""`ganforge export --format`, and `sample` / `augment` with a backend choice."""
from __future__ import annotations

import numpy as np
import pytest

from backends import read_exported_metadata
from backends.select import MAX_LEVEL_DIFF, MAX_MEAN_LEVEL_DIFF
from training.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load. is deprecated:FutureWarning")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_format_writes_the_file_and_states_the_parity(servable, tmp_path, capsys, fmt):
    out = tmp_path / f"g.{fmt}"
    assert main(["export", str(servable["UNetGenerator"]), "--format", fmt, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"as {fmt} to {out}" in said and "max abs diff" in said and "<= 0.0001" in said
    assert read_exported_metadata(out)["export"]["format"] == fmt


@pytest.mark.parametrize("args,message", [
    (["--format", "onnx"], "with --out FILE"),
    (["--out", "x.onnx"], "with --out FILE"),
    (["--format", "onnx", "--out", "x.onnx", "--name", "g"], "not both"),
    ([], "give --name NAME"),
])
def test_export_needs_one_destination(servable, capsys, args, message):
    assert main(["export", str(servable["MLPGenerator"]), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ganforge export: error:") and message in err and err.count("\n") == 1


def close(a: np.ndarray, b: np.ndarray) -> bool:
    diff = np.abs(a.astype(int) - b.astype(int))
    return a.shape == b.shape and diff.mean() <= MAX_MEAN_LEVEL_DIFF and diff.max() <= MAX_LEVEL_DIFF


@pytest.mark.parametrize("backend", ["onnxruntime", "torch-autocast", "auto"])
def test_sample_and_augment_take_a_backend(servable, tmp_path, backend):
    ckpt = str(servable["ConditionalGenerator"])
    common = ["--per-class", "3", "--seed", "5", "--class", "sneaker", "--class", "bag"]
    assert main(["sample", ckpt, *common, "--out", str(tmp_path / "ref.npz")]) == 0
    assert main(["sample", ckpt, *common, "--out", str(tmp_path / "b.npz"), "--backend", backend]) == 0
    ref, got = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "b.npz")
    assert np.array_equal(ref["labels"], got["labels"]) and np.array_equal(ref["seeds"], got["seeds"])
    assert close(ref["images"], got["images"])
    job = ["--per-class", "2", "--format", "npz", "--seed", "9", "--batch-size", "8"]
    assert main(["augment", ckpt, *job, "--out", str(tmp_path / "ja")]) == 0
    assert main(["augment", ckpt, *job, "--out", str(tmp_path / "jb"), "--backend", backend]) == 0
    a, b = np.load(tmp_path / "ja" / "images.npz"), np.load(tmp_path / "jb" / "images.npz")
    assert len(a["images"]) == 20 and close(a["images"], b["images"])


def test_an_unknown_backend_is_one_line(servable, tmp_path, capsys):
    assert main(["sample", str(servable["MLPGenerator"]), "--out", str(tmp_path / "x.npz"), "--backend", "tvm"]) == 2
    assert "unknown backend 'tvm'; allowed: ['auto', 'torch', 'torch-autocast', 'onnxruntime']" in \
        capsys.readouterr().err
