"""ONNX / TorchScript export: parity for every servable architecture at several batch sizes, the embedded
metadata, the refusal above the parity bound, and the documented onnxruntime-only snippet."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import models
from backends.export import PARITY_BOUND, ParityError, export_model, onnx_runner, read_exported_metadata
from backends.signature import example_inputs
from models.checkpoint import file_hash
from models.sampling import to_uint8
from tests.conftest import PROJECT_ROOT

from .conftest import FASHION, SERVABLE

FORMATS = ("onnx", "torchscript")
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load. is deprecated:FutureWarning")


def test_every_generator_architecture_is_covered():
    assert set(SERVABLE) == {name for name in models.ARCHITECTURES if name.endswith("Generator")}


def runner(path, fmt):
    if fmt == "onnx":
        return onnx_runner(str(path))
    return torch.jit.load(str(path), map_location="cpu")


@pytest.fixture(scope="module")
def exported(servable, tmp_path_factory):
    """(architecture, format) -> (export report, file)."""
    out = tmp_path_factory.mktemp("exported")
    return {(name, fmt): (export_model(path, out / f"{name}.{fmt}", fmt), out / f"{name}.{fmt}")
            for name, path in servable.items() for fmt in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(SERVABLE))
def test_export_matches_pytorch_at_every_batch_size(servable, exported, name, fmt):
    report, path = exported[(name, fmt)]
    assert 0 <= report["parity"]["max_abs_diff"] <= PARITY_BOUND == report["parity"]["bound"]
    module, meta = models.load(servable[name])
    run = runner(path, fmt)
    sizes = [None] if meta["kind"] == "conditional" else [None, (16, 40)]  # dynamic H, W for the U-Net
    for batch in (1, 2, 7, 16):
        for size in sizes:
            inputs = example_inputs(module, meta, batch, size, seed=batch)
            with torch.no_grad():
                expected, got = module(*inputs), run(*inputs)
            assert got.shape == expected.shape and got.shape[0] == batch
            assert float((got - expected).abs().max()) <= PARITY_BOUND, (batch, size)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(SERVABLE))
def test_metadata_round_trip(servable, exported, name, fmt):
    _, path = exported[(name, fmt)]
    source = models.read_metadata(servable[name])
    meta = read_exported_metadata(path)
    assert meta["ganforge"] == source
    for key in ("kind", "architecture", "class_names", "native_size", "normalization", "provenance"):
        assert meta[key] == source[key], key
    assert meta["source_sha256"] == file_hash(servable[name])
    assert meta["export"]["format"] == fmt and meta["parity"]["max_abs_diff"] <= PARITY_BOUND
    module, _ = models.load(servable[name])
    assert meta["img_resolution"] == module.img_resolution and meta["img_channels"] == module.img_channels
    if source["kind"] == "conditional":
        assert meta["inputs"] == ["z", "y"] and meta["z_dim"] == module.z_dim
    else:
        assert meta["inputs"] == ["x"] and meta["stride"] == module.stride and meta["task"] == source["task"]
    if fmt == "torchscript":  # the way torch users read it gives the same map
        extra = {"ganforge.json": ""}
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        assert {k: json.loads(v) for k, v in json.loads(extra["ganforge.json"]).items()} == meta
    else:
        import onnxruntime as ort

        props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        assert {k: json.loads(v) for k, v in props.custom_metadata_map.items()} == meta


def test_export_above_the_parity_bound_is_refused_and_writes_nothing(servable, tmp_path, monkeypatch):
    import backends.export as ex

    real = ex.onnx_bytes

    def perturbed(module, meta):  # a graph that is not the module: its output bias moved by 1e-3
        import copy

        broken = copy.deepcopy(module)
        with torch.no_grad():
            broken.out_conv.bias.add_(1e-3)
        return real(broken, meta)

    monkeypatch.setattr(ex, "onnx_bytes", perturbed)
    out = tmp_path / "g.onnx"
    with pytest.raises(ParityError, match=r"differs from PyTorch by 0\.00\d+.*bound is 0\.0001: not written"):
        export_model(servable["ConditionalGenerator"], out, "onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_requests_are_clear_errors(servable, tmp_path):
    with pytest.raises(ValueError, match=r"unknown export format 'tflite'; allowed: \['onnx', 'torchscript'\]"):
        export_model(servable["MLPGenerator"], tmp_path / "x", "tflite")
    d = models.build("PatchDiscriminator", {"base_channels": 4, "n_layers": 2, "img_resolution": 16})
    path = models.save(d, tmp_path / "d", {"kind": "discriminator"})
    with pytest.raises(ValueError, match="not a servable generator; exportable kinds"):
        export_model(path, tmp_path / "d.onnx", "onnx")
    with pytest.raises(FileNotFoundError):
        read_exported_metadata(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="neither a TorchScript archive nor an ONNX model"):
        read_exported_metadata(tmp_path / "junk.onnx")


def snippet(name: str) -> str:
    text = (PROJECT_ROOT / "docs" / "deploy.md").read_text()
    match = re.search(rf"<!-- snippet: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"docs/deploy.md has no snippet {name!r}"
    return match.group(1)


NO_TORCH = "import sys\nfor m in ('torch', 'models', 'backends', 'safetensors'):\n    sys.modules[m] = None\n"


def test_the_documented_onnxruntime_snippet_draws_sneakers_without_torch(servable, tmp_path):
    # the snippet's file name, with a generator that has the bundled model's classes and native size
    ckpt = servable["ConditionalGenerator"]
    export_model(ckpt, tmp_path / "fashion_mnist_cgan.onnx", "onnx")
    code = snippet("onnx-sneaker")
    probe = NO_TORCH + "try:\n    import torch\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('torch')\n"
    result = subprocess.run([sys.executable, "-I", "-c", probe + code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = (tmp_path / "sneaker.pgm").read_bytes()
    header, pixels = data.split(b"\n", 1)
    assert header == b"P5 224 28 255"  # 8 images of 28x28 side by side
    strip = np.frombuffer(pixels, dtype=np.uint8).reshape(28, 224)
    # the same noise through the PyTorch module: the same sneakers (RGB model: the snippet keeps channel 0)
    module, meta = models.load(ckpt)
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((8, module.z_dim)).astype(np.float32))
    label = FASHION.index("Sneaker")
    with torch.no_grad():
        images = to_uint8(module(z, torch.full((8,), label)), meta)[..., 0]
    assert np.abs(np.concatenate(list(images), axis=1).astype(int) - strip).max() <= 1
