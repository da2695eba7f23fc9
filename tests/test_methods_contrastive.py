"""Properties of mean pooling, in-batch InfoNCE and the triplet loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tlutils.errors import ConfigError
from tlutils.methods.contrastive import info_nce, mean_pool, triplet_loss


def test_mean_pool_ignores_padding():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)  # (B, T, H)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))


def test_info_nce_of_identical_views_at_low_temperature_is_near_zero():
    torch.manual_seed(0)
    z = torch.randn(16, 64)
    assert info_nce(z, z, temperature=0.01).item() < 1e-3
    assert info_nce(z, z, temperature=1.0).item() > 0.5  # a high temperature cannot separate


def test_info_nce_equals_cross_entropy_against_the_diagonal():
    torch.manual_seed(0)
    a, b = torch.randn(8, 5), torch.randn(8, 5)
    logits = F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1) / 0.1  # (B, B)
    torch.testing.assert_close(info_nce(a, b, 0.1), F.cross_entropy(logits, torch.arange(8)))


def test_info_nce_is_lower_for_aligned_than_for_shuffled_views():
    torch.manual_seed(0)
    a = torch.randn(32, 16)
    b = a + 0.1 * torch.randn(32, 16)
    shuffled = b[torch.roll(torch.arange(32), 1)]
    assert info_nce(a, b, 0.05) < info_nce(a, shuffled, 0.05)
    assert math.isclose(info_nce(a, a[torch.roll(torch.arange(32), 1)], 0.05).item(),
                        info_nce(a, shuffled, 0.05).item(), rel_tol=0.5)


def test_info_nce_rejects_bad_input():
    with pytest.raises(ConfigError):
        info_nce(torch.ones(3, 2), torch.ones(4, 2))
    with pytest.raises(ConfigError, match="temperature"):
        info_nce(torch.ones(3, 2), torch.ones(3, 2), 0.0)


def test_triplet_loss_is_zero_when_the_margin_is_met_and_positive_otherwise():
    anchor = torch.zeros(3, 2)
    positive = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # d(a, p) = 1
    negative = torch.tensor([[3.0, 0.0], [1.2, 0.0], [0.5, 0.0]])  # d(a, n) = 3, 1.2, 0.5
    losses = triplet_loss(anchor, positive, negative, margin=0.5, reduction="none")
    torch.testing.assert_close(losses, torch.tensor([0.0, 0.3, 1.0]))
    assert triplet_loss(anchor[:1], positive[:1], negative[:1], margin=2.0).item() == 0.0  # 1 + 2 <= 3
    assert triplet_loss(anchor[:1], positive[:1], negative[:1], margin=2.01).item() > 0.0
    torch.testing.assert_close(triplet_loss(anchor, positive, negative, 0.5), losses.mean())
    torch.testing.assert_close(triplet_loss(anchor, positive, negative, 0.5, "sum"), losses.sum())


def test_triplet_loss_random_property():
    torch.manual_seed(0)
    a, p, n = torch.randn(3, 200, 8).unbind(0)
    losses = triplet_loss(a, p, n, margin=0.3, reduction="none")
    gap = (a - p).norm(dim=-1) + 0.3 - (a - n).norm(dim=-1)
    assert torch.equal(losses == 0, gap <= 0)
    assert (losses[gap > 0] > 0).all()


def test_triplet_loss_rejects_a_negative_margin():
    with pytest.raises(ConfigError, match="margin"):
        triplet_loss(torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2), margin=-0.1)
