"""The leave-one-domain-out protocol: who sees which rows, paired batches, per-domain caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlutils.errors import ConfigError, DataError
from tlutils.methods.domain_data import (
    SourceTargetBatchSampler,
    SourceTargetCollator,
    SourceTargetDataset,
    check_domains,
    domain_features,
    domain_rows,
    domain_runs,
    feature_items,
    leave_one_domain_out,
    oracle_train,
    per_domain_sizes,
)

SMOKE = per_domain_sizes("smoke")


def test_sizes_per_profile():
    assert per_domain_sizes("smoke") == {"train": 32, "validation": 32, "test": 32}
    assert per_domain_sizes("small") == {"train": 400, "validation": 200, "test": 400}
    assert per_domain_sizes("record") == {"train": None, "validation": None, "test": None}


def test_split_keeps_the_target_out_and_its_training_labels_away(data_dir):
    split = leave_one_domain_out("amazon", "kitchen", sizes=SMOKE)
    assert split.sources == ("books", "dvd", "electronics") and split.num_sources == 3
    assert set(split.source_train["domain"]) == set(split.sources) == set(split.source_validation["domain"])
    assert set(split.target_unlabelled["domain"]) == set(split.target_test["domain"]) == {"kitchen"}
    assert "label" not in split.target_unlabelled.column_names
    assert "label_name" not in split.target_unlabelled.column_names
    assert "label" in split.target_test.column_names
    assert len(split.source_train) == 3 * 32 and len(split.target_unlabelled) == 32
    ids = split.source_domain_ids()
    assert [split.sources[i] for i in ids] == split.source_train["domain"]
    # the oracle gets the same target rows, with labels
    oracle = oracle_train("amazon", "kitchen", sizes=SMOKE)
    assert oracle["id"] == split.target_unlabelled["id"] and "label" in oracle.column_names


def test_leave_one_out_splits_are_disjoint(data_dir):
    split = leave_one_domain_out("mnli", "travel", sizes=SMOKE)
    source_ids = set(split.source_train["id"]) | set(split.source_validation["id"])
    target_ids = set(split.target_unlabelled["id"]) | set(split.target_test["id"])
    assert not source_ids & target_ids
    assert not set(split.target_unlabelled["id"]) & set(split.target_test["id"])
    assert "text_b" in split.source_train.column_names


def test_per_domain_subsets_do_not_depend_on_the_other_domains(data_dir):
    a = leave_one_domain_out("amazon", "kitchen", sizes=SMOKE)
    b = leave_one_domain_out("amazon", "books", ["dvd"], sizes=SMOKE)
    dvd_a = [i for i, d in zip(a.source_train["id"], a.source_train["domain"]) if d == "dvd"]
    assert dvd_a == b.source_train["id"]
    assert domain_rows("amazon", "dvd", "train", max_examples=32)["id"] == dvd_a
    assert domain_rows("amazon", "dvd", "train", max_examples=32, seed=1)["id"] != dvd_a


@pytest.mark.parametrize("target, sources, fix", [
    ("kitchen", ["kitchen", "dvd"], "leave it out of sources"),
    ("garden", None, "choose from books, dvd, electronics, kitchen"),
    ("kitchen", ["dvd", "gardening"], "choose from"),
    ("kitchen", [], "name at least one source"),
    ("kitchen", ["dvd", "dvd"], "each source once"),
])
def test_bad_domains_get_one_line_errors(target, sources, fix):
    with pytest.raises(ConfigError, match=fix) as info:
        check_domains("amazon", target, sources)
    assert "\n" not in str(info.value)


def test_a_task_without_domains_and_an_empty_domain(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="has no domains"):
        check_domains("mrpc", "news")
    folder = tmp_path / "amazon_multidomain"
    folder.mkdir()
    rows = [line for line in (data_dir / "amazon_multidomain" / "train.jsonl").read_text().splitlines()
            if '"domain": "books"' in line][:5]
    (folder / "train.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="domain 'dvd' has no 'train' rows"):
        domain_rows("amazon", "dvd", "train", data_dir=tmp_path)


def test_domain_runs():
    assert domain_runs(["a", "a", "b", "a"]) == [("a", 0, 2), ("b", 2, 3), ("a", 3, 4)]
    assert domain_runs([]) == []


def _dataset(n_source=10, n_target=7, sources=2):
    source = [{"input_ids": [i], "labels": i % 2} for i in range(n_source)]
    return SourceTargetDataset(source, feature_items(n_target), [i % sources for i in range(n_source)])


def test_dataset_tags_domains_and_refuses_labelled_target_items():
    data = _dataset()
    assert len(data) == 17 and data.num_sources == 2
    assert data[3]["domain_id"] == 1 and data[10]["domain_id"] == 2 and "labels" not in data[10]
    with pytest.raises(DataError, match="target's labels may only evaluate"):
        SourceTargetDataset([{"input_ids": [0], "labels": 1}], [{"input_ids": [0], "labels": 0}], [0])
    with pytest.raises(DataError, match="need 'labels'"):
        SourceTargetDataset(feature_items(2), feature_items(2), [0, 0])
    with pytest.raises(DataError, match="entries for 2 source items"):
        SourceTargetDataset([{"input_ids": [0], "labels": 1}] * 2, feature_items(2), [0])


@pytest.mark.parametrize("replicas", [1, 2])
def test_sampler_pairs_every_source_batch_with_target_rows(replicas):
    n_source, n_target = 50, 13
    epochs = []
    for epoch in range(2):
        seen = []
        for rank in range(replicas):
            sampler = SourceTargetBatchSampler(n_source, n_target, 8, target_batch_size=6, seed=3,
                                               num_replicas=replicas, rank=rank)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler)
            for b in batches[:-1]:
                assert sum(i < n_source for i in b) == 8
            assert all(sum(i >= n_source for i in b) == 6 and all(i < n_source + n_target for i in b)
                       for b in batches)
            seen += [i for b in batches for i in b if i < n_source]
        assert set(seen) == set(range(n_source))  # one pass over the sources (padded shards)
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # a new order every epoch
    again = SourceTargetBatchSampler(n_source, n_target, 8, target_batch_size=6, seed=3)
    again.set_epoch(1)
    first = SourceTargetBatchSampler(n_source, n_target, 8, target_batch_size=6, seed=3)
    first.set_epoch(1)
    assert list(again) == list(first)  # exact resume


def test_collator_marks_target_rows_with_the_ignore_index():
    data = _dataset()
    batch = SourceTargetCollator(num_sources=2)([data[i] for i in (0, 1, 10, 11)])
    assert batch["labels"].tolist() == [0, 1, -100, -100]
    assert batch["is_target"].tolist() == [False, False, True, True]
    assert batch["domain_id"].tolist() == [0, 1, 2, 2]
    assert batch["input_ids"].shape == (4, 1) and batch["attention_mask"].tolist() == [[1]] * 4
    forged = dict(data[10], labels=1)
    with pytest.raises(DataError, match="target row carries labels"):
        SourceTargetCollator(num_sources=2)([data[0], forged])


def test_paired_batches_train_through_fit_and_target_labels_never_matter():
    """A loss that sees only what the collator gives: training is identical whatever the target's
    (hidden) labels are, because they never enter a batch."""
    from tlutils.methods.multitask import CachedFeatureEncoder
    from tlutils.train import TrainConfig, fit

    rng = np.random.default_rng(0)
    table = rng.normal(size=(30, 4)).astype(np.float32)
    source = [{"input_ids": [i], "labels": int(table[i, 0] > 0)} for i in range(20)]
    target = [{"input_ids": [20 + j]} for j in range(10)]
    data = SourceTargetDataset(source, target, [i % 2 for i in range(20)])

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.encoder = CachedFeatureEncoder(table, hidden=8, dropout=0.0)
            self.out = torch.nn.Linear(8, 2)

        def forward(self, input_ids, **_):
            return self.out(self.encoder(input_ids).last_hidden_state[:, 0])

    def loss_fn(model, batch):
        logits = model(batch["input_ids"])
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"], ignore_index=-100)
        return loss, {"target_rows": float(batch["is_target"].sum())}

    def run():
        model = Head()
        config = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-2, progress=False, mixed_precision="no")
        history = fit(model, data, config=config, loss_fn=loss_fn, pad_token_id=0,
                      batch_sampler=SourceTargetBatchSampler(20, 10, 4, seed=0),
                      collate_fn=SourceTargetCollator(num_sources=2))
        return model.out.weight.detach().clone(), history

    w1, history = run()
    assert history.epochs[0]["target_rows"] == 4.0
    w2, _ = run()
    assert torch.equal(w1, w2)


def test_domain_features_are_cached_per_domain(tmp_path, monkeypatch, data_dir):
    from tlutils.models import load_model, load_tokenizer

    monkeypatch.setenv("TLUTILS_OUTPUT_DIR", str(tmp_path))
    model, tokenizer = load_model("tiny-bert", 2), load_tokenizer("tiny-bert")
    sizes = {"train": 4, "validation": 4, "test": 4}
    split = leave_one_domain_out("amazon", "kitchen", ["books", "dvd"], sizes=sizes)
    x = domain_features(model, tokenizer, split.source_train, max_length=32)
    assert x.shape == (8, model.config.hidden_size) and x.dtype == np.float32
    files = sorted((tmp_path / "feature_cache").glob("*.npz"))
    assert len(files) == 2  # one per domain
    other = leave_one_domain_out("amazon", "books", ["dvd"], sizes=sizes)
    y = domain_features(model, tokenizer, other.source_train, max_length=32)
    np.testing.assert_array_equal(y, x[4:])
    assert len(sorted((tmp_path / "feature_cache").glob("*.npz"))) == 2  # dvd came from the cache
    z = domain_features(model, tokenizer, split.target_unlabelled, max_length=32)  # unlabelled text works
    assert z.shape == (4, model.config.hidden_size)
