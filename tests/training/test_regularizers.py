"""R1 and WGAN-GP against their formulas on a linear critic D(x) = <w, x>, whose input gradient is w."""
import pytest
import torch

from training.regularizers import gradient_penalty, r1_penalty

w = torch.tensor([[[[3.0, 4.0]]]])  # ||w|| = 5


def critic(x):
    return (x * w).flatten(1).sum(1)


def test_r1_is_half_gamma_grad_norm_squared():
    real = torch.randn(4, 1, 1, 2)
    assert r1_penalty(critic, real, gamma=2.0).item() == pytest.approx(0.5 * 2.0 * 25.0)


def test_gradient_penalty_is_lambda_norm_minus_one_squared():
    real, fake = torch.randn(4, 1, 1, 2), torch.randn(4, 1, 1, 2)
    assert gradient_penalty(critic, real, fake, lam=10.0).item() == pytest.approx(10.0 * (5.0 - 1.0) ** 2)


def test_penalties_are_differentiable_wrt_critic_parameters():
    lin = torch.nn.Linear(2, 1)
    crit = lambda x: lin(x.flatten(1)).squeeze(1)  # noqa: E731
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    (r1_penalty(crit, real, 1.0) + gradient_penalty(crit, real, fake, 1.0)).backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
