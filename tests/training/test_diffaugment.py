import pytest
import torch

from training.diffaugment import cutout, diff_augment, translation


def test_policies_keep_shape_and_are_differentiable():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    y = diff_augment(x, "colour,translation,cutout")
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None


def test_empty_policy_is_identity():
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(diff_augment(x, ""), x)


def test_cutout_zeroes_about_a_quarter():
    torch.manual_seed(0)
    y = cutout(torch.ones(64, 1, 16, 16), ratio=0.5)
    assert 0.10 < (y == 0).float().mean().item() < 0.30


def test_translation_moves_content_and_fills_with_zero():
    torch.manual_seed(0)
    x = torch.ones(32, 1, 16, 16)
    y = translation(x)
    assert (y == 0).any() and ((y == 0) | (y == 1)).all()


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown DiffAugment policy 'blur'"):
        diff_augment(torch.zeros(1, 1, 4, 4), "blur")
