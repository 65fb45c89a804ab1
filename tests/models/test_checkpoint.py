"""save -> load gives identical outputs; corrupt, truncated, foreign or future files fail with one clear error."""
import json

import pytest
import torch
from safetensors.torch import save_file

from models import ARCHITECTURES, build, load, read_metadata, save
from models.checkpoint import FORMAT, weights_path
from tests.models.test_architectures import TINY, run


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("as_folder", [True, False])
def test_round_trip_identical_outputs(tmp_path, name, as_folder):
    torch.manual_seed(0)
    module = build(name, TINY[name])
    # make BatchNorm statistics non-trivial so they must travel too
    module.train()
    for _ in range(2):
        run(module, TINY[name], batch=2)
    module.eval()
    path = tmp_path / ("ckpt" if as_folder else "ckpt.safetensors")
    save(module, path, {"kind": "test", "class_names": ["a", "b", "c"]})
    loaded, meta = load(path)
    assert type(loaded) is type(module) and loaded.config == module.config
    assert meta["architecture"] == name and meta["class_names"] == ["a", "b", "c"]
    for (key, want), got in zip(module.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(want, got), key
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in loaded.parameters() if p.dim() == 4)
    module.to(memory_format=torch.channels_last)  # the layout `load` gives on the CPU: then outputs are identical
    torch.manual_seed(1)
    a = run(module, TINY[name])
    torch.manual_seed(1)
    b = run(loaded, TINY[name])
    assert torch.equal(a, b)


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "g.safetensors"
    save(build("MLPGenerator", TINY["MLPGenerator"]), path, {"kind": "conditional"})
    return path


def test_truncated_file(ckpt):
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load(ckpt)


def test_garbage_file(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load(path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"framework": "other"})
    with pytest.raises(ValueError, match="not a ganforge checkpoint"):
        load(path)


def test_future_format_version(tmp_path, ckpt):
    meta = read_metadata(ckpt)
    meta["format_version"] = 99
    path = tmp_path / "future.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={FORMAT: json.dumps(meta)})
    with pytest.raises(ValueError, match="format_version 99"):
        load(path)


def test_weights_not_matching_config(tmp_path, ckpt):
    meta = read_metadata(ckpt)
    meta["config"]["z_dim"] = 9
    path = tmp_path / "mismatch.safetensors"
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={FORMAT: json.dumps(meta)})
    with pytest.raises(ValueError, match="weights do not match MLPGenerator"):
        load(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        weights_path(tmp_path / "nope")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    module = build("MLPGenerator", TINY["MLPGenerator"])
    save(module, tmp_path / "c", {"kind": "conditional"})
    save(module, tmp_path / "c", {"kind": "conditional"})  # overwrite in place
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["model.safetensors"]


def test_unregistered_module_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a registered architecture"):
        save(torch.nn.Linear(2, 2), tmp_path / "x.safetensors", {})


def test_the_metadata_builder_and_its_readers():
    from models.checkpoint import (CONDITIONAL, IMAGE_TO_IMAGE, KINDS, NORMALIZATION, build_metadata, image_geometry,
                                   model_resolution, normalization, require_kind, task_channels)

    meta = build_metadata(IMAGE_TO_IMAGE, ("a", "b"), 32, 3, (28, 30), task={"source_channels": 1,
                                                                              "target_channels": 3})
    assert meta == {"kind": "image-to-image", "class_names": ["a", "b"], "img_resolution": 32, "img_channels": 3,
                    "native_size": [28, 30], "normalization": {"mean": 0.5, "std": 0.5},
                    "task": {"source_channels": 1, "target_channels": 3}}
    assert json.loads(json.dumps(meta)) == meta  # plain JSON, as the safetensors header stores it
    assert meta["normalization"] is not NORMALIZATION  # a copy: editing one checkpoint's metadata cannot leak
    assert image_geometry(meta) == (3, 28, 30) and model_resolution(meta) == 32 and task_channels(meta) == (1, 3)
    assert normalization(meta) == NORMALIZATION
    # what a reader assumes for a hand-made checkpoint without geometry: 32 x 32, one channel, [-1, 1]
    assert image_geometry({}) == (1, 32, 32) and normalization({}) == {"mean": 0.5, "std": 0.5}
    assert task_channels({}) == (1, 1)
    with pytest.raises(ValueError, match=r"unknown checkpoint kind 'gan'; allowed: \['conditional'"):
        build_metadata("gan", [], 32, 1, (32, 32))
    assert set(KINDS) == {"conditional", "image-to-image", "classifier", "discriminator"}
    require_kind(meta, IMAGE_TO_IMAGE, "x")
    with pytest.raises(ValueError, match="x is a 'image-to-image' checkpoint; augmentation needs a 'conditional' one"):
        require_kind(meta, CONDITIONAL, "x", "augmentation")
