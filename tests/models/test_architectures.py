"""Every registered architecture builds from its config and has the documented shapes and attributes."""
import dataclasses

import pytest
import torch

from models import ARCHITECTURES, build

TINY = {
    "ConditionalGenerator": {"num_classes": 3, "img_resolution": 16, "img_channels": 3, "z_dim": 8,
                             "base_channels": 4, "embed_dim": 8},
    "ProjectionDiscriminator": {"num_classes": 3, "img_resolution": 16, "img_channels": 3, "base_channels": 4},
    "MLPGenerator": {"num_classes": 3, "img_resolution": 12, "img_channels": 1, "z_dim": 8},
    "MLPDiscriminator": {"num_classes": 3, "img_resolution": 12, "img_channels": 1},
    "DomainClassifier": {"num_classes": 3, "img_resolution": 12, "img_channels": 1, "width": 4, "feature_dim": 8},
    "UNetGenerator": {"in_channels": 1, "out_channels": 3, "img_resolution": 16, "depth": 3, "base_channels": 4},
    "PatchDiscriminator": {"in_channels": 1, "out_channels": 3, "img_resolution": 16, "base_channels": 4,
                           "n_layers": 2},
}


def test_every_architecture_has_a_tiny_config():
    assert set(TINY) == set(ARCHITECTURES)


def run(module, cfg, batch=2):
    y = torch.tensor([0, 2][:batch])
    if "in_channels" in cfg:  # image-to-image: (B, Cin, R, R) sources
        src = torch.randn(batch, cfg["in_channels"], cfg["img_resolution"], cfg["img_resolution"])
        if "Discriminator" in type(module).__name__:
            return module(torch.randn(batch, cfg["out_channels"], *src.shape[-2:]), src)
        return module(src)
    if hasattr(module, "z_dim"):
        return module(torch.randn(batch, module.z_dim), y)
    x = torch.randn(batch, cfg["img_channels"], cfg["img_resolution"], cfg["img_resolution"])
    return module(x, y) if "Discriminator" in type(module).__name__ else module(x)


@pytest.mark.parametrize("name", sorted(TINY))
def test_shapes(name):
    cfg = TINY[name]
    module = build(name, cfg)
    assert dataclasses.asdict(module.config) | cfg == dataclasses.asdict(module.config)
    out = run(module, cfg)
    if name == "UNetGenerator":
        assert out.shape == (2, 3, 16, 16) and out.abs().max() <= 1.0
    elif name == "PatchDiscriminator":
        assert out.shape[:2] == (2, 1) and out.ndim == 4
    elif "Generator" in name:
        assert out.shape == (2, cfg["img_channels"], cfg["img_resolution"], cfg["img_resolution"])
        assert out.abs().max() <= 1.0
        for attr in ("z_dim", "num_classes", "img_resolution", "img_channels"):
            assert getattr(module, attr) == cfg.get(attr, getattr(module.config, attr))
    elif "Discriminator" in name:
        assert out.shape == (2,)
    else:
        assert out.shape == (2, cfg["num_classes"])


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_conditional_resolutions(resolution):
    g = build("ConditionalGenerator", {"img_resolution": resolution, "base_channels": 2, "z_dim": 4, "embed_dim": 4})
    d = build("ProjectionDiscriminator", {"img_resolution": resolution, "base_channels": 2})
    img = g(torch.randn(1, 4), torch.tensor([3]))
    assert img.shape == (1, 1, resolution, resolution)
    assert d(img, torch.tensor([3])).shape == (1,)


def test_bad_resolution_and_unknown_fields_are_clear_errors():
    with pytest.raises(ValueError, match="power of two"):
        build("ConditionalGenerator", {"img_resolution": 48})
    with pytest.raises(ValueError, match="unknown ConditionalGenerator config field.*widht"):
        build("ConditionalGenerator", {"widht": 3})
    with pytest.raises(ValueError, match="unknown architecture 'Nope'.*ConditionalGenerator"):
        build("Nope", {})


def test_projection_discriminator_uses_the_label():
    d = build("ProjectionDiscriminator", TINY["ProjectionDiscriminator"])
    x = torch.randn(1, 3, 16, 16)
    assert not torch.allclose(d(x, torch.tensor([0])), d(x, torch.tensor([1])))
