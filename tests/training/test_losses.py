"""Each loss against its formula, and each generator loss's gradient behaviour at a saturated discriminator."""
import math

import pytest
import torch

from training.losses import LOSSES, get_loss

r = torch.tensor([2.0, -1.0, 0.5])
f = torch.tensor([-3.0, 0.0, 1.5])
sig = torch.sigmoid


def mean(xs):
    return sum(xs) / len(xs)


EXPECTED_D = {
    "minimax": -mean([math.log(sig(t)) for t in r]) - mean([math.log(1 - sig(t)) for t in f]),
    "non-saturating": -mean([math.log(sig(t)) for t in r]) - mean([math.log(1 - sig(t)) for t in f]),
    "hinge": mean([max(0.0, 1 - t.item()) for t in r]) + mean([max(0.0, 1 + t.item()) for t in f]),
    "wasserstein": f.mean().item() - r.mean().item(),
    "least-squares": 0.5 * mean([(t.item() - 1) ** 2 for t in r]) + 0.5 * mean([t.item() ** 2 for t in f]),
}
EXPECTED_G = {
    "minimax": mean([math.log(1 - sig(t)) for t in f]),
    "non-saturating": -mean([math.log(sig(t)) for t in f]),
    "hinge": -f.mean().item(),
    "wasserstein": -f.mean().item(),
    "least-squares": 0.5 * mean([(t.item() - 1) ** 2 for t in f]),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_match_their_formulas(name):
    d_loss, g_loss = get_loss(name)
    assert d_loss(r, f).item() == pytest.approx(float(EXPECTED_D[name]), rel=1e-5)
    assert g_loss(f).item() == pytest.approx(float(EXPECTED_G[name]), rel=1e-5)


def generator_grad(name, logit):
    f = torch.tensor([logit], requires_grad=True)
    get_loss(name)[1](f).backward()
    return f.grad.abs().item()


def test_minimax_saturates_where_non_saturating_does_not():
    # D confidently rejects the fakes (logit -10): the saturating loss gives ~sigma(-10) of gradient
    assert generator_grad("minimax", -10.0) < 1e-4
    assert generator_grad("non-saturating", -10.0) > 0.99
    assert generator_grad("wasserstein", -10.0) == pytest.approx(1.0)
    assert generator_grad("hinge", -10.0) == pytest.approx(1.0)
    assert generator_grad("least-squares", -10.0) == pytest.approx(11.0)


def test_unknown_loss_lists_allowed():
    with pytest.raises(ValueError, match="hinge"):
        get_loss("wgan")
