"""Properties of the multi-source pieces (tlutils.methods.multi_source): gates, per-source
discriminators, the target's labels kept out of every loss, source sets, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tlutils.errors import ConfigError, DataError
from tlutils.methods.domain import TrainingProgress
from tlutils.methods.domain_data import (SourceTargetBatchSampler, SourceTargetCollator, SourceTargetDataset,
                                         feature_items, leave_one_domain_out, per_domain_sizes)
from tlutils.methods.multi_source import (MDAN, MixtureOfExperts, SourceClassifier, check_source_weights,
                                          equal_share_rows, gate_weights, leave_own_out,
                                          make_accuracy_eval_fn, make_mdan_loss_fn, make_moe_loss_fn,
                                          make_source_loss_fn, predict_rows, similarity_weights, source_subsets)
from tlutils.methods.multitask import CachedFeatureEncoder
from tlutils.train import TrainConfig, fit

K, D, C = 3, 8, 2  # sources, feature width, classes


def toy(seed: int = 0, n_per_source: int = 12, n_target: int = 10):
    """A feature table of K sources and a target, source items with labels, target items without."""
    rng = np.random.default_rng(seed)
    shift = np.arange(K + 1)[:, None] * 0.5
    parts = [rng.normal(size=(n_per_source, D)) + shift[k] for k in range(K)] + [rng.normal(size=(n_target, D)) + shift[K]]
    table = np.concatenate(parts).astype(np.float32)
    ids = np.repeat(np.arange(K), n_per_source)
    labels = (table[: K * n_per_source, 0] > table[: K * n_per_source, 1]).astype(int)
    source = [{"input_ids": [i], "labels": int(y)} for i, y in enumerate(labels)]
    target = [{"input_ids": [K * n_per_source + j]} for j in range(n_target)]
    return table, source, target, ids


def batch_of(table, source, target, ids):
    """One paired batch: every source row and every target row."""
    data = SourceTargetDataset(source, target, ids, num_sources=K)
    return SourceTargetCollator(num_sources=K)([data[i] for i in range(len(data))])


def poisoned(batch: dict, seed: int = 1) -> dict:
    """The batch with random *valid* labels written onto its target rows (a leak, if any loss read them)."""
    out = dict(batch)
    labels = batch["labels"].clone()
    rng = torch.Generator().manual_seed(seed)
    labels[batch["is_target"]] = torch.randint(0, C, (int(batch["is_target"].sum()),), generator=rng)
    out["labels"] = labels
    return out


def models(table, dropout: float = 0.0):
    torch.manual_seed(0)
    trunk = lambda: CachedFeatureEncoder(table, hidden=16, dropout=dropout)  # noqa: E731
    return {"pooled": SourceClassifier(trunk(), C, dropout=dropout),
            "mdan": MDAN(trunk(), C, K, hidden=8, dropout=dropout),
            "moe-avg": MixtureOfExperts(trunk(), C, K, gate="average", hidden=8, dropout=dropout),
            "moe-att": MixtureOfExperts(trunk(), C, K, gate="attention", hidden=8, dropout=dropout)}


def loss_fns(progress):
    return {"pooled": make_source_loss_fn(), "mdan": make_mdan_loss_fn(progress),
            "moe-avg": make_moe_loss_fn(), "moe-att": make_moe_loss_fn()}


# --------------------------------------------------------------------------- gates


def test_gate_weights_sum_to_one_per_example_and_masked_experts_get_exactly_zero():
    scores = torch.randn(5, 4)
    allowed = torch.rand(5, 4) > 0.4
    allowed[:, 0] = True  # every row keeps at least one expert
    g = gate_weights(scores, allowed)
    assert g.shape == (5, 4) and torch.allclose(g.sum(-1), torch.ones(5))
    assert (g[~allowed] == 0).all() and (g[allowed] > 0).all()
    uniform = gate_weights(torch.zeros(2, 3))
    assert torch.allclose(uniform, torch.full((2, 3), 1 / 3))
    with pytest.raises(ConfigError, match="no allowed expert"):
        gate_weights(scores, torch.zeros(5, 4, dtype=torch.bool))


@pytest.mark.parametrize("gate", ["average", "attention"])
def test_moe_gate_is_per_example_and_sums_to_one(gate):
    table, source, target, ids = toy()
    model = models(table)[{"average": "moe-avg", "attention": "moe-att"}[gate]]
    model.eval()
    out = model(torch.arange(20)[:, None])
    assert out.gate.shape == (20, K) and out.expert_logits.shape == (20, K, C) and out.logits.shape == (20, C)
    assert torch.allclose(out.gate.sum(-1), torch.ones(20), atol=1e-6)
    assert torch.allclose(out.logits.exp().sum(-1), torch.ones(20), atol=1e-5)  # log-probabilities of a mixture
    if gate == "average":
        assert torch.allclose(out.gate, torch.full((20, K), 1 / K))
    else:  # a weighting per example: rows differ
        assert out.gate.std(0).max() > 1e-4
    # the mixture is the gate-weighted average of the experts' probabilities
    mix = (out.gate.unsqueeze(-1) * out.expert_logits.softmax(-1)).sum(1)
    assert torch.allclose(out.logits.exp(), mix, atol=1e-5)


def test_leave_own_out_masks_only_the_rows_own_expert():
    domain = torch.tensor([0, 2, 1, K, K])  # three source rows, two target rows
    allowed = leave_own_out(domain, K, K + 1)  # a shared expert last
    assert allowed.tolist() == [[False, True, True, True], [True, True, False, True], [True, False, True, True],
                                [True] * 4, [True] * 4]


def test_moe_meta_training_gives_the_own_expert_no_weight_in_the_mixture():
    table, source, target, ids = toy()
    model = models(table)["moe-att"]
    eval_ids = np.repeat(np.arange(K), 12)
    gates = predict_rows(model, source, domain_ids=eval_ids, num_sources=K)["gate"]  # (N, K)
    assert np.allclose(gates[np.arange(len(eval_ids)), eval_ids], 0) and np.allclose(gates.sum(1), 1, atol=1e-6)
    full = predict_rows(model, source)["gate"]
    assert (full > 0).all()  # on prediction every expert takes part


# --------------------------------------------------------------------------- MDAN


def test_each_discriminator_sees_only_its_sources_rows_and_the_targets():
    table, source, target, ids = toy()
    model = models(table)["mdan"]
    batch = batch_of(table, source, target, ids)
    seen = {}
    hooks = [d.register_forward_hook(lambda m, inp, out, k=k: seen.__setitem__(k, inp[0].detach().clone()))
             for k, d in enumerate(model.discriminators)]
    loss, stats = make_mdan_loss_fn(TrainingProgress(10))(model, batch)
    for h in hooks:
        h.remove()
    z = model.representation(batch["input_ids"], batch["attention_mask"]).detach()  # dropout 0: the same states
    for k in range(K):
        expected = (batch["domain_id"] == k) | batch["is_target"]
        assert seen[k].shape[0] == int(expected.sum()) == 12 + 10
        assert torch.allclose(seen[k], z[expected])
    assert math.isfinite(float(loss.detach())) and 0.0 <= stats["domain_accuracy"] <= 1.0 and stats["lambda"] == 0.0


def test_mdan_soft_aggregation_lies_between_the_max_and_max_plus_log_k_over_gamma():
    table, source, target, ids = toy()
    model = models(table)["mdan"]
    batch = batch_of(table, source, target, ids)
    progress = TrainingProgress(10)
    hard = float(make_mdan_loss_fn(progress, aggregation="hard")(model, batch)[0].detach())
    for gamma in (1.0, 10.0):
        soft = float(make_mdan_loss_fn(progress, gamma=gamma)(model, batch)[0].detach())
        assert hard - 1e-6 <= soft <= hard + math.log(K) / gamma + 1e-6


def test_mdan_needs_target_rows_in_its_batches():
    table, source, target, ids = toy()
    model = models(table)["mdan"]
    batch = batch_of(table, source, target, ids)
    no_target = {k: v[~batch["is_target"]] for k, v in batch.items()}
    with pytest.raises(DataError, match="target rows"):
        make_mdan_loss_fn(TrainingProgress(10))(model, no_target)


# --------------------------------------------------------------------------- the target's labels never reach a loss


@pytest.mark.parametrize("arm", ["pooled", "mdan", "moe-avg", "moe-att"])
def test_poisoned_target_labels_change_neither_loss_nor_gradients(arm):
    table, source, target, ids = toy()
    batch = batch_of(table, source, target, ids)
    assert (batch["labels"][batch["is_target"]] == -100).all()
    results = []
    for b in (batch, poisoned(batch)):
        model = models(table)[arm]
        progress = TrainingProgress(10)
        progress({"global_step": 5})  # lambda > 0: the reversed gradient is live
        loss, _ = loss_fns(progress)[arm](model, b)
        loss.backward()
        results.append((float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == loss_b and len(grads_a) == len(grads_b) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


class PoisoningCollator(SourceTargetCollator):
    """Writes random valid labels onto the target rows of every batch (a leak to be ignored)."""

    def __call__(self, examples):
        return poisoned(super().__call__(examples), seed=len(examples))


@pytest.mark.parametrize("arm", ["pooled", "mdan", "moe-att"])
def test_training_through_fit_is_unchanged_when_the_target_labels_are_poisoned(arm):
    table, source, target, ids = toy()
    weights = []
    for collator in (SourceTargetCollator(num_sources=K), PoisoningCollator(num_sources=K)):
        model = models(table, dropout=0.1)[arm]
        data = SourceTargetDataset(source, target, ids, num_sources=K)
        sampler = SourceTargetBatchSampler(data.num_source, data.num_target, 8, target_batch_size=4, seed=0)
        progress = TrainingProgress(2 * len(sampler))
        fit(model, data, loss_fn=loss_fns(progress)[arm], batch_sampler=sampler, collate_fn=collator,
            callbacks=(progress,), config=TrainConfig(epochs=2, learning_rate=1e-2, batch_size=8, mixed_precision="no",
                                                      warmup_fraction=0.0, seed=0, progress=False))
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# --------------------------------------------------------------------------- weighted loss


def test_source_weights_weight_each_sources_mean_loss():
    table, source, target, ids = toy()
    batch = batch_of(table, source, target, ids)
    model = models(table)["pooled"]
    plain = float(make_source_loss_fn()(model, batch)[0].detach())
    equal = float(make_source_loss_fn([1.0, 1.0, 1.0])(model, batch)[0].detach())
    assert equal == pytest.approx(plain, abs=1e-6)  # equal rows per source: the same mean
    only_first = float(make_source_loss_fn([1.0, 0.0, 0.0])(model, batch)[0].detach())
    rows = (batch["domain_id"] == 0) & ~batch["is_target"]
    logits = model(batch["input_ids"][rows]).logits
    assert only_first == pytest.approx(float(torch.nn.functional.cross_entropy(logits, batch["labels"][rows]).detach()), abs=1e-6)


def test_similarity_weights_favour_the_source_the_domain_classifier_confuses_with_the_target():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(60, 4))
    sources = {"near": rng.normal(size=(60, 4)) + 0.05, "far": rng.normal(size=(60, 4)) + 3.0}
    weights, scores = similarity_weights(sources, target)
    assert set(weights) == {"near", "far"} and sum(weights.values()) == pytest.approx(1.0)
    assert weights["near"] > weights["far"] > 0
    assert scores["far"]["proxy_a_distance"] > scores["near"]["proxy_a_distance"]


# --------------------------------------------------------------------------- source sets


@pytest.mark.parametrize("target", ["books", "dvd", "electronics", "kitchen"])
def test_leave_one_domain_out_sets_are_disjoint_from_the_target(data_dir, target):
    split = leave_one_domain_out("amazon", target, sizes=per_domain_sizes("smoke"), data_dir=data_dir)
    assert target not in split.sources and len(split.sources) == 3
    source_ids = set(split.source_train["id"]) | set(split.source_validation["id"])
    target_ids = set(split.target_unlabelled["id"]) | set(split.target_test["id"])
    assert not source_ids & target_ids and set(split.source_train["domain"]) == set(split.sources)
    assert "label" not in split.target_unlabelled.column_names
    for size in (1, 2, 3):
        subsets = source_subsets(split.sources, size)
        assert len(subsets) == math.comb(3, size) and len(set(subsets)) == len(subsets)
        assert all(target not in s and len(set(s)) == size for s in subsets)


def test_source_subsets_sample_and_equal_shares():
    sources = ("a", "b", "c", "d")
    assert source_subsets(sources, 2, max_subsets=3, seed=1) == source_subsets(sources, 2, max_subsets=3, seed=1)
    assert len(source_subsets(sources, 2, max_subsets=3)) == 3 and len(source_subsets(sources, 4)) == 1
    ids = np.repeat(np.arange(4), 10)
    rows = equal_share_rows(ids, [0, 2, 3], 20, seed=0)
    assert len(rows) == len(set(rows)) == 20 and sorted(np.bincount(ids[rows], minlength=4).tolist()) == [0, 6, 7, 7]
    assert set(ids[rows]) == {0, 2, 3}
    with pytest.raises(DataError, match="fewer than its share"):
        equal_share_rows(ids, [0], 11)


# --------------------------------------------------------------------------- bad input: one line, with the fix


@pytest.mark.parametrize("call, match", [
    (lambda: leave_one_domain_out("amazon", "books", ["books", "dvd"]), "also a source"),
    (lambda: leave_one_domain_out("amazon", "toys"), "no domain 'toys'"),
    (lambda: leave_one_domain_out("amazon", "books", ["dvd", "garden"]), "choose from"),
    (lambda: check_source_weights({"books": 1.0, "dvd": 1.0}, ["books", "dvd", "kitchen"]), "one weight per source"),
    (lambda: check_source_weights([1.0, 2.0], ["books", "dvd", "kitchen"]), "per source"),
    (lambda: check_source_weights([1.0, -1.0], ["books", "dvd"]), "non-negative"),
    (lambda: check_source_weights([0.0, 0.0], ["books", "dvd"]), "positive weight"),
    (lambda: source_subsets(("a", "b"), 3), "between 1 and"),
    (lambda: source_subsets(("a", "a"), 1), "twice"),
    (lambda: make_mdan_loss_fn(TrainingProgress(1), aggregation="mean"), "soft"),
    (lambda: MixtureOfExperts(CachedFeatureEncoder(np.ones((2, 3))), 2, 2, gate="softmax"), "average, attention"),
    (lambda: make_source_loss_fn([1.0, -2.0]), "non-negative"),
])
def test_bad_input_gives_one_line_naming_the_fix(call, match):
    with pytest.raises((ConfigError, DataError), match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_check_source_weights_normalises_in_source_order():
    w = check_source_weights({"dvd": 3.0, "books": 1.0}, ["books", "dvd"])
    assert w.tolist() == [0.25, 0.75]


def test_a_labelled_target_item_is_refused():
    table, source, target, ids = toy()
    with pytest.raises(DataError, match="target item carries labels"):
        SourceTargetDataset(source, [{"input_ids": [40], "labels": 1}], ids, num_sources=K)


def test_the_accuracy_eval_fn_scores_a_mixture_without_each_rows_own_expert():
    table, source, target, ids = toy()
    model = models(table)["moe-att"]
    labels = np.array([s["labels"] for s in source])
    loo = make_accuracy_eval_fn(labels, domain_ids=ids, num_sources=K)(model, source)
    full = make_accuracy_eval_fn(labels)(model, source)
    expected = (predict_rows(model, source, domain_ids=ids, num_sources=K)["logits"].argmax(1) == labels).mean()
    assert loo["accuracy"] == pytest.approx(expected) and 0 <= loo["worst_source_accuracy"] <= loo["accuracy"] + 1e-9
    assert set(full) == {"accuracy"}
    assert feature_items(2) == [{"input_ids": [0]}, {"input_ids": [1]}]
