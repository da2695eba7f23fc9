"""Multi-task learning: shared-encoder gradients, regression heads, task mixing, the task sampler and fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tlutils.data import TASKS
from tlutils.errors import ConfigError, DataError
from tlutils.methods.multitask import (CachedFeatureEncoder, MultiTaskCollator, MultiTaskDataset, MultiTaskModel,
                                       TaskBatchSampler, batch_counts, evaluate_tasks, feature_rows,
                                       make_multitask_eval_fn, make_multitask_loss_fn, mixing_rates)
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


# --------------------------------------------------------------------------- regression heads, mixing, sampler

SIZES = {"mrpc": 400, "rte": 100, "stsb": 25}


def _feature_model(tasks, n=64, d=6, seed=0):
    torch.manual_seed(seed)
    return MultiTaskModel.for_tasks(CachedFeatureEncoder(torch.randn(n, d), hidden=8, dropout=0.0), tasks)


def test_regression_head_loss_is_mse_and_classification_is_cross_entropy():
    model = _feature_model(("stsb", "mrpc")).eval()
    assert model.regression == {"stsb"} and model.heads["stsb"].out_features == 1
    batch = {"input_ids": torch.arange(5)[:, None], "attention_mask": torch.ones(5, 1, dtype=torch.long)}
    target = torch.tensor([0.0, 1.5, 2.5, 4.0, 5.0])
    logits, loss = model("stsb", {**batch, "labels": target})
    assert logits.shape == (5, 1)
    torch.testing.assert_close(loss, ((logits.squeeze(-1) - target) ** 2).mean())
    classes = torch.tensor([0, 1, 1, 0, 1])
    logits, loss = model("mrpc", {**batch, "labels": classes})
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, classes))
    # the regression gradient is 2 (prediction - target) / B on the head's bias
    (grad,) = torch.autograd.grad(model("stsb", {**batch, "labels": target})[1], model.heads["stsb"].bias)
    pred = model("stsb", batch)[0].squeeze(-1).detach()
    torch.testing.assert_close(grad, (2 * (pred - target)).mean().reshape(1))


def test_mixing_rates_temperature_one_is_proportional_and_large_t_tends_to_uniform():
    prop = mixing_rates(SIZES, 1.0)
    total = sum(SIZES.values())
    assert all(math.isclose(prop[t], n / total) for t, n in SIZES.items())
    sqrt = mixing_rates(SIZES, 2.0)
    norm = sum(math.sqrt(n) for n in SIZES.values())
    assert all(math.isclose(sqrt[t], math.sqrt(n) / norm) for t, n in SIZES.items())
    spread = [max(mixing_rates(SIZES, t).values()) - min(mixing_rates(SIZES, t).values()) for t in (1, 2, 4, 16, 1e6)]
    assert spread == sorted(spread, reverse=True) and spread[-1] < 1e-4  # towards equal shares
    assert mixing_rates(SIZES, math.inf) == {t: 1 / 3 for t in SIZES}
    rates = [mixing_rates(SIZES, t)["stsb"] for t in (1, 2, 4)]  # the smallest task gains
    assert rates == sorted(rates)


@pytest.mark.parametrize("mixing,temperature", [("proportional", 1.0), ("temperature", 2.0), ("temperature", 4.0)])
def test_sampler_task_proportions_match_the_mixing_rates(mixing, temperature):
    sampler = TaskBatchSampler(SIZES, 8, mixing=mixing, temperature=temperature, num_batches=97, seed=3)
    offsets = np.cumsum([0, *SIZES.values()])
    rates = mixing_rates(SIZES, temperature)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 97
        tasks = [int(np.searchsorted(offsets, b[0], side="right") - 1) for b in batches]
        for b, t in zip(batches, tasks):  # one task per batch (a pass over a task may end short)
            assert 1 <= len(b) <= 8 and all(offsets[t] <= i < offsets[t + 1] for i in b)
        for k, name in enumerate(SIZES):
            assert abs(tasks.count(k) - rates[name] * 97) < 1.0
    assert batch_counts(rates, 97) == {name: [*map(tasks.count, range(3))][k] for k, name in enumerate(SIZES)}


def test_round_robin_alternates_and_oversamples_the_small_task():
    sampler = TaskBatchSampler(SIZES, 10, mixing="round_robin", num_batches=30)
    offsets = np.cumsum([0, *SIZES.values()])
    tasks = [int(np.searchsorted(offsets, b[0], side="right") - 1) for b in sampler]
    assert tasks == [0, 1, 2] * 10
    small = [i for b in sampler for i in b if i >= offsets[2]]  # 10 batches from stsb's 25 examples
    assert len(small) == 3 * 25 + 10 and set(small) == set(range(offsets[2], offsets[3]))


def test_sampler_is_seeded_per_epoch_and_shards_by_rank():
    one = TaskBatchSampler(SIZES, 8, seed=1)
    assert list(one) == list(one)
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first
    ranks = [TaskBatchSampler(SIZES, 8, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == len(ranks[0])
    offsets = np.cumsum([0, *SIZES.values()])
    task = lambda batch: int(np.searchsorted(offsets, batch[0], side="right") - 1)  # noqa: E731
    assert [task(x) for x in a] == [task(x) for x in b]  # every rank trains the same head in a step
    for t, n in enumerate(SIZES.values()):  # one pass over a task: the ranks' shards cover it and are
        per_rank = math.ceil(math.ceil(n / 2) / 8)  # disjoint but for DistributedSampler's padding of an odd size
        shards = [{i for b in r._task_batches(t, per_rank) for i in b} for r in ranks]
        assert len(shards[0] & shards[1]) == 2 * math.ceil(n / 2) - n and len(shards[0] | shards[1]) == n


def test_unknown_task_in_a_mix_is_one_line_naming_the_known_tasks():
    for make in (lambda: TaskBatchSampler({"mrpc": 10, "cola": 10}, 4),
                 lambda: MultiTaskDataset({"mrpc": [{"input_ids": [1], "labels": 0}], "cola": [{"input_ids": [1], "labels": 0}]}),
                 lambda: MultiTaskModel.for_tasks(CachedFeatureEncoder(torch.zeros(2, 2)), ("rte", "cola")),
                 lambda: make_multitask_loss_fn(("mrpc", "cola"))):
        with pytest.raises(ConfigError) as info:
            make()
        message = str(info.value)
        assert "\n" not in message and "'cola'" in message
        assert all(name in message for name in TASKS)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_bad_mixing_settings_are_refused(bad):
    with pytest.raises(ConfigError, match="temperature"):
        mixing_rates(SIZES, bad)
    with pytest.raises(ConfigError, match="positive"):
        mixing_rates({"mrpc": 10, "rte": 0})
    with pytest.raises(ConfigError, match="round_robin"):
        TaskBatchSampler(SIZES, 4, mixing="annealed")
    with pytest.raises(ConfigError, match="No head"):
        _feature_model(("mrpc",))("rte", {"input_ids": torch.zeros(1, 1, dtype=torch.long),
                                          "attention_mask": torch.ones(1, 1, dtype=torch.long)})


def test_collator_carries_the_task_and_refuses_a_mixed_batch():
    data = MultiTaskDataset({"mrpc": feature_rows([0, 1, 1]), "stsb": feature_rows([0.5, 4.0])})
    collate = data.collator()
    assert isinstance(collate, MultiTaskCollator)
    batch = collate([{**data[i], "idx": i} for i in (3, 4)])
    assert int(batch["task_id"]) == 1 and data.tasks[1] == "stsb" and batch["labels"].dtype == torch.float
    assert int(collate([{**data[i], "idx": i} for i in (0, 2)])["task_id"]) == 0
    with pytest.raises(DataError, match="TaskBatchSampler"):
        collate([{**data[i], "idx": i} for i in (2, 3)])


def test_fit_trains_a_classification_and_a_regression_head_with_per_task_metrics():
    from tlutils.train import TrainConfig, fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 6)).astype(np.float32)
    cls_y = (x[:80, 0] > 0).astype(int).tolist()
    reg_y = (2.5 + x[80:, 1]).clip(0, 5).tolist()
    torch.manual_seed(0)
    model = MultiTaskModel.for_tasks(CachedFeatureEncoder(x, hidden=16, dropout=0.0), ("mrpc", "stsb"))
    # the rows of stsb are ids 80..159 of the same table
    train = MultiTaskDataset({"mrpc": feature_rows(cls_y), "stsb": [{"input_ids": [80 + i], "labels": y}
                                                                   for i, y in enumerate(reg_y)]})
    sampler = TaskBatchSampler(train.sizes, 16, mixing="round_robin", num_batches=40)
    loss_fn = make_multitask_loss_fn(train.tasks)
    before = evaluate_tasks(model, {"mrpc": train.parts[0], "stsb": train.parts[1]})
    history = fit(model, train, {"mrpc": train.parts[0], "stsb": train.parts[1]}, loss_fn=loss_fn,
                  batch_sampler=sampler, collate_fn=train.collator(), eval_fn=make_multitask_eval_fn(),
                  config=TrainConfig(epochs=2, learning_rate=1e-2, batch_size=16, mixed_precision="no",
                                     progress=False, select_best=False))
    last = history.epochs[-1]
    assert {"eval_mrpc_accuracy", "eval_stsb_pearson", "eval_stsb_spearman", "eval_average"} <= set(last)
    assert len(history.epochs) == 2 and len(history.steps) == 80
    assert math.isclose(last["share_mrpc"], 0.5) and math.isclose(last["share_stsb"], 0.5)
    assert last["eval_mrpc_accuracy"] > max(0.8, before["mrpc_accuracy"])
    assert last["eval_stsb_pearson"] > max(0.5, before["stsb_pearson"])
