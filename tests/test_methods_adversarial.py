"""Properties of FGM: exact restore, bounded perturbation, a higher loss, and use with fit."""

from __future__ import annotations

import pytest
import torch

from tlutils.errors import ConfigError
from tlutils.methods.adversarial import FGM, fgm_loss_fn
from tlutils.models import load_model


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-bert", 2, seed=0).eval()  # eval: no dropout, losses are deterministic


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (4, 12), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 0, 1])}


def _embeddings(model):
    return model.bert.embeddings.word_embeddings.weight


def test_attack_moves_only_batch_rows_by_epsilon_and_restore_is_exact(model, batch):
    model.zero_grad()
    before = _embeddings(model).detach().clone()
    model(**batch).loss.backward()
    fgm = FGM(model, epsilon=0.5)
    assert fgm.attack() > 0
    delta = _embeddings(model).detach() - before  # (V, H)
    assert torch.linalg.vector_norm(delta) <= 0.5 * (1 + 1e-5)
    assert torch.linalg.vector_norm(delta) >= 0.5 * (1 - 1e-3)  # it did move, by about epsilon
    moved = delta.abs().sum(1) > 0
    assert set(moved.nonzero().flatten().tolist()) <= set(batch["input_ids"].unique().tolist())
    fgm.restore()
    assert torch.equal(_embeddings(model).detach(), before)
    model.zero_grad()


@pytest.mark.parametrize("epsilon", [1e-3, 1e-2])
def test_perturbed_loss_is_at_least_the_clean_loss_for_small_epsilon(model, batch, epsilon):
    model.zero_grad()
    clean = model(**batch).loss
    clean.backward()
    fgm = FGM(model, epsilon=epsilon)
    fgm.attack()
    with torch.no_grad():
        perturbed = model(**batch).loss
        fgm.restore()
        # the opposite direction lowers the loss: the attack is really along the gradient
        grad = _embeddings(model).grad
        _embeddings(model).data.sub_(epsilon * grad / grad.norm())
        descended = model(**batch).loss
        fgm.backup = None
    model.zero_grad()
    model.load_state_dict(load_model("tiny-bert", 2, seed=0).state_dict())
    assert perturbed.item() >= clean.item() > descended.item()


def test_fgm_guards_misuse(model, batch):
    model.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="backward"):
        FGM(model).attack()
    with pytest.raises(RuntimeError, match="restore"):
        FGM(model).restore()
    with pytest.raises(ConfigError, match="exactly one"):
        FGM(model, emb_name="embeddings")
    with pytest.raises(ConfigError, match="epsilon"):
        FGM(model, epsilon=-1.0)


def test_fgm_loss_fn_returns_clean_plus_adversarial_and_leaves_embeddings_unchanged(model, batch):
    model.zero_grad(set_to_none=True)
    before = _embeddings(model).detach().clone()
    loss, stats = fgm_loss_fn(epsilon=0.01)(model, batch)
    assert torch.equal(_embeddings(model).detach(), before)
    assert _embeddings(model).grad is None  # autograd.grad left .grad alone
    assert abs(loss.item() - stats["clean_loss"] - stats["adversarial_loss"]) < 1e-5
    assert stats["adversarial_loss"] >= stats["clean_loss"]


def test_fgm_loss_fn_gradient_equals_the_two_backward_recipe(model, batch):
    model.zero_grad(set_to_none=True)
    loss, _ = fgm_loss_fn(epsilon=0.1)(model, batch)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    fgm = FGM(model, epsilon=0.1)
    fgm.attack()
    model(**batch).loss.backward()
    fgm.restore()
    for name, param in model.named_parameters():
        if name in ours:
            torch.testing.assert_close(ours[name], param.grad, rtol=1e-4, atol=1e-6)
    model.zero_grad(set_to_none=True)


def test_fgm_loss_fn_plugs_into_fit(tiny_task_dir, tokenizer):
    from tlutils.data import load_task, tokenize_task
    from tlutils.train import TrainConfig, fit

    data = load_task("mrpc", data_dir=tiny_task_dir)
    encoded, _ = tokenize_task(data, tokenizer, "mrpc", 32)
    model = load_model("tiny-bert", 2, seed=0)
    history = fit(model, encoded["train"], encoded["validation"], task="mrpc",
                  config=TrainConfig(epochs=1, batch_size=4, learning_rate=1e-3, progress=False,
                                     mixed_precision="no"),
                  loss_fn=fgm_loss_fn(epsilon=0.1))
    record = history.epochs[0]
    assert record["adversarial_loss"] >= record["clean_loss"] - 1e-3
    assert abs(record["train_loss"] - record["clean_loss"] - record["adversarial_loss"]) < 1e-4
