"""The mixture-of-Gaussians lab: metrics on known answers, a short default run, the `ganforge lab mog` CLI."""
import json
import math

import pytest
import torch

from training.cli import main
from training.mog import MogConfig, get_mixture, grid, kl_to_uniform, mode_metrics, ring, train_mog


@pytest.fixture
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny MLPs: extra threads only add overhead (and the CI box is shared)
    yield
    torch.set_num_threads(saved)


def test_benchmark_geometry():
    r, g = ring(), grid()
    assert r.num_modes == 8 and r.sigma == 0.02
    assert torch.allclose(r.centres.norm(dim=1), torch.full((8,), 2.0))
    assert g.num_modes == 25 and g.sigma == 0.05
    assert sorted(set(g.centres[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="ring"):
        get_mixture("spiral")


@pytest.mark.parametrize("name", ["ring", "grid"])
def test_perfect_sampler_covers_every_mode_uniformly(name):
    mixture = get_mixture(name)
    m = mode_metrics(mixture.sample(2500, torch.Generator().manual_seed(0)), mixture)
    assert m["modes_covered"] == m["num_modes"] == mixture.num_modes
    # P(|x - mu| <= 3 sigma) for a 2-D isotropic Gaussian is 1 - exp(-9/2) = 0.989
    assert m["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    assert m["kl"] < 0.02
    assert sum(m["counts"]) == round(m["high_quality"] * 2500)


def test_point_mass_covers_one_mode_with_maximal_kl():
    mixture = ring()
    samples = mixture.centres[3].expand(2500, 2) + 0.01  # inside 3 sigma = 0.06 of mode 3
    m = mode_metrics(samples, mixture)
    assert m["modes_covered"] == 1 and m["counts"][3] == 2500
    assert m["high_quality"] == 1.0
    assert m["kl"] == pytest.approx(math.log(8))


def test_samples_between_modes_are_not_high_quality():
    mixture = ring()
    samples = torch.zeros(100, 2)  # the ring's centre, 2 away from every mode
    samples[:10] = mixture.centres[0] + 0.07  # 0.099 > 3 sigma away
    m = mode_metrics(samples, mixture)
    assert m["modes_covered"] == 0 and m["high_quality"] == 0.0 and m["kl"] is None


def test_min_count_rule():
    mixture = ring()
    samples = torch.cat([mixture.centres[0].expand(9, 2), mixture.centres[1].expand(10, 2)])
    assert mode_metrics(samples, mixture, min_count=10)["modes_covered"] == 1
    assert mode_metrics(samples, mixture, min_count=1)["modes_covered"] == 2


def test_kl_to_uniform_formula():
    assert kl_to_uniform(torch.tensor([5, 5, 5, 5])) == pytest.approx(0.0)
    assert kl_to_uniform(torch.tensor([3, 3, 0, 0])) == pytest.approx(math.log(2))
    p = torch.tensor([0.5, 0.25, 0.25])
    assert kl_to_uniform(torch.tensor([2, 1, 1])) == pytest.approx(float((p * (3 * p).log()).sum()))
    assert kl_to_uniform(torch.tensor([0, 0])) is None


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="hinge"):
        MogConfig(loss="wgan")
    with pytest.raises(ValueError, match="r1_gamma"):
        MogConfig(r1_gamma=-1.0)


def test_runs_are_reproducible(one_thread):
    cfg = MogConfig(steps=30, eval_every=10, loss="wasserstein", r1_gamma=0.0, gp_lambda=1.0)
    a, b = train_mog(cfg)[1], train_mog(cfg)[1]
    for key in ("counts", "g_grad_norm", "history"):
        assert a[key] == b[key]
    assert [h["step"] for h in a["history"]] == [10, 20, 30]


def test_default_run_covers_the_ring(one_thread):
    """The issue's bar: the default recipe (hinge + R1, EMA-evaluated) finds at least 6 of the 8 ring modes."""
    report = train_mog(MogConfig())[1]
    assert report["num_modes"] == 8
    assert report["modes_covered"] >= 6, report
    assert report["high_quality"] > 0.3, report
    assert not report["diverged"]


def test_cli_json_plot_and_tensorboard(tmp_path, capsys, one_thread):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = ["lab", "mog", "--set", "loss=minimax", "--set", "r1_gamma=0.1", "--set", "steps=20", "--set", "seed=3",
            "--json", "--plot", str(tmp_path / "mog.png"), "--logdir", str(tmp_path / "tb")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads(out)  # exactly one JSON object, nothing else on stdout
    assert {"modes_covered", "num_modes", "high_quality", "kl"} <= report.keys()
    assert report["num_modes"] == 8 and report["config"]["loss"] == "minimax" and report["config"]["seed"] == 3
    with Image.open(tmp_path / "mog.png") as img:
        assert img.format == "PNG" and min(img.size) >= 256
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert len(events.Scalars("grad_norm/g")) == 20  # one per generator step


def test_cli_text_mentions_the_metrics(capsys, one_thread):
    assert main(["lab", "mog", "--set", "dataset=grid", "--set", "steps=5"]) == 0
    out = capsys.readouterr().out.strip()
    assert "/25" in out and "high-quality" in out and len(out.splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--set", "loss=wgan"], "unknown loss 'wgan'"),
    (["--set", "dataset=spiral"], "unknown MoG dataset 'spiral'"),
    (["--set", "steps=0"], "steps must be >= 1"),
    (["--set", "r1=0.1"], "unknown MogConfig key(s) ['r1']"),
])
def test_cli_bad_values_exit_2_with_one_line(capsys, argv, message):
    assert main(["lab", "mog", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
