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
from training.ema import ema_decay_at, posthoc_ema


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
    paths = export_posthoc(tmp / "run", [(0.9, 10), (0.5, 10), (0.9, 3)], tmp / "posthoc")  # several, one pass
    assert [p.parent.name for p in paths] == ["ema0.9_w10", "ema0.5_w10", "ema0.9_w3"]
    posthoc, meta = load(paths[0])
    for name, t in online.state_dict().items():  # weights and the recalibrated BatchNorm statistics
        assert torch.equal(posthoc.state_dict()[name], t), name
    assert "post-hoc EMA (decay 0.9, warmup 10) at step 12 from 13 snapshots" in meta["note"]
    for other in paths[1:]:  # another decay, another warm-up: other weights
        other, _ = load(other)
        assert any(not torch.equal(_params(other)[n], p) for n, p in _params(online).items())


def test_sparse_snapshots_approximate_the_ema_and_the_step_zero_one_is_required(snapped):
    tmp, ema_path = snapped
    run = tmp / "run" / "snapshots"
    names = list(_params(load(ema_path)[0]))
    pick = [0, 4, 8, 12]
    profile = (0.9, 10)  # (decay, warmup)
    read = lambda steps: ((s, load_file(str(run / f"G_{s:07d}.safetensors"))) for s in steps)  # noqa: E731
    exact = posthoc_ema(read(range(13)), [profile], names)[profile]
    sparse = posthoc_ema(read(pick), [profile], names)[profile]
    final = load_file(str(run / "G_0000012.safetensors"))
    for n in names:  # closer to the exact EMA than the last raw weights are
        assert (sparse[n] - exact[n]).norm() <= (final[n] - exact[n]).norm() + 1e-12, n
    with pytest.raises(ValueError, match="step-0 snapshot first; got step 4"):
        posthoc_ema(read(pick[1:]), [profile], names)
    with pytest.raises(ValueError, match="increasing step order; got 4 after 8"):
        posthoc_ema(read([0, 8, 4]), [profile], names)


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


def test_snapshot_every_and_ema_warmup_are_validated(tmp_path):
    assert from_dict(tiny_run(tmp_path)).snapshot_every == 0
    with pytest.raises(ValueError, match="snapshot_every"):
        from_dict(tiny_run(tmp_path, snapshot_every=-1))
    assert from_dict(tiny_run(tmp_path)).ema_warmup == 10
    for bad in (1, 0.5, float("nan")):
        with pytest.raises(ValueError, match="ema_warmup must be (> 1|a number >= 1)"):
            from_dict(tiny_run(tmp_path, ema_warmup=bad))


def _ema_age(steps: int, decay: float, warmup: float) -> float:
    """How many steps back the centre of mass of the EMA's weights lies after `steps` updates."""
    weights, keep = [], 1.0
    for t in reversed(range(steps)):
        d = ema_decay_at(t, decay, warmup)
        weights.append(keep * (1 - d))
        keep *= d
    return sum(i * w for i, w in enumerate(weights)) / sum(weights)


@pytest.mark.parametrize("warmup, steps", [(10, 4500), (3, 1800)])
def test_the_warmup_sets_how_far_back_a_short_runs_ema_reaches(warmup, steps):
    """Below the decay's cap the EMA weighs step s as ~s^(warmup-2): its centre of mass lies ~T/warmup steps
    back, whatever the decay (0.999 and 0.9995 average a 4,500-step run the same way under warm-up 10)."""
    for decay in (0.999, 0.9995):
        assert steps < (decay * warmup - 1) / (1 - decay)  # below the cap
        assert abs(_ema_age(steps, decay, warmup) - steps / warmup) < 0.02 * steps / warmup, decay
    assert ema_decay_at(10**6, 0.999, warmup) == 0.999  # the cap, once the warm-up passes it


def test_past_the_cap_the_decay_sets_the_reach():
    """Warm-up 3 reaches 0.999's cap at step ~2,000: a 4,500-step run then averages ~1/(1-decay) steps back,
    and 0.9995 (cap at ~4,000) reaches further than 0.999."""
    capped, later = _ema_age(4500, 0.999, 3), _ema_age(4500, 0.9995, 3)
    assert abs(capped - 1000) < 50 and later > 1.3 * capped


def test_the_loop_keeps_the_ema_of_its_warmup(tmp_path):
    online = load(train_tiny(tmp_path, steps=6, snapshot_every=1, ema_decay=0.99, ema_warmup=3))[0]
    paths = export_posthoc(tmp_path / "run", [(0.99, 3)], tmp_path / "posthoc")
    posthoc = load(paths[0])[0]
    for name, t in online.state_dict().items():
        assert torch.equal(posthoc.state_dict()[name], t), name


def test_snapshots_past_the_exported_step_are_left_out(snapped, tmp_path):
    tmp, _ = snapped
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    assert snapshots(run)[-1][0] == 12
    (run / "export.json").write_text(json.dumps({"export": "x", "step": 8, "stopped_early": "mode collapse"}))
    assert [s for s, _ in snapshots(run)] == list(range(9))
