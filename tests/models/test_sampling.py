"""Class lookup, seeded noise, truncation, cropping to native size."""
import numpy as np
import pytest
import torch

from models import build
from models.sampling import class_index, from_uint8, generate, grid, image_shape, noise, to_uint8

FMNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.mark.parametrize("value,expected", [("sneaker", 7), ("SNEAKER", 7), ("Ankle boot", 9), ("ankle-boot", 9),
                                            ("tshirt", 0), ("T-shirt/top", 0), ("top", 0), (3, 3), ("3", 3)])
def test_class_index(value, expected):
    assert class_index(FMNIST, value) == expected


@pytest.mark.parametrize("value", ["cat", "", 10, -1, "11"])
def test_unknown_class_lists_valid_ones(value):
    with pytest.raises(ValueError, match="Sneaker"):
        class_index(FMNIST, value)


def test_noise_is_per_seed():
    a = noise([5, 6, 7], 16)
    assert torch.equal(a[1], noise([6], 16)[0])
    assert not torch.equal(a[0], a[1])


def test_truncation_bounds_and_determinism():
    z = noise(list(range(50)), 32, truncation=0.5)
    assert z.abs().max() <= 0.5
    assert torch.equal(z, noise(list(range(50)), 32, truncation=0.5))
    with pytest.raises(ValueError, match="truncation"):
        noise([0], 4, truncation=0.0)
    with pytest.raises(ValueError, match="seed"):
        noise([-1], 4)


def test_generate_does_not_depend_on_batch_composition():
    g = build("ConditionalGenerator", {"num_classes": 3, "img_resolution": 16, "z_dim": 8, "base_channels": 4,
                                       "embed_dim": 8}).eval()
    both = generate(g, [0, 2], [11, 12])
    alone = generate(g, [2], [12])
    assert torch.allclose(both[1], alone[0], atol=1e-5)


def test_to_uint8_crops_padding_back_to_native_size():
    x = torch.full((2, 1, 32, 32), -1.0)
    x[:, :, 2:30, 2:30] = 1.0
    out = to_uint8(x, {"native_size": [28, 28], "normalization": {"mean": 0.5, "std": 0.5}})
    assert out.shape == (2, 28, 28) and out.dtype == np.uint8 and (out == 255).all()
    rgb = to_uint8(torch.zeros(1, 3, 8, 8), {})
    assert rgb.shape == (1, 8, 8, 3) and (rgb == 128).all()


@pytest.mark.parametrize("meta", [{"img_resolution": 32, "img_channels": 1, "native_size": [28, 28]},
                                  {"img_resolution": 16, "img_channels": 3}])
def test_image_shape_is_what_to_uint8_gives(meta):
    r, c = meta["img_resolution"], meta["img_channels"]
    assert to_uint8(torch.zeros(2, c, r, r), meta)[0].shape == image_shape(meta)


def test_from_uint8_inverts_to_uint8():
    imgs = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8(from_uint8(imgs, {}), {}), imgs)


def test_grid_layout():
    imgs = np.zeros((5, 4, 4), dtype=np.uint8)
    g = grid(imgs, nrow=3, pad=1)
    assert g.shape == (2 * 5 + 1, 3 * 5 + 1)
