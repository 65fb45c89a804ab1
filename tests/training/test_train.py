"""Real (short) training runs on the procedural shapes data."""
import numpy as np
import pytest
import torch

from models import load
from tests.training.helpers import TINY_SHAPES_RUN, shapes_classifier, train_tiny
from training.evaluate import embed
from training.optim import lr_scale
from training.sample import sample_arrays


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    return train_tiny(tmp), shapes_classifier(tmp)


def conditional_accuracy(ckpt, clf_path, per_class=50, seed=0):
    images, labels, _, _ = sample_arrays(str(ckpt), per_class, seed)
    clf, _ = load(clf_path)
    _, pred = embed(clf, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    return (pred.numpy() == labels).mean()


def test_training_learns_the_classes(trained, tmp_path):
    ckpt, clf = trained
    acc = conditional_accuracy(ckpt, clf)
    # an untrained generator of the same architecture is the baseline: near chance (0.25)
    train_tiny(tmp_path, steps=1)
    untrained = conditional_accuracy(tmp_path / "ckpt", clf)
    assert acc > 0.6, acc
    assert acc > untrained + 0.3, (acc, untrained)


def test_run_folder_holds_config_grids_state_and_tensorboard(trained):
    ckpt, _ = trained
    run = ckpt.parent / "run"
    assert (run / "config.yaml").exists() and (run / "state.pt").exists()
    assert list((run / "tb").iterdir()) and list(run.glob("grid_*.png"))
    assert (ckpt / "grid.png").exists() and (ckpt / "config.yaml").exists()
    _, meta = load(ckpt)
    assert meta["kind"] == "conditional" and meta["class_names"] == ["circle", "square", "triangle", "cross"]
    assert meta["provenance"]["steps"] == 900 and meta["provenance"]["dataset"] == "shapes"


# float32 on the CPU, bf16 autocast on the CPU, and the G step on the D step's fakes
@pytest.mark.parametrize("amp,share_fake", [("cuda", False), ("always", False), ("cuda", True)])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, amp, share_fake):
    # on the CPU: CUDA's embedding backward accumulates with atomics, so two CUDA runs differ in the last bits
    # whether or not they were interrupted
    run = {"state_every": 3, "batch_size": 8, "diffaugment": "translation", "lr_decay_steps": 4, "device": "cpu",
           "amp": amp, "share_fake": share_fake}
    straight = train_tiny(tmp_path / "a", steps=6, **run)
    # "interrupted" after 3 steps (the last resume state), then continued with --resume; the learning-rate
    # decay (steps 2..5) spans the interruption and must follow the same schedule
    train_tiny(tmp_path / "b", steps=3, **{**run, "lr_decay_steps": 1})  # same lr for steps 0..2 as `straight`
    resumed = train_tiny(tmp_path / "b", resume=True, steps=6, **run)
    a, _ = load(straight)
    b, _ = load(resumed)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_bf16_autocast_on_the_cpu_is_applied(tmp_path):
    b, _ = load(train_tiny(tmp_path / "fp32", amp="off", device="cpu", steps=2))
    c, _ = load(train_tiny(tmp_path / "bf16", amp="always", device="cpu", steps=2))
    # two steps apart already: the step really ran in bf16 (its weights stay float32, as autocast keeps them)
    assert all(p.dtype == torch.float32 for p in c.parameters())
    assert any(not torch.equal(pb, pc) for pb, pc in zip(b.state_dict().values(), c.state_dict().values()))


@pytest.mark.slow  # 7-9 min on a CPU without bf16 instructions (emulated), where amp=always is not for use anyway
def test_bf16_autocast_on_the_cpu_still_learns_the_classes(trained, tmp_path):
    _, clf = trained
    bf16 = train_tiny(tmp_path / "bf16", amp="always", device="cpu")
    assert conditional_accuracy(bf16, clf) > 0.6


def test_share_fake_draws_one_noise_batch_a_step_and_still_learns_the_classes(trained, tmp_path):
    _, clf = trained
    shared = train_tiny(tmp_path / "shared", share_fake=True)
    assert conditional_accuracy(shared, clf) > 0.6  # the untrained baseline: ~0.25 (test above)
    # the G step took the D step's z instead of drawing its own: the noise stream moved one batch a step, not two
    gen = torch.Generator().manual_seed(1)  # the loop's noise stream: seed + 1
    for _ in range(TINY_SHAPES_RUN["steps"]):
        torch.randn(TINY_SHAPES_RUN["batch_size"], TINY_SHAPES_RUN["generator"]["z_dim"], generator=gen)
    state = torch.load(tmp_path / "shared" / "run" / "state.pt", map_location="cpu", weights_only=True)
    assert torch.equal(state["noise_rng"], gen.get_state())


def test_lr_decay_is_linear_to_zero_over_the_last_steps():
    assert [lr_scale(s, 10, 4) for s in range(10)] == [1, 1, 1, 1, 1, 1, 1.0, 0.75, 0.5, 0.25]
    assert lr_scale(9, 10, 0) == 1.0  # off


def test_resume_without_state_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no resume state"):
        train_tiny(tmp_path, resume=True, steps=2)


@pytest.mark.parametrize("loss,extra", [("minimax", {}), ("non-saturating", {"r1_gamma": 1.0}),
                                        ("wasserstein", {"gp_lambda": 10.0}), ("least-squares", {}),
                                        ("hinge", {"diffaugment": "colour,translation,cutout"}),
                                        ("hinge", {"mode_seeking": 1.0}),
                                        ("hinge", {"mode_seeking": 0.5, "mode_seeking_cap": 1.0}),
                                        ("hinge", {"mode_seeking_features": 0.5, "mode_seeking_cap": 1.0})])
def test_every_loss_and_regularizer_trains(tmp_path, loss, extra):
    ckpt = train_tiny(tmp_path, loss=loss, steps=3, batch_size=8, **extra)
    images, *_ = sample_arrays(str(ckpt), 2, 0)
    assert images.shape == (8, 16, 16, 3) and np.isfinite(images).all()


def test_mlp_baseline_trains_at_native_28(tmp_path):
    ckpt = train_tiny(tmp_path, data={"name": "shapes", "resolution": 28}, steps=3, batch_size=8, loss="least-squares",
                      generator={"architecture": "MLPGenerator"}, discriminator={"architecture": "MLPDiscriminator"})
    images, *_ = sample_arrays(str(ckpt), 1, 0)
    assert images.shape == (4, 28, 28, 3)


@pytest.mark.parametrize("flags,warns", [({"avx2", "fma"}, True), ({"avx2", "avx512_bf16"}, False),
                                         ({"amx_bf16"}, False)])
def test_amp_always_warns_on_a_cpu_without_bf16_instructions(flags, warns, capsys):
    from training.precision import training_autocast

    ctx = training_autocast("always", torch.device("cpu"), flags=flags)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert ("without bf16 instructions" in capsys.readouterr().err) == warns
    assert not isinstance(training_autocast("cuda", torch.device("cpu")), torch.autocast)  # the default: CUDA only
    assert not isinstance(training_autocast("off", torch.device("cpu")), torch.autocast)


@pytest.mark.parametrize("flags,native", [({"avx2", "fma"}, False), ({"avx2", "avx512_bf16"}, True),
                                          ({"amx_bf16"}, True), (None, False)])
def test_amp_auto_is_bf16_only_where_the_cpu_has_bf16_instructions(flags, native, capsys, monkeypatch):
    from training import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: None)  # flags=None below: an unreadable /proc/cpuinfo
    ctx = precision.training_autocast("auto", torch.device("cpu"), flags=flags)
    assert isinstance(ctx, torch.autocast) == native
    assert not native or ctx.fast_dtype == torch.bfloat16
    assert ("amp=auto: bf16 autocast" if native else "amp=auto: float32") in capsys.readouterr().err


def test_amp_always_reads_this_machines_flags(capsys):
    from training.precision import CPU_BF16_FLAGS, cpu_flags, training_autocast

    training_autocast("always", torch.device("cpu"))
    flags = cpu_flags()
    expected = flags is not None and not flags & set(CPU_BF16_FLAGS)
    assert ("without bf16 instructions" in capsys.readouterr().err) == expected


def test_cpu_flags_reads_the_flags_line(tmp_path):
    from training.precision import cpu_flags

    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(str(tmp_path / "cpuinfo")) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) is None
