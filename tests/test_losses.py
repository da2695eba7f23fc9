"""Properties of tlutils.losses: stable cross-entropy, KL/entropy, label smoothing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tlutils.losses import (entropy, kl_divergence, label_smoothing_loss, label_smoothing_loss_fn,
                            smooth_labels, soft_cross_entropy, stable_cross_entropy)


def _logits(seed: int = 0, n: int = 64, c: int = 5, scale: float = 3.0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, c, generator=gen), torch.randint(c, (n,), generator=gen)


def test_stable_cross_entropy_equals_torch():
    logits, labels = _logits()
    torch.testing.assert_close(stable_cross_entropy(logits, labels), F.cross_entropy(logits, labels))


def test_stable_cross_entropy_finite_for_huge_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    labels = torch.tensor([1, 1])
    value = stable_cross_entropy(logits, labels)
    assert torch.isfinite(value)
    torch.testing.assert_close(value, torch.tensor(1e4))  # (2e4 + 0) / 2
    naive = -torch.log(torch.softmax(logits, -1).clamp_min(0))[torch.arange(2), labels].mean()
    assert not torch.isfinite(naive)  # the failure the stable version avoids


def test_gradient_of_stable_cross_entropy():
    logits, labels = _logits(seed=1)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    stable_cross_entropy(a, labels).backward()
    F.cross_entropy(b, labels).backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_cross_entropy_is_entropy_plus_kl():
    gen = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(50, 4, generator=gen, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(50, 4, generator=gen, dtype=torch.float64), -1)
    ce = -(p * q.log()).sum(-1)
    torch.testing.assert_close(ce, entropy(p) + kl_divergence(p, q))
    assert (kl_divergence(p, q) > 0).all() and torch.allclose(kl_divergence(p, p), torch.zeros(50, dtype=torch.float64))
    torch.testing.assert_close(soft_cross_entropy(q.log(), p), ce.mean())


def test_smooth_labels_rows():
    targets = smooth_labels(torch.tensor([0, 2]), 4, 0.2)
    torch.testing.assert_close(targets.sum(-1), torch.ones(2))
    assert math.isclose(targets[0, 0].item(), 0.8 + 0.05, rel_tol=1e-6) and math.isclose(targets[0, 1].item(), 0.05, rel_tol=1e-6)


def test_label_smoothing_zero_is_cross_entropy_and_matches_torch():
    logits, labels = _logits(seed=3)
    torch.testing.assert_close(label_smoothing_loss(logits, labels, 0.0), F.cross_entropy(logits, labels))
    torch.testing.assert_close(label_smoothing_loss(logits, labels, 0.1),
                               F.cross_entropy(logits, labels, label_smoothing=0.1))
    assert not torch.allclose(label_smoothing_loss(logits, labels, 0.1), F.cross_entropy(logits, labels))


def test_label_smoothing_optimum():
    eps, C = 0.1, 3
    z = torch.zeros(1, C, requires_grad=True)
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = label_smoothing_loss(z, torch.tensor([0]), eps)
        loss.backward()
        return loss

    opt.step(closure)
    p = torch.softmax(z.detach(), -1)[0]
    assert abs(p[0].item() - (1 - eps + eps / C)) < 1e-4
    assert abs(p[1].item() - eps / C) < 1e-4


def test_label_smoothing_loss_fn_plugs_into_models():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, input_ids):
            return type("Out", (), {"logits": self.linear(input_ids.float())})()

    torch.manual_seed(0)
    model = Tiny()
    batch = {"input_ids": torch.randn(4, 3), "labels": torch.tensor([0, 1, 1, 0])}
    loss, stats = label_smoothing_loss_fn(0.2)(model, batch)
    expected = F.cross_entropy(model.linear(batch["input_ids"]), batch["labels"], label_smoothing=0.2)
    torch.testing.assert_close(loss, expected)
    assert 0.5 <= stats["confidence"] <= 1.0
    loss.backward()
    assert model.linear.weight.grad is not None
