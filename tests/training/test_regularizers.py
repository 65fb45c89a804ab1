"""R1 and WGAN-GP against their formulas on a linear critic D(x) = <w, x>, whose input gradient is w."""
import math

import pytest
import torch

from training.regularizers import gradient_penalty, mode_seeking_loss, r1_penalty

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


def test_mode_seeking_matches_its_formula_over_same_class_pairs():
    images = torch.tensor([[0.0, 0.0], [1.0, 3.0], [5.0, 5.0]])
    z = torch.tensor([[0.0], [2.0], [9.0]])
    labels = torch.tensor([4, 4, 7])  # only the pair (0, 1) shares a class
    expected = 1 / ((1.0 + 3.0) / 2 / 2.0 + 1e-5)
    assert mode_seeking_loss(images, z, labels).item() == pytest.approx(expected)


def test_mode_seeking_rewards_spread_and_is_inert_without_pairs():
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(8, dtype=torch.long)
    spread = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    collapsed = (spread.detach() * 0.01).requires_grad_(True)
    assert mode_seeking_loss(spread, z, labels) < mode_seeking_loss(collapsed, z, labels)
    loss = mode_seeking_loss(spread, z, torch.arange(8))
    loss.backward()
    assert loss.item() == 0 and spread.grad.abs().sum() == 0


def test_capped_mode_seeking_caps_each_pair_at_its_classes_real_spread():
    # Class 4: fake pairs (0,1) and (0,2), (1,2); class 7: one pair (3,4). z distances are all 1 per dim.
    z = torch.tensor([[0.0], [1.0], [2.0], [0.0], [1.0]])
    labels = torch.tensor([4, 4, 4, 7, 7])
    fake = torch.tensor([[0.0], [0.1], [3.0], [0.0], [0.5]], requires_grad=True)
    real = torch.tensor([[0.0], [1.0], [2.0], [0.0], [0.2]])  # mean same-class spread: class 4 4/3, class 7 0.2
    tau4, tau7 = (4 / 3) / (2 / math.pi ** 0.5), 0.2 / (2 / math.pi ** 0.5)
    z_dist = torch.tensor([1.0, 2.0, 1.0, 1.0])  # pairs (0,1) (0,2) (1,2) (3,4)
    fake_dist = torch.tensor([0.1, 3.0, 2.9, 0.5])
    capped = torch.minimum(fake_dist / z_dist, torch.tensor([tau4, tau4, tau4, tau7]))
    loss = mode_seeking_loss(fake, z, labels, real=real, cap=1.0)
    assert loss.item() == pytest.approx(1 / (capped.mean().item() + 1e-5))
    loss.backward()
    # Rows 2 and 4 are only in capped pairs (farther apart than their class's real pairs): no push on them.
    assert fake.grad[2].item() == 0 and fake.grad[4].item() == 0 and fake.grad[1].item() != 0
    # Uncapped, the same batch pushes every row; cap 0 is the uncapped term.
    assert mode_seeking_loss(fake, z, labels, real=real, cap=0.0).item() == pytest.approx(
        mode_seeking_loss(fake, z, labels).item())


def test_capped_mode_seeking_does_not_reward_spread_beyond_the_real_data():
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(16, dtype=torch.long)
    real = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    varied = real.clone() * 3  # three times the real spread: every pair capped
    slabs = real.clone() * 30
    a = mode_seeking_loss(varied, z, labels, real=real, cap=1.0)
    b = mode_seeking_loss(slabs, z, labels, real=real, cap=1.0)
    assert a.item() == pytest.approx(b.item())  # no gain from going further out
    assert mode_seeking_loss(real * 0.01, z, labels, real=real, cap=1.0) > a  # a collapsed batch still loses
    with pytest.raises(ValueError, match="needs the real batch"):
        mode_seeking_loss(varied, z, labels, cap=1.0)


def test_mode_seeking_in_d_features_is_blind_to_the_features_scale_and_pushes_through_them():
    from models.conditional import ProjectionDiscriminator, ProjectionDiscriminatorConfig
    from training.config import TrainConfig
    from training.tasks import ConditionalTask

    D = ProjectionDiscriminator(ProjectionDiscriminatorConfig(num_classes=3, img_resolution=16, base_channels=8))
    D.eval()  # spectral norm runs a power iteration on every training-mode forward
    x, y = torch.randn(6, 1, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2])
    feats = D.features(x, y)
    assert torch.equal(feats[-1], D(x, y))  # one pass gives the logits forward() gives, and the features
    task = object.__new__(ConditionalTask)  # g_extra reads only cfg
    task.cfg = TrainConfig(mode_seeking_features=0.5, mode_seeking_cap=1.0)
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    fake = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    real = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    loss = task.g_extra(x, x, y, z, (fake, real))
    # in units of the real features' mean pair distance: D's feature scale drifting does not change the term
    assert loss.item() == pytest.approx(task.g_extra(x, x, y, z, (fake * 10, real * 10)).item(), rel=1e-5)
    loss.backward()
    assert fake.grad.abs().sum() > 0
    task.cfg = TrainConfig(mode_seeking=0.0)
    assert task.g_extra(x, x, y, z, None).item() == 0  # off: the loop passes no features
