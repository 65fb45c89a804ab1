import pytest
import yaml

from training.config import load_config, to_dict


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "data": {"name": "shapes"}, "steps": 10}))
    cfg = load_config(path, ["steps=20", "data.resolution=16", "generator.base_channels=8", "betas=[0.5, 0.9]"])
    assert cfg.steps == 20 and cfg.data.resolution == 16 and cfg.data.name == "shapes"
    assert cfg.generator["base_channels"] == 8 and cfg.betas == (0.5, 0.9)
    assert yaml.safe_load(yaml.safe_dump(to_dict(cfg)))["steps"] == 20


@pytest.mark.parametrize("override,match", [("stepz=3", "stepz"), ("data.res=3", "res"), ("steps", "key=value")])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])
