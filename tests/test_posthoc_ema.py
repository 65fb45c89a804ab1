"""Weight snapshots (`snapshot_every`) and the generators built from them after a run (benchmarks/posthoc_ema.py):
a post-hoc EMA from a snapshot every step is the online EMA, and the raw export holds the training weights."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from benchmarks.posthoc_ema import export_posthoc, export_raw, snapshots
from models import load
from tests.training.helpers import tiny_run, train_tiny
from training.config import from_dict
from training.ema import posthoc_ema


@pytest.fixture(scope="module")
def snapped(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("snap")
    return tmp, train_tiny(tmp, steps=12, snapshot_every=1, ema_decay=0.9)


def _params(module):
    return dict(module.named_parameters())


def test_a_snapshot_every_step_gives_back_the_online_ema_exactly(snapped):
    tmp, ema_path = snapped
    steps = sorted(int(p.stem.split("_")[1]) for p in (tmp / "run" / "snapshots").glob("G_*.safetensors"))
    assert steps == list(range(13))  # step 0 (the EMA's start) to the last
    online, _ = load(ema_path)
    paths = export_posthoc(tmp / "run", [0.9, 0.5], tmp / "posthoc")  # several decays, one pass
    assert [p.parent.name for p in paths] == ["ema0.9", "ema0.5"]
    posthoc, meta = load(paths[0])
    for name, t in online.state_dict().items():  # weights and the recalibrated BatchNorm statistics
        assert torch.equal(posthoc.state_dict()[name], t), name
    assert "post-hoc EMA 0.9 at step 12 from 13 snapshots" in meta["note"]
    other, _ = load(paths[1])
    assert any(not torch.equal(_params(other)[n], p) for n, p in _params(online).items())


def test_sparse_snapshots_approximate_the_ema_and_the_step_zero_one_is_required(snapped):
    tmp, ema_path = snapped
    run = tmp / "run" / "snapshots"
    names = list(_params(load(ema_path)[0]))
    pick = [0, 4, 8, 12]
    exact = posthoc_ema(((s, load_file(str(run / f"G_{s:07d}.safetensors"))) for s in range(13)), [0.9], names)[0.9]
    sparse = posthoc_ema(((s, load_file(str(run / f"G_{s:07d}.safetensors"))) for s in pick), [0.9], names)[0.9]
    final = load_file(str(run / "G_0000012.safetensors"))
    for n in names:  # closer to the exact EMA than the last raw weights are
        assert (sparse[n] - exact[n]).norm() <= (final[n] - exact[n]).norm() + 1e-12, n
    with pytest.raises(ValueError, match="step-0 snapshot first; got step 4"):
        posthoc_ema(((s, load_file(str(run / f"G_{s:07d}.safetensors"))) for s in pick[1:]), [0.9], names)
    with pytest.raises(ValueError, match="increasing step order; got 4 after 8"):
        posthoc_ema(((s, load_file(str(run / f"G_{s:07d}.safetensors"))) for s in [0, 8, 4]), [0.9], names)


def test_the_raw_export_holds_the_training_weights_not_the_ema(snapped):
    tmp, ema_path = snapped
    raw, meta = load(export_raw(tmp / "run", tmp / "raw"))
    ema, ema_meta = load(ema_path)
    state = torch.load(tmp / "run" / "state.pt", map_location="cpu", weights_only=True)["G"]
    assert all(torch.equal(p, state[name]) for name, p in _params(raw).items())
    assert any(not torch.equal(p, _params(ema)[n]) for n, p in _params(raw).items())
    assert meta["class_names"] == ema_meta["class_names"] and "raw generator" in meta["note"]
    with torch.no_grad():
        images = raw.eval()(torch.randn(4, raw.z_dim), torch.arange(4))
    assert images.shape[0] == 4 and torch.isfinite(images).all()


def test_snapshot_every_is_validated_and_off_by_default(tmp_path):
    assert from_dict(tiny_run(tmp_path)).snapshot_every == 0
    with pytest.raises(ValueError, match="snapshot_every"):
        from_dict(tiny_run(tmp_path, snapshot_every=-1))


def test_snapshots_past_the_exported_step_are_left_out(snapped, tmp_path):
    tmp, _ = snapped
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    assert snapshots(run)[-1][0] == 12
    (run / "export.json").write_text(json.dumps({"export": "x", "step": 8, "stopped_early": "mode collapse"}))
    assert [s for s, _ in snapshots(run)] == list(range(9))
