"""Properties of DANN (tlutils.methods.domain): the schedule, the gradient reversal through the
discriminator, the loss on paired source/target batches, and that the target's labels never
reach a loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tlutils.errors import ConfigError, DataError
from tlutils.methods.domain import (DANNModel, DomainDiscriminator, TrainingProgress, grl_coeff, label_loss,
                                    make_dann_loss_fn, total_optimizer_steps)
from tlutils.methods.domain_data import SourceTargetBatchSampler, SourceTargetCollator, SourceTargetDataset
from tlutils.methods.multitask import CachedFeatureEncoder
from tlutils.train import TrainConfig, fit, predict


def test_schedule_is_zero_at_the_start_and_nearly_one_at_the_end():
    assert grl_coeff(0.0) == 0.0
    assert math.isclose(grl_coeff(1.0), 2 / (1 + math.exp(-10)) - 1) and grl_coeff(1.0) > 0.9999
    progress = TrainingProgress(200)
    assert progress.fraction == 0.0 and progress.coeff() == 0.0
    progress({"global_step": 200})
    assert progress.fraction == 1.0 and math.isclose(progress.coeff(high=0.3), 0.3 * grl_coeff(1.0))
    progress.on_train_begin({"global_step": 50})  # a resumed run starts where the checkpoint was
    assert progress.fraction == 0.25
    with pytest.raises(ConfigError, match="total_steps"):
        TrainingProgress(0)


def test_total_optimizer_steps_counts_like_fit():
    assert total_optimizer_steps(10, 3) == 30
    assert total_optimizer_steps(10, 3, grad_accum_steps=4) == 9  # ceil(10 / 4) per epoch
    assert total_optimizer_steps(10, 3, max_steps=7) == 7


def _model(table: np.ndarray, seed: int = 0, dropout: float = 0.0) -> DANNModel:
    torch.manual_seed(seed)
    return DANNModel(CachedFeatureEncoder(table, hidden=8, dropout=dropout), 2, discriminator_hidden=8,
                     dropout=dropout)


def _batch(n_source: int = 4, n_target: int = 4, offset: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.arange(offset, offset + n_source + n_target)[:, None]  # (B, 1) rows of the table
    is_target = torch.tensor([False] * n_source + [True] * n_target)
    labels = torch.tensor([i % 2 for i in range(n_source)] + [-100] * n_target)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "domain_id": torch.where(is_target, 1, 0), "is_target": is_target}


def test_discriminator_returns_one_logit_per_row():
    d = DomainDiscriminator(6, hidden=4)
    assert d(torch.randn(5, 6)).shape == (5,)


def test_reversal_flips_the_discriminator_gradient_on_the_features():
    """Through the GRL the adapter receives -lambda times the gradient that would make the
    discriminator better; the discriminator's own weights receive the plain gradient."""
    table = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    model = _model(table)
    batch = _batch()
    target = batch["is_target"].float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    adapter, first = model.encoder.shared[0].weight, model.discriminator.net[0].weight

    # the plain gradients: the discriminator on the features, no reversal
    z = model.representation(batch["input_ids"], batch["attention_mask"])  # (B, H)
    plain_adapter, plain_disc = torch.autograd.grad(bce(model.discriminator(z), target), [adapter, first])

    for lam in (0.0, 0.5, 1.0):
        out = model(batch["input_ids"], batch["attention_mask"], grl_coeff=lam)
        adapter_grad, disc_grad = torch.autograd.grad(bce(out.domain_logits, target), [adapter, first])
        torch.testing.assert_close(disc_grad, plain_disc)  # the discriminator learns as without reversal
        torch.testing.assert_close(adapter_grad, -lam * plain_adapter)  # the features: reversed, scaled

    # one step along the reversed gradient makes the discriminator's loss larger, not smaller
    model.zero_grad()
    loss = bce(model(batch["input_ids"], batch["attention_mask"], grl_coeff=1.0).domain_logits, target)
    loss.backward()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p -= 1e-2 * p.grad
        after = bce(model(batch["input_ids"], batch["attention_mask"], grl_coeff=1.0).domain_logits, target)
    assert after > loss


def test_dann_loss_is_task_plus_domain_and_source_only_skips_the_discriminator():
    table = np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32)
    model = _model(table)
    progress = TrainingProgress(10)
    progress({"global_step": 5})
    batch = _batch()
    loss, stats = make_dann_loss_fn(progress, max_coeff=0.5, domain_weight=2.0)(model, batch)
    out = model(batch["input_ids"], batch["attention_mask"])
    task = torch.nn.functional.cross_entropy(out.logits[:4], batch["labels"][:4])
    domain = torch.nn.functional.binary_cross_entropy_with_logits(
        model.discriminator(out.features), batch["is_target"].float())
    torch.testing.assert_close(loss, task + 2.0 * domain)
    assert math.isclose(stats["lambda"], grl_coeff(0.5, high=0.5)) and 0 <= stats["domain_accuracy"] <= 1
    loss0, stats0 = make_dann_loss_fn(progress, domain_weight=0.0)(model, batch)
    torch.testing.assert_close(loss0, task)
    assert "domain_loss" not in stats0
    model.zero_grad()
    loss0.backward()
    assert all(p.grad is None for p in model.discriminator.parameters())
    with pytest.raises(DataError, match="is_target"):
        make_dann_loss_fn(progress)(model, {k: v for k, v in batch.items() if k != "is_target"})
    with pytest.raises(ConfigError):
        make_dann_loss_fn(progress, domain_weight=-1.0)


def test_labels_on_target_rows_never_reach_the_loss():
    """A batch whose target rows carry real labels (a forged batch) gives the same loss and the
    same gradients as the batch the collator makes (-100 on target rows)."""
    table = np.random.default_rng(2).normal(size=(8, 5)).astype(np.float32)
    progress = TrainingProgress(10)
    progress({"global_step": 3})
    clean = _batch()
    forged = dict(clean, labels=torch.tensor([0, 1, 0, 1, 1, 1, 0, 0]))
    results = []
    for batch in (clean, forged, dict(forged, is_target=torch.zeros(8, dtype=torch.bool))):
        model = _model(table)
        loss_fn = make_dann_loss_fn(progress, num_sources=1)  # the domain id marks the target rows too
        loss, _ = loss_fn(model, batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0])
        for g, g0 in zip(grads, results[0][1]):
            torch.testing.assert_close(g, g0)
    assert label_loss(torch.randn(3, 2), torch.full((3,), -100)).item() == 0.0


def _paired_data(table: np.ndarray, labels: np.ndarray, n_source: int, n_target: int):
    source = [{"input_ids": [i], "labels": int(labels[i])} for i in range(n_source)]
    target = [{"input_ids": [n_source + j]} for j in range(n_target)]
    return SourceTargetDataset(source, target, [i % 2 for i in range(n_source)])


def _train(table, labels, *, domain_weight, seed=0, epochs=3):
    n_source, n_target = 24, 12
    data = _paired_data(table, labels, n_source, n_target)
    sampler = SourceTargetBatchSampler(n_source, n_target, 6, seed=seed)
    progress = TrainingProgress(total_optimizer_steps(len(sampler), epochs))
    model = _model(table, seed, dropout=0.1)
    config = TrainConfig(epochs=epochs, batch_size=6, learning_rate=1e-2, warmup_fraction=0.0, progress=False,
                         mixed_precision="no", seed=seed, select_best=False)
    history = fit(model, data, config=config, loss_fn=make_dann_loss_fn(progress, domain_weight=domain_weight,
                                                                         num_sources=2),
                  batch_sampler=sampler, collate_fn=SourceTargetCollator(num_sources=2), callbacks=[progress])
    return model, history, progress


def test_dann_trains_through_fit_and_the_schedule_follows_fits_steps():
    rng = np.random.default_rng(3)
    table = rng.normal(size=(36, 5)).astype(np.float32)
    table[24:] += 1.5  # the target is shifted
    labels = (table[:, 0] > 0).astype(int)
    model, history, progress = _train(table, labels, domain_weight=1.0)
    assert progress.step == len(history.steps) == progress.total_steps == 12
    lambdas = [e["lambda"] for e in history.epochs]
    assert lambdas == sorted(lambdas) and 0 < lambdas[0] < lambdas[-1] < 1
    assert {"task_loss", "domain_loss", "domain_accuracy"} <= set(history.epochs[-1])
    logits, _ = predict(model, [{"input_ids": [i], "labels": int(labels[i])} for i in range(36)],
                        mixed_precision="no")
    assert logits.shape == (36, 2)


def test_training_ignores_the_targets_hidden_labels_and_source_only_ignores_the_target():
    """Poison everything the target's labels could touch: the result does not move. Source-only
    (domain weight 0) does not even depend on the target's features."""
    rng = np.random.default_rng(4)
    table = rng.normal(size=(36, 5)).astype(np.float32)
    labels = (table[:, 0] > 0).astype(int)
    poisoned = labels.copy()
    poisoned[24:] = 1 - poisoned[24:]  # the target rows' labels flipped: they are never given to the dataset
    with pytest.raises(DataError, match="target item carries labels"):
        SourceTargetDataset([{"input_ids": [0], "labels": 0}], [{"input_ids": [1], "labels": 1}], [0])
    w = {}
    for name, (t, y, weight) in {"dann": (table, labels, 1.0), "dann poisoned": (table, poisoned, 1.0),
                                 "source-only": (table, labels, 0.0)}.items():
        model, _, _ = _train(t, y, domain_weight=weight)
        w[name] = [p.detach().clone() for p in model.parameters()]
    noisy = table.copy()
    noisy[24:] = rng.normal(size=(12, 5)) * 10  # other target features
    model, _, _ = _train(noisy, labels, domain_weight=0.0)
    for a, b in zip(w["dann"], w["dann poisoned"]):
        assert torch.equal(a, b)
    for a, b in zip(w["source-only"], [p.detach() for p in model.parameters()]):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(w["dann"], w["source-only"]))


def test_dann_fine_tunes_a_transformer_end_to_end_on_tokenized_rows(tokenizer, data_dir):
    """The record profile's path: a (tiny) BERT inside DANNModel, trained through fit on a
    SourceTargetDataset of tokenized Amazon rows, then scored with predict."""
    from datasets import DatasetDict

    from tlutils.data import tokenize_task
    from tlutils.methods.domain_data import leave_one_domain_out
    from tlutils.models import load_model

    split = leave_one_domain_out("amazon", "kitchen", ["books", "dvd"], sizes={"train": 8, "validation": 4, "test": 6})
    data, _ = tokenize_task(DatasetDict({"source": split.source_train, "target": split.target_unlabelled,
                                         "test": split.target_test}), tokenizer, "amazon", 32)
    keep = ["input_ids", "attention_mask", "token_type_ids", "labels"]
    source = data["source"].select_columns(keep)
    target = data["target"].select_columns([c for c in keep if c != "labels"])
    assert "labels" not in target.column_names
    dataset = SourceTargetDataset(source, target, split.source_domain_ids())
    sampler = SourceTargetBatchSampler(len(source), len(target), 4, seed=0)
    progress = TrainingProgress(total_optimizer_steps(len(sampler), 1))
    model = DANNModel(load_model("tiny-bert", 2, seed=0).base_model, 2)
    history = fit(model, dataset, data["test"], task="amazon", batch_sampler=sampler,
                  collate_fn=SourceTargetCollator(tokenizer.pad_token_id, num_sources=2),
                  loss_fn=make_dann_loss_fn(progress, num_sources=2), callbacks=[progress],
                  config=TrainConfig(epochs=1, batch_size=4, learning_rate=1e-3, progress=False, mixed_precision="no"))
    assert progress.step == progress.total_steps == len(history.steps) == 4
    assert "eval_accuracy" in history.epochs[0] and history.epochs[0]["domain_accuracy"] >= 0
    logits, gold = predict(model, data["test"], mixed_precision="no")
    assert logits.shape == (6, 2) and len(gold) == 6


def test_poisoned_target_labels_leave_dann_unchanged_and_only_move_the_oracle(tmp_path, monkeypatch, data_dir):
    """Two data folders that differ only in the target domain's labels (training and test rows
    flipped): DANN trained through the leave-one-domain-out protocol ends with the same weights
    on both; the oracle, the one arm allowed the target's labels, does not."""
    import json

    from tlutils.methods.domain_data import domain_features, leave_one_domain_out, oracle_train
    from tlutils.models import load_model, load_tokenizer

    monkeypatch.setenv("TLUTILS_OUTPUT_DIR", str(tmp_path / "outputs"))
    target = "kitchen"
    folders = {}
    for name, poison in (("clean", False), ("poisoned", True)):
        folder = tmp_path / name / "amazon_multidomain"
        folder.mkdir(parents=True)
        for split in ("train", "validation", "test"):
            kept, counts = [], {}
            for line in (data_dir / "amazon_multidomain" / f"{split}.jsonl").open():
                row = json.loads(line)
                if counts.get(row["domain"], 0) < 6:
                    counts[row["domain"]] = counts.get(row["domain"], 0) + 1
                    if poison and row["domain"] == target:
                        row["label"] = 1 - row["label"]
                        row["label_name"] = ("negative", "positive")[row["label"]]
                    kept.append(row)
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
        folders[name] = tmp_path / name
    model, tokenizer = load_model("tiny-bert", 2, seed=0), load_tokenizer("tiny-bert")

    def run(folder):
        split = leave_one_domain_out("amazon", target, data_dir=folder)
        parts = [domain_features(model, tokenizer, getattr(split, p), max_length=32)
                 for p in ("source_train", "target_unlabelled")]
        table = np.concatenate(parts)
        n_s, n_t = len(parts[0]), len(parts[1])
        data = SourceTargetDataset([{"input_ids": [i], "labels": int(y)} for i, y in enumerate(split.source_train["label"])],
                                   [{"input_ids": [n_s + j]} for j in range(n_t)], split.source_domain_ids())
        sampler = SourceTargetBatchSampler(n_s, n_t, 6, seed=0)
        progress = TrainingProgress(total_optimizer_steps(len(sampler), 2))
        dann = _model(table, 0, dropout=0.1)
        fit(dann, data, config=TrainConfig(epochs=2, batch_size=6, learning_rate=1e-2, progress=False,
                                           mixed_precision="no", select_best=False),
            batch_sampler=sampler, collate_fn=SourceTargetCollator(num_sources=3),
            loss_fn=make_dann_loss_fn(progress, num_sources=3), callbacks=[progress])
        oracle = _model(table, 0, dropout=0.1)
        labels = oracle_train("amazon", target, data_dir=folder)["label"]
        fit(oracle, [{"input_ids": [n_s + j], "labels": int(y)} for j, y in enumerate(labels)],
            config=TrainConfig(epochs=2, batch_size=6, learning_rate=1e-2, progress=False, mixed_precision="no"),
            pad_token_id=0)
        return split, dann.state_dict(), oracle.state_dict()

    (clean, dann_a, oracle_a), (poisoned, dann_b, oracle_b) = run(folders["clean"]), run(folders["poisoned"])
    assert clean.target_test["label"] != poisoned.target_test["label"]  # the poison is real
    assert clean.target_unlabelled["text_a"] == poisoned.target_unlabelled["text_a"]
    for key in dann_a:
        assert torch.equal(dann_a[key], dann_b[key]), key
    assert not all(torch.equal(oracle_a[k], oracle_b[k]) for k in oracle_a)
