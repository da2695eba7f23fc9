"""The shared-encoder multi-task model: both heads send gradients into the shared encoder."""

from __future__ import annotations

import torch

from tlutils.methods.multitask import MultiTaskModel
from tlutils.models import load_model


def test_summed_loss_gradient_is_the_sum_of_the_heads_gradients():
    torch.manual_seed(0)
    model = MultiTaskModel(load_model("tiny-bert", 2, seed=0).base_model, {"a": 2, "b": 3}).eval()
    ids = torch.randint(1000, 5000, (4, 10))
    batch_a = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1, 0])}
    batch_b = {"input_ids": ids.flip(0), "attention_mask": torch.ones_like(ids), "labels": torch.tensor([2, 0, 1, 2])}
    logits_b, loss_b = model("b", batch_b)
    assert logits_b.shape == (4, 3)
    shared = [p for p in model.encoder.parameters() if p.requires_grad]
    grads_a = torch.autograd.grad(model("a", batch_a)[1], shared, allow_unused=True)
    grads_b = torch.autograd.grad(loss_b, shared, allow_unused=True)
    total = model("a", batch_a)[1] + model("b", batch_b)[1]
    grads_sum = torch.autograd.grad(total, shared, allow_unused=True)
    norm = lambda gs: sum(float(g.norm()) ** 2 for g in gs if g is not None) ** 0.5  # noqa: E731
    assert norm(grads_a) > 0 and norm(grads_b) > 0
    for ga, gb, gs in zip(grads_a, grads_b, grads_sum):
        if gs is not None:
            torch.testing.assert_close(gs, ga + gb, rtol=1e-4, atol=1e-7)
    head_b_grad = torch.autograd.grad(model("a", batch_a)[1], model.heads["b"].weight, allow_unused=True)[0]
    assert head_b_grad is None  # task a's loss does not reach task b's head
