import pytest
import yaml

from training.config import load_config, replace, to_dict


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "data": {"name": "shapes"}, "steps": 10}))
    cfg = load_config(path, ["steps=20", "data.resolution=16", "generator.base_channels=8", "betas=[0.5, 0.9]"])
    assert cfg.steps == 20 and cfg.data.resolution == 16 and cfg.data.name == "shapes"
    assert cfg.generator["base_channels"] == 8 and cfg.betas == (0.5, 0.9)
    assert yaml.safe_load(yaml.safe_dump(to_dict(cfg)))["steps"] == 20


@pytest.mark.parametrize("value,mode", [("true", "cuda"), ("false", "off"), ("always", "always")])
def test_amp_reads_the_old_booleans_as_modes(value, mode):
    assert load_config(None, [f"amp={value}"]).amp == mode  # configs written before amp took a mode still load


@pytest.mark.parametrize("override,match", [("stepz=3", "stepz"), ("data.res=3", "res"), ("steps", "key=value")])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


@pytest.mark.parametrize("override,message", [
    ("loss=wgan", "loss must be one of ['minimax', 'non-saturating', 'hinge', 'wasserstein', 'least-squares']"),
    ("diffaugment=translation,zoom", "diffaugment must be one of ['color', 'colour', 'cutout', 'translation'], "
                                     "got 'zoom'"),
    ("collapse_action=panic", "collapse_action must be one of ['warn', 'stop', 'rollback'], got 'panic'"),
    ("amp=fast", "amp must be one of ['off', 'cuda', 'always', 'auto'], got 'fast'"),
    ("data.paired=sketch", "data.paired must be one of ['aligned', 'folders', 'edges'"),
    ("data.direction=up", "data.direction must be one of ['AtoB', 'BtoA'], got 'up'"),
    ("data.name=imagenet", "data.name must be one of ['fashion-mnist'"),
    ("data.name=imagefolder", "data.root is required for 'imagefolder'"),
    ("data.channels=2", "data.channels must be one of [1, 3], got 2"),
    ("mode_seeking_features=-1", "mode_seeking_features must be a number >= 0, got -1"),
    ("generator.architecture=Transformer", "generator.architecture must be one of"),
    ("steps=0", "steps must be a number >= 1, got 0"),
    ("ema_decay=1.5", "ema_decay must be in [0, 1)"),
    ("ema_decay=abc", "ema_decay must be a number >= 0, got 'abc'"),
    ("ema_warmup=abc", "ema_warmup must be a number >= 1, got 'abc'"),
    ("share_fake=sometimes", "share_fake must be true or false, got 'sometimes'"),
    ("mode_seeking_cap=-1", "mode_seeking_cap must be a number >= 0, got -1"),
])
def test_bad_fields_are_named_with_their_allowed_values(override, message):
    with pytest.raises(ValueError) as e:
        load_config(None, [override])
    assert message in str(e.value)


@pytest.mark.parametrize("overrides,message", [
    (["data.paired=edges", "diffaugment=translation"], "diffaugment is not supported for image-to-image"),
    (["data.paired=edges", "collapse_check_every=100"], "collapse_check_every needs a class-conditional run"),
    (["data.paired=edges", "discriminator.architecture=PatchDiscriminator", "feature_matching=10",
      "adversarial_weight=0"], "adversarial_weight > 0"),
    (["mode_seeking=0", "mode_seeking_cap=1"], "mode_seeking_cap caps the mode-seeking term, which is off"),
    (["generator.architecture=MLPGenerator", "discriminator.architecture=MLPDiscriminator", "feature_matching=10"],
     "feature_matching needs a discriminator with features()"),
    (["discriminator.architecture=MLPDiscriminator", "mode_seeking_features=0.5"],
     "mode_seeking_features needs a discriminator with features()"),
    (["data.paired=edges", "discriminator.architecture=PatchDiscriminator", "mode_seeking_features=0.5"],
     "mode_seeking_features needs a class-conditional run"),
])
def test_combinations_a_run_cannot_serve_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_configs_are_frozen_and_overrides_build_new_ones():
    import dataclasses

    base = load_config(None, [])
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.steps = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.data.name = "mnist"
    new = replace(base, {"steps": 5, "data": {"name": "shapes"}, "generator": {"base_channels": 8}})
    assert (new.steps, new.data.name, new.generator) == (
        5, "shapes", {"architecture": "ConditionalGenerator", "base_channels": 8})
    assert (base.steps, base.data.name, base.generator) == (3000, "fashion-mnist",
                                                            {"architecture": "ConditionalGenerator"})
    with pytest.raises(ValueError, match="loss must be one of"):
        replace(base, {"loss": "wgan"})  # a replacement is validated like a new config


def test_a_bad_run_writes_nothing(tmp_path, capsys):
    from training.cli import main

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "data": {"name": "shapes"}, "workdir": str(tmp_path / "run"),
                                    "export": str(tmp_path / "ckpt")}))
    for bad in ("loss=wgan", "diffaugment=zoom", "collapse_action=panic", "mode_seeking_features=-1"):
        assert main(["train", str(path), "--set", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ganforge train: error: ") and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]  # no workdir, no export
