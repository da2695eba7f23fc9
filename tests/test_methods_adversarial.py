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


# --------------------------------------------------------------------------- PGD, FreeLB, embedding FGM

from tlutils.methods.adversarial import (example_norms, fgm_embedding_loss_fn, freelb_loss_fn,  # noqa: E402
                                         loss_at, pgd_attack, pgd_loss_fn, predict_under_attack, project,
                                         random_delta, token_mask, word_embeddings, zero_delta)


@pytest.fixture
def padded_batch(batch):
    mask = torch.ones_like(batch["input_ids"])
    mask[0, 8:] = 0  # a shorter first example: its padding must never be perturbed
    mask[2, 5:] = 0
    return {**batch, "attention_mask": mask}


def _gradients(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("epsilon,steps", [(0.05, 1), (0.5, 3), (2.0, 5)])
def test_pgd_attack_stays_in_the_ball_and_off_the_padding(model, padded_batch, epsilon, steps):
    delta = pgd_attack(model, padded_batch, epsilon, steps=steps, step_size=epsilon)  # big steps: projection must act
    norms = example_norms(delta)
    assert torch.all(norms <= epsilon * (1 + 1e-5))
    assert torch.all(norms >= epsilon * (1 - 1e-4))  # step_size = epsilon reaches the sphere
    assert torch.equal(delta * (1 - token_mask(padded_batch)), torch.zeros_like(delta))
    rand = random_delta(delta, token_mask(padded_batch), epsilon, torch.Generator().manual_seed(0))
    assert torch.all(example_norms(rand) <= epsilon * (1 + 1e-5))
    assert torch.all(example_norms(project(rand * 100, epsilon)) <= epsilon * (1 + 1e-5))


def test_pgd_attack_raises_the_loss_more_than_random_noise_of_the_same_norm(model, batch):
    epsilon = 0.5
    with torch.no_grad():
        clean = loss_at(model, batch, zero_delta(model, batch))
        attacked = loss_at(model, batch, pgd_attack(model, batch, epsilon, steps=3))
        noise = random_delta(zero_delta(model, batch), token_mask(batch), 1.0, torch.Generator().manual_seed(1))
        noisy = loss_at(model, batch, epsilon * noise / example_norms(noise).view(-1, 1, 1))
    assert attacked > clean and attacked > noisy


def test_the_hook_is_the_same_as_passing_perturbed_inputs_embeds(model, padded_batch):
    delta = pgd_attack(model, padded_batch, 0.3, steps=2)
    inputs = {k: v for k, v in padded_batch.items() if k != "input_ids"}
    with torch.no_grad():
        embeds = word_embeddings(model)(padded_batch["input_ids"]) + delta  # (B, T, H)
        expected = model(inputs_embeds=embeds, **inputs).loss
        assert torch.allclose(loss_at(model, padded_batch, delta), expected, atol=1e-6)


def test_pgd_with_one_step_of_epsilon_and_no_random_start_is_fgm(model, padded_batch):
    torch.manual_seed(0)
    pgd_loss, pgd_stats = pgd_loss_fn(epsilon=0.7, steps=1, step_size=0.7, random_start=False)(model, padded_batch)
    fgm_loss, fgm_stats = fgm_embedding_loss_fn(epsilon=0.7)(model, padded_batch)
    torch.testing.assert_close(pgd_loss, fgm_loss)
    assert pgd_stats["adversarial_loss"] == pytest.approx(fgm_stats["adversarial_loss"], rel=1e-6)
    ours, theirs = _gradients(model, pgd_loss), _gradients(model, fgm_loss)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name])
    # and the attack itself is one normalised gradient step of length epsilon
    zero = zero_delta(model, padded_batch).requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_at(model, padded_batch, zero), zero)
    fgm = 0.7 * grad / example_norms(grad).view(-1, 1, 1)
    torch.testing.assert_close(pgd_attack(model, padded_batch, 0.7, steps=1, step_size=0.7), fgm)


def test_pgd_loss_fn_gradient_is_the_clean_plus_adversarial_recipe(model, padded_batch):
    loss, stats = pgd_loss_fn(epsilon=0.5, steps=3, step_size=0.3)(model, padded_batch)
    ours = _gradients(model, loss)
    delta = pgd_attack(model, padded_batch, 0.5, steps=3, step_size=0.3)
    clean = loss_at(model, padded_batch, zero_delta(model, padded_batch))
    recipe = _gradients(model, clean + loss_at(model, padded_batch, delta))
    for name in recipe:
        torch.testing.assert_close(ours[name], recipe[name], rtol=1e-4, atol=1e-6)
    assert loss.item() == pytest.approx(stats["clean_loss"] + stats["adversarial_loss"], rel=1e-5)
    assert stats["delta_norm"] <= 0.5 * (1 + 1e-5)


def test_freelb_gradient_is_the_mean_over_the_ascent_path(model, padded_batch):
    from tlutils.methods.adversarial import ascent_step

    steps, epsilon, alpha = 3, 0.5, 0.2
    torch.manual_seed(3)
    loss, stats = freelb_loss_fn(epsilon, steps, alpha)(model, padded_batch)
    ours = _gradients(model, loss)
    torch.manual_seed(3)  # the same random start
    mask = token_mask(padded_batch)
    delta = random_delta(zero_delta(model, padded_batch), mask, epsilon)
    total, losses = None, []
    for _ in range(steps):
        delta.requires_grad_(True)
        point = loss_at(model, padded_batch, delta)
        model.zero_grad(set_to_none=True)
        point.backward()
        grads = {n: p.grad.clone() / steps for n, p in model.named_parameters() if p.grad is not None}
        total = grads if total is None else {n: total[n] + grads[n] for n in total}
        losses.append(point.item())
        delta = ascent_step(delta.detach(), delta.grad, alpha, epsilon, mask)
    model.zero_grad(set_to_none=True)
    for name in total:
        torch.testing.assert_close(ours[name], total[name], rtol=1e-4, atol=1e-6)
    assert loss.item() == pytest.approx(sum(losses) / steps, rel=1e-5)
    assert stats["delta_norm"] <= epsilon * (1 + 1e-5)


@pytest.mark.parametrize("make,passes", [(lambda: fgm_embedding_loss_fn(0.1), 2),
                                          (lambda: pgd_loss_fn(0.1, steps=3), 4),
                                          (lambda: pgd_loss_fn(0.1, steps=3, random_start=True), 5),
                                          (lambda: freelb_loss_fn(0.1, steps=3), 3)])
def test_forward_passes_per_step(model, batch, make, passes):
    calls = []
    handle = word_embeddings(model).register_forward_hook(lambda *args: calls.append(1))
    try:
        make()(model, batch)
    finally:
        handle.remove()
    assert len(calls) == passes


@pytest.mark.parametrize("make", [lambda: pgd_loss_fn(0.5, steps=2, random_start=True),
                                  lambda: freelb_loss_fn(0.5, steps=2),
                                  lambda: fgm_embedding_loss_fn(0.5)])
def test_the_embeddings_are_restored_exactly(model, padded_batch, make):
    emb = word_embeddings(model)
    weights = emb.weight.detach().clone()
    with torch.no_grad():
        before = model(**padded_batch).logits
    loss, _ = make()(model, padded_batch)
    _gradients(model, loss)
    pgd_attack(model, padded_batch, 0.5, steps=2)
    assert torch.equal(emb.weight.detach(), weights)
    assert not emb._forward_hooks  # the perturbation hook is gone
    with torch.no_grad():
        assert torch.equal(model(**padded_batch).logits, before)


@pytest.mark.parametrize("make", [lambda: pgd_loss_fn(-0.1), lambda: freelb_loss_fn(-1.0),
                                  lambda: fgm_embedding_loss_fn(-1e-3), lambda: fgm_loss_fn(-1.0),
                                  lambda: pgd_attack(None, {}, -0.5)])
def test_negative_epsilon_is_a_one_line_config_error(make):
    with pytest.raises(ConfigError, match="epsilon") as err:
        make()
    assert "\n" not in str(err.value)


def test_zero_steps_is_a_config_error():
    with pytest.raises(ConfigError, match="steps"):
        pgd_loss_fn(1.0, steps=0)
    with pytest.raises(ConfigError, match="steps"):
        freelb_loss_fn(1.0, steps=0)


@pytest.mark.parametrize("make", [lambda: pgd_loss_fn(0.1), lambda: freelb_loss_fn(0.1),
                                  lambda: fgm_embedding_loss_fn(0.1), lambda: fgm_loss_fn(0.1)])
def test_data_parallel_runs_are_refused_with_the_fix(model, batch, monkeypatch, make):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.raises(ConfigError, match="accelerate launch") as err:
        make()(model, batch)
    assert "\n" not in str(err.value)
    assert not word_embeddings(model)._forward_hooks


def test_predict_under_attack_is_pure_and_falls_with_epsilon(tiny_task_dir, tokenizer):
    from tlutils.data import load_task, tokenize_task
    from tlutils.train import predict

    data = load_task("mrpc", data_dir=tiny_task_dir)
    encoded, _ = tokenize_task(data, tokenizer, "mrpc", 32)
    model = load_model("tiny-bert", 2, seed=0).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    split = encoded["validation"]
    out = predict_under_attack(model, split, [0.0, 0.1, 0.5], steps=1, batch_size=5)
    clean, _ = predict(model, split, mixed_precision="no")
    np_labels = torch.tensor(split["labels"])
    assert torch.allclose(torch.tensor(out[0.0]), torch.tensor(clean), atol=1e-5)
    gold = lambda logits: torch.log_softmax(torch.tensor(logits), -1)[torch.arange(len(np_labels)), np_labels]  # noqa: E731
    assert gold(out[0.5]).mean() < gold(out[0.1]).mean() < gold(out[0.0]).mean()  # the gold class loses
    multi = predict_under_attack(model, split, [0.5], steps=3, batch_size=5)
    assert multi[0.5].shape == out[0.5].shape
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("make", [lambda: pgd_loss_fn(0.1, steps=2), lambda: freelb_loss_fn(0.1, steps=2),
                                  lambda: fgm_embedding_loss_fn(0.1)])
def test_embedding_attacks_plug_into_fit(tiny_task_dir, tokenizer, make):
    from tlutils.data import load_task, tokenize_task
    from tlutils.train import TrainConfig, fit

    data = load_task("mrpc", data_dir=tiny_task_dir)
    encoded, _ = tokenize_task(data, tokenizer, "mrpc", 32)
    model = load_model("tiny-bert", 2, seed=0)
    history = fit(model, encoded["train"], encoded["validation"], task="mrpc",
                  config=TrainConfig(epochs=1, batch_size=4, learning_rate=1e-3, progress=False,
                                     mixed_precision="no"), loss_fn=make())
    record = history.epochs[0]
    assert 0 < record["delta_norm"] <= 0.1 * (1 + 1e-5) and record["train_loss"] > 0
    assert not word_embeddings(model)._forward_hooks
