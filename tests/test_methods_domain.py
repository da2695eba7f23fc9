"""Properties of the gradient reversal layer, its schedule and the domain-shift score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tlutils.errors import ConfigError
from tlutils.methods.domain import domain_shift_score, grad_reverse, grl_coeff, proxy_a_distance


@pytest.mark.parametrize("coeff", [0.0, 0.3, 1.0, 2.5])
def test_grl_forward_is_identity_and_backward_is_minus_coeff_times_grad(coeff):
    torch.manual_seed(0)
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 7, dtype=torch.float64)
    y = grad_reverse(x, coeff)
    assert torch.equal(y, x) and y is not x
    y.backward(upstream)
    torch.testing.assert_close(x.grad, -coeff * upstream, rtol=0, atol=0)


def test_grl_reverses_the_gradient_a_layer_below_receives():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3).double()
    head = torch.nn.Linear(3, 1).double()
    x = torch.randn(8, 5, dtype=torch.float64)
    plain = torch.autograd.grad(head(layer(x)).sum(), layer.weight)[0]
    reversed_ = torch.autograd.grad(head(grad_reverse(layer(x), 0.7)).sum(), layer.weight)[0]
    torch.testing.assert_close(reversed_, -0.7 * plain)


def test_grl_backward_disagrees_with_finite_differences_of_its_forward():
    # gradcheck compares the analytic backward with finite differences of the forward (the
    # identity): the reversed gradient must fail it, a plain identity passes it.
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert not torch.autograd.gradcheck(lambda t: grad_reverse(t, 1.0), (x,), raise_exception=False)
    assert torch.autograd.gradcheck(lambda t: t.view_as(t), (x,))


def test_grl_rejects_a_negative_coeff():
    with pytest.raises(ConfigError, match="coeff"):
        grad_reverse(torch.ones(2), -1.0)


def test_grl_coeff_starts_at_zero_increases_and_tends_to_one():
    assert grl_coeff(0.0) == 0.0
    values = [grl_coeff(p) for p in np.linspace(0, 1, 101)]
    assert all(b > a for a, b in zip(values, values[1:]))
    assert 0.999 < grl_coeff(1.0) < 1.0
    assert math.isclose(grl_coeff(0.5), 2 / (1 + math.exp(-5)) - 1)
    assert math.isclose(grl_coeff(1.0, gamma=10, high=0.1), 0.1 * grl_coeff(1.0))


@pytest.mark.parametrize("progress", [-0.1, 1.5])
def test_grl_coeff_rejects_progress_outside_unit_interval(progress):
    with pytest.raises(ConfigError, match="progress"):
        grl_coeff(progress)


def test_proxy_a_distance_endpoints():
    assert proxy_a_distance(0.5) == 0.0 and proxy_a_distance(0.0) == 2.0


def test_domain_shift_score_separates_shifted_from_identical_domains():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(100, 5))
    same = rng.normal(size=(100, 5))
    shifted = rng.normal(size=(100, 5)) + np.array([5.0, 0, 0, 0, 0])
    far = domain_shift_score(source, shifted)
    near = domain_shift_score(source, same)
    assert far["domain_accuracy"] > 0.95 and far["proxy_a_distance"] > 1.6
    assert near["domain_accuracy"] < 0.7 and near["proxy_a_distance"] < 0.8
    assert math.isclose(far["domain_error"], 1 - far["domain_accuracy"])
