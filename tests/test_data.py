"""Tasks, loading, validation, tokenization and batching (tlutils.data)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tlutils import data as tldata
from tlutils.config import get_profile
from tlutils.data import (TASKS, LengthGroupedBatchSampler, PadCollator, check_max_length,
                          get_task, length_grouped_batches, load_split, load_task, make_loader,
                          tokenize_task)
from tlutils.errors import ConfigError, DataError, DataNotFoundError

from conftest import mrpc_rows, write_jsonl

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mrpc_sample(data_dir):
    """400 real MRPC training pairs (validation split: 100)."""
    return load_task("mrpc", max_train_examples=400, max_eval_examples=100, data_dir=data_dir, seed=0)


@pytest.fixture(scope="module")
def mrpc_tokenized(mrpc_sample, tokenizer):
    """The sample at max_length=48: a mix of truncated and untouched pairs."""
    return tokenize_task(mrpc_sample, tokenizer, "mrpc", max_length=48)


@pytest.fixture(scope="module")
def mrpc_lengths(data_dir, tokenizer):
    """Token counts of 2,000 real MRPC training pairs (untruncated)."""
    rows = load_split(get_task("mrpc"), "train", data_dir)[:2000]
    enc = tokenizer([r["text_a"] for r in rows], [r["text_b"] for r in rows])
    return [len(ids) for ids in enc["input_ids"]]


@pytest.fixture
def data_env(monkeypatch):
    """Point TLUTILS_DATA_DIR at a folder for this test only."""
    def point(path):
        monkeypatch.setenv("TLUTILS_DATA_DIR", str(path))
        return path
    return point


# --------------------------------------------------------------------------- tasks


def test_every_task_is_consistent():
    for name, task in TASKS.items():
        assert task.name == name
        assert task.text_fields in (("text_a",), ("text_a", "text_b"))
        assert task.metrics, name
        if task.is_regression:
            assert task.num_labels == 1 and task.label_range[0] < task.label_range[1]
            assert task.main_metric in ("pearson", "spearman")
        else:
            assert task.num_labels == len(task.label_names) >= 2
            assert task.main_metric == "accuracy"


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ConfigError) as info:
        load_task("cola")
    for name in TASKS:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="mrpc"):
        get_task("MRPC")


# --------------------------------------------------------------------------- loading real data


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_loads_rows_that_follow_the_schema(name, data_dir):
    task = TASKS[name]
    ds = load_task(name, splits=("train",), max_train_examples=32, data_dir=data_dir)["train"]
    assert len(ds) == 32
    assert set(ds.column_names) == {"id", "text_a", "text_b", "label", "label_name", "domain"}
    ids = ds["id"]
    assert len(set(ids)) == 32 and all(isinstance(i, str) and i for i in ids)
    for row in ds:
        assert isinstance(row["text_a"], str) and row["text_a"].strip()
        if task.is_pair:
            assert isinstance(row["text_b"], str) and row["text_b"].strip()
        else:
            assert row["text_b"] == ""
        if task.is_regression:
            low, high = task.label_range
            assert isinstance(row["label"], float) and low <= row["label"] <= high
            assert row["label_name"] == ""
        else:
            assert isinstance(row["label"], int) and 0 <= row["label"] < task.num_labels
            assert row["label_name"] == task.label_names[row["label"]]
        if task.domains:
            assert row["domain"] in task.domains
        else:
            assert row["domain"] == ""


def test_load_task_reads_the_environment_variable(data_dir, data_env):
    data_env(data_dir)
    ds = load_task("rte", max_train_examples=8, max_eval_examples=4)
    assert (len(ds["train"]), len(ds["validation"])) == (8, 4)


def test_whole_split_without_limits(data_dir):
    ds = load_task("mrpc", splits=("validation",), data_dir=data_dir)
    assert len(ds["validation"]) == 408  # the staged README's count
    assert set(ds["validation"]["label"]) == {0, 1}


def test_profile_sets_the_subset_sizes_and_explicit_sizes_win(data_dir):
    smoke = get_profile("smoke")
    ds = load_task("mrpc", profile=smoke, data_dir=data_dir)
    assert (len(ds["train"]), len(ds["validation"])) == (smoke.max_train_examples, smoke.max_eval_examples)
    ds = load_task("mrpc", profile=smoke, max_train_examples=10, data_dir=data_dir)
    assert len(ds["train"]) == 10


@pytest.mark.parametrize("name, domain, count", [("amazon", "books", 1400), ("mnli", "fiction", 2000)])
def test_domain_filter_keeps_only_those_domains(name, domain, count, data_dir):
    ds = load_task(name, splits=("train",), domains=[domain], data_dir=data_dir)["train"]
    assert set(ds["domain"]) == {domain}
    assert len(ds) == count


def test_domain_filter_with_two_domains_and_a_subset(data_dir):
    ds = load_task("amazon", domains=["dvd", "kitchen"], max_train_examples=200,
                   max_eval_examples=50, data_dir=data_dir)
    assert set(ds["train"]["domain"]) == {"dvd", "kitchen"}
    assert set(ds["validation"]["domain"]) <= {"dvd", "kitchen"}
    assert (len(ds["train"]), len(ds["validation"])) == (200, 50)


def test_unknown_domain_lists_the_domains(data_dir):
    with pytest.raises(ConfigError) as info:
        load_task("amazon", domains=["books", "toys"], data_dir=data_dir)
    message = str(info.value)
    assert "toys" in message
    for domain in TASKS["amazon"].domains:
        assert domain in message


def test_domain_on_a_task_without_domains(data_dir):
    with pytest.raises(ConfigError, match="no domains"):
        load_task("mrpc", domains=["news"], data_dir=data_dir)


def test_subsampling_is_deterministic_per_seed(data_dir):
    def ids(seed):
        return load_task("mrpc", splits=("train",), max_train_examples=20, seed=seed,
                         data_dir=data_dir)["train"]["id"]
    first = ids(1)
    assert ids(1) == first
    assert ids(2) != first
    everything = set(load_task("mrpc", splits=("train",), data_dir=data_dir)["train"]["id"])
    assert set(first) <= everything and len(set(first)) == 20


def test_subsampling_is_not_just_the_head_of_the_file(data_dir):
    head = [r["id"] for r in load_split(get_task("mrpc"), "train", data_dir)[:20]]
    assert load_task("mrpc", splits=("train",), max_train_examples=20, data_dir=data_dir)["train"]["id"] != head


def test_unknown_split_is_refused(data_dir):
    with pytest.raises(ConfigError, match="train, validation, test"):
        load_task("mrpc", splits=("dev",), data_dir=data_dir)


# --------------------------------------------------------------------------- bad input


def test_data_dir_without_the_task_names_the_variable(tmp_path, data_env, monkeypatch):
    data_env(tmp_path)  # exists, but holds no mrpc/: the hub is tried, and it is offline

    def offline(task, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(tldata, "_load_hub_split", offline)
    with pytest.raises(DataNotFoundError) as info:
        load_task("mrpc")
    message = str(info.value)
    assert "TLUTILS_DATA_DIR" in message and "mrpc/train.jsonl" in message
    assert f"{tmp_path / 'mrpc'} does not exist" in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DataError)
    with pytest.raises(DataNotFoundError, match="folder .*sick does not exist; point TLUTILS_DATA_DIR"):
        load_task("sick")  # no hub source: the folder is the only way


def test_data_dir_without_the_task_falls_back_to_the_hub(tmp_path, data_env, monkeypatch):
    """A data folder may hold only the tasks the hub lacks (tlutils.fetch on Colab): the others
    still load from the hub, as missing_data already assumes."""
    data_env(tmp_path)
    row = {"id": "7", "text_a": "a", "text_b": "b", "label": 1, "label_name": "equivalent", "domain": ""}
    monkeypatch.setattr(tldata, "_load_hub_split", lambda task, split: [row])
    assert tldata.load_split(get_task("mrpc"), "train") == [row]


def test_missing_split_file_lists_the_available_ones(tiny_task_dir):
    (tiny_task_dir / "mrpc" / "validation.jsonl").unlink()
    with pytest.raises(DataNotFoundError) as info:
        load_task("mrpc", data_dir=tiny_task_dir)
    message = str(info.value)
    assert "'validation'" in message and "validation.jsonl" in message
    assert "available: train" in message


def test_the_tiny_folder_is_valid(tiny_task_dir):
    ds = load_task("mrpc", data_dir=tiny_task_dir)
    assert (len(ds["train"]), len(ds["validation"])) == (12, 12)
    assert set(ds["train"]["label"]) == {0, 1}


def _rewrite(path: Path, line_number: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line_number - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_row_without_text_b_names_file_and_line(tiny_task_dir):
    path = tiny_task_dir / "mrpc" / "train.jsonl"
    row = mrpc_rows(12, "train")[4]
    del row["text_b"]
    _rewrite(path, 5, json.dumps(row))
    with pytest.raises(DataError) as info:
        load_task("mrpc", data_dir=tiny_task_dir)
    message = str(info.value)
    assert str(path) in message and "line 5" in message and "'text_b'" in message


def test_label_outside_the_label_set_names_the_allowed_labels(tiny_task_dir):
    path = tiny_task_dir / "mrpc" / "validation.jsonl"
    row = {**mrpc_rows(12, "validation")[2], "label": 7}
    _rewrite(path, 3, json.dumps(row))
    with pytest.raises(DataError) as info:
        load_task("mrpc", data_dir=tiny_task_dir)
    message = str(info.value)
    assert "line 3" in message and "label 7" in message
    assert "0 (not_equivalent)" in message and "1 (equivalent)" in message


@pytest.mark.parametrize("label", ["1", 1.0, True, None, -1])
def test_labels_must_be_class_ids(tiny_task_dir, label):
    path = tiny_task_dir / "mrpc" / "train.jsonl"
    _rewrite(path, 1, json.dumps({**mrpc_rows(1, "train")[0], "label": label}))
    with pytest.raises(DataError, match="line 1"):
        load_task("mrpc", splits=("train",), data_dir=tiny_task_dir)


@pytest.mark.parametrize("label", [5.5, -0.1, "3.0"])
def test_regression_labels_must_be_in_range(tmp_path, label):
    row = {"id": "0", "text_a": "A man plays.", "text_b": "A man is playing.", "label": label}
    write_jsonl(tmp_path / "stsb" / "train.jsonl", [row])
    with pytest.raises(DataError, match=r"outside \[0.0, 5.0\]"):
        load_task("stsb", splits=("train",), data_dir=tmp_path)


def test_invalid_json_names_file_and_line(tiny_task_dir):
    path = tiny_task_dir / "mrpc" / "train.jsonl"
    _rewrite(path, 9, '{"id": "x", "text_a": "unterminated')
    with pytest.raises(DataError) as info:
        load_task("mrpc", data_dir=tiny_task_dir)
    message = str(info.value)
    assert str(path) in message and "line 9" in message and "not valid JSON" in message


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tiny_task_dir):
    path = tiny_task_dir / "mrpc" / "train.jsonl"
    lines = path.read_text().splitlines()
    bad = json.dumps({**json.loads(lines[2]), "label": 9})
    path.write_text("\n".join(lines[:2] + ["", bad]) + "\n")
    with pytest.raises(DataError, match="line 4"):
        load_task("mrpc", splits=("train",), data_dir=tiny_task_dir)


@pytest.mark.parametrize("line", [
    "[1, 2]",
    "5",
    "null",
])
def test_a_line_that_is_not_an_object_is_a_data_error(tiny_task_dir, line):
    _rewrite(tiny_task_dir / "mrpc" / "train.jsonl", 2, line)
    with pytest.raises(DataError, match="line 2"):
        load_task("mrpc", splits=("train",), data_dir=tiny_task_dir)


def test_empty_text_is_a_data_error(tiny_task_dir):
    _rewrite(tiny_task_dir / "mrpc" / "train.jsonl", 6,
             json.dumps({**mrpc_rows(6, "train")[5], "text_a": ""}))
    with pytest.raises(DataError, match="line 6"):
        load_task("mrpc", splits=("train",), data_dir=tiny_task_dir)


def test_text_must_be_a_string(tiny_task_dir):
    _rewrite(tiny_task_dir / "mrpc" / "train.jsonl", 1,
             json.dumps({**mrpc_rows(1, "train")[0], "text_b": 42}))
    with pytest.raises(DataError, match="'text_b' must be a string"):
        load_task("mrpc", splits=("train",), data_dir=tiny_task_dir)


def test_empty_split_after_filtering_says_what_to_change(tmp_path):
    rows = [{"id": f"b{i}", "text_a": "A fine book.", "label": i % 2,
             "label_name": ("negative", "positive")[i % 2], "domain": "books"} for i in range(6)]
    write_jsonl(tmp_path / "amazon_multidomain" / "train.jsonl", rows)
    assert len(load_task("amazon", splits=("train",), domains=["books"], data_dir=tmp_path)["train"]) == 6
    with pytest.raises(DataError) as info:
        load_task("amazon", splits=("train",), domains=["dvd"], data_dir=tmp_path)
    message = str(info.value)
    assert "empty" in message and "'dvd'" in message and "choose other domains" in message


def test_an_empty_file_is_a_data_error(tiny_task_dir):
    (tiny_task_dir / "mrpc" / "train.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_task("mrpc", splits=("train",), data_dir=tiny_task_dir)


# --------------------------------------------------------------------------- the hub path


def test_no_data_dir_and_unreachable_hub_names_the_variable(monkeypatch):
    monkeypatch.delenv("TLUTILS_DATA_DIR", raising=False)

    def offline(task, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(tldata, "_load_hub_split", offline)
    with pytest.raises(DataNotFoundError) as info:
        load_task("mrpc")
    message = str(info.value)
    assert "TLUTILS_DATA_DIR" in message and "mrpc/train.jsonl" in message
    assert "ConnectionError" in message
    assert isinstance(info.value.__cause__, ConnectionError)


def test_no_data_dir_with_the_real_offline_hub(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    monkeypatch.delenv("TLUTILS_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(DataNotFoundError, match="TLUTILS_DATA_DIR"):
        load_task("rte", splits=("validation",))


def test_task_without_hub_source_needs_the_data_dir(monkeypatch):
    monkeypatch.delenv("TLUTILS_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="TLUTILS_DATA_DIR") as info:
        load_task("sick")
    assert "sick/train.jsonl" in str(info.value)


def test_split_missing_on_the_hub(monkeypatch):
    monkeypatch.delenv("TLUTILS_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="available: train, validation"):
        load_task("rte", splits=("test",))


def test_hub_rows_are_renamed_and_unlabelled_rows_dropped(monkeypatch):
    import datasets

    hub_rows = [
        {"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0, "genre": "fiction", "pairID": "p0"},
        {"premise": "A cat sits.", "hypothesis": "A cat runs.", "label": -1, "genre": "fiction", "pairID": "p1"},
        {"premise": "Tax rules.", "hypothesis": "Rules exist.", "label": 1, "genre": "government", "pairID": "p2"},
    ]
    calls = []

    def fake_load_dataset(path, config=None, split=None, **kwargs):
        calls.append((path, config, split))
        return hub_rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = tldata._load_hub_split(get_task("mnli"), "validation")
    assert calls == [("nyu-mll/multi_nli", None, "validation_matched")]
    assert [r["id"] for r in rows] == ["p0", "p2"]
    assert rows[0] == {"id": "p0", "text_a": "A dog runs.", "text_b": "An animal moves.", "label": 0,
                       "label_name": "entailment", "domain": "fiction"}
    assert rows[1]["domain"] == "government" and rows[1]["label_name"] == "neutral"


def test_hub_rows_without_ids_get_split_positions(monkeypatch):
    import datasets

    hub_rows = [{"premise": "p", "hypothesis": "h", "label": 2}] * 2
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: hub_rows)
    rows = tldata._load_hub_split(get_task("snli"), "train")
    assert [r["id"] for r in rows] == ["train-0", "train-1"]


# --------------------------------------------------------------------------- tokenization


def test_pairs_are_cls_a_sep_b_sep_with_segment_ids(mrpc_sample, tokenizer):
    tokenized, _ = tokenize_task(mrpc_sample, tokenizer, "mrpc", max_length=256)
    for row in tokenized["validation"].select(range(20)):
        tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
        a = tokenizer.tokenize(row["text_a"])
        b = tokenizer.tokenize(row["text_b"])
        assert tokens == ["[CLS]", *a, "[SEP]", *b, "[SEP]"]
        assert row["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        assert row["attention_mask"] == [1] * len(tokens)
        assert row["labels"] == row["label"]


def test_single_texts_have_one_segment(data_dir, tokenizer):
    ds = load_task("amazon", splits=("train",), max_train_examples=8, data_dir=data_dir)
    tokenized, _ = tokenize_task(ds, tokenizer, get_task("amazon"), max_length=64)
    for row in tokenized["train"]:
        tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 1
        assert set(row["token_type_ids"]) == {0}


def test_truncation_report_matches_a_brute_force_count(mrpc_sample, mrpc_tokenized, tokenizer):
    _, report = mrpc_tokenized
    assert report.max_length == 48
    for split, ds in mrpc_sample.items():
        full = [len(tokenizer(a, b)["input_ids"]) for a, b in zip(ds["text_a"], ds["text_b"])]
        cut = sum(n > 48 for n in full)
        assert report.counts[split] == (len(ds), cut, max(full))
        assert report.fraction(split) == pytest.approx(cut / len(ds))
    assert 0 < report.counts["train"][1] < len(mrpc_sample["train"])  # the sample is a real mix
    assert f"max_length=48" in str(report) and "train: 400 examples" in str(report)


def test_length_column_is_the_truncated_length(mrpc_sample, mrpc_tokenized, tokenizer):
    tokenized, _ = mrpc_tokenized
    for split, ds in tokenized.items():
        lengths = list(ds["length"])
        assert lengths == [len(ids) for ids in ds["input_ids"]]
        assert max(lengths) <= 48
        full = [len(tokenizer(a, b)["input_ids"]) for a, b in zip(ds["text_a"], ds["text_b"])]
        assert lengths == [min(n, 48) for n in full]  # truncated to exactly max_length
        assert "full_length" not in ds.column_names


def test_tokenization_keeps_the_texts_and_adds_model_inputs(mrpc_tokenized):
    tokenized, _ = mrpc_tokenized
    assert {"text_a", "text_b", "input_ids", "attention_mask", "token_type_ids", "labels",
            "length"} <= set(tokenized["train"].column_names)


def _counting(tokenizer, monkeypatch) -> list[int]:
    """Count the tokenizer's calls (tokenize_task calls it twice per batch when it tokenizes)."""
    calls: list[int] = []
    original = type(tokenizer).__call__

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counted)
    return calls


def test_a_second_tokenization_of_the_same_rows_is_read_back_from_the_cache(mrpc_sample, tokenizer, tmp_path, data_dir,
                                                                            monkeypatch):
    calls = _counting(tokenizer, monkeypatch)
    first, report = tokenize_task(mrpc_sample, tokenizer, "mrpc", max_length=48, cache_dir=tmp_path)
    assert calls and len(list(tmp_path.glob("tokens-mrpc-*"))) == 1
    del calls[:]
    again = load_task("mrpc", max_train_examples=400, max_eval_examples=100, data_dir=data_dir, seed=0)
    second, report2 = tokenize_task(again, tokenizer, "mrpc", max_length=48, cache_dir=tmp_path)
    assert calls == []  # not tokenized again: read from disk
    assert report2.counts == report.counts
    for split in first:
        assert second[split].column_names == first[split].column_names
        assert second[split].to_dict() == first[split].to_dict()
        assert second[split].cache_files  # memory-mapped from the cache, not a copy in memory


def test_the_cache_key_covers_rows_length_and_tokenizer(mrpc_sample, tokenizer, tmp_path, data_dir):
    from pretraining_helpers import tiny_tokenizer

    tokenize_task(mrpc_sample, tokenizer, "mrpc", max_length=48, cache_dir=tmp_path)
    tokenize_task(mrpc_sample, tokenizer, "mrpc", max_length=40, cache_dir=tmp_path)
    other_rows = load_task("mrpc", max_train_examples=400, max_eval_examples=100, data_dir=data_dir, seed=1)
    tokenize_task(other_rows, tokenizer, "mrpc", max_length=48, cache_dir=tmp_path)
    small = tiny_tokenizer()
    assert tldata.tokenizer_fingerprint(small) != tldata.tokenizer_fingerprint(tokenizer)
    tokenized, _ = tokenize_task(mrpc_sample, small, "mrpc", max_length=48, cache_dir=tmp_path)
    assert max(max(ids) for ids in tokenized["train"]["input_ids"]) < len(small)
    assert len(list(tmp_path.glob("tokens-mrpc-*"))) == 4


def test_two_loads_of_one_tokenizer_share_a_fingerprint(tokenizer):
    from tlutils.models import load_tokenizer

    assert tldata.tokenizer_fingerprint(load_tokenizer("tiny-bert")) == tldata.tokenizer_fingerprint(tokenizer)


def test_cache_false_writes_nothing_and_other_ranks_only_read(mrpc_sample, tokenizer, tmp_path, monkeypatch):
    tokenize_task(mrpc_sample, tokenizer, "mrpc", max_length=48, cache=False, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())
    monkeypatch.setenv("RANK", "1")  # a second process of accelerate launch
    tokenized, _ = tokenize_task(mrpc_sample, tokenizer, "mrpc", max_length=48, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir()) and len(tokenized["train"]) == 400
    monkeypatch.setenv("RANK", "0")
    tokenize_task(mrpc_sample, tokenizer, "mrpc", max_length=48, cache_dir=tmp_path)
    monkeypatch.setenv("RANK", "1")
    calls = _counting(tokenizer, monkeypatch)
    tokenize_task(mrpc_sample, tokenizer, "mrpc", max_length=48, cache_dir=tmp_path)
    assert calls == [] and [p.name.endswith(".tmp") for p in tmp_path.iterdir()] == [False]


@pytest.mark.parametrize("max_length", [513, 1024])
def test_max_length_beyond_the_tokenizer_is_refused(mrpc_sample, tokenizer, max_length):
    assert tokenizer.model_max_length == 512
    with pytest.raises(ConfigError, match="max_length <= 512"):
        tokenize_task(mrpc_sample, tokenizer, "mrpc", max_length=max_length)


def test_max_length_beyond_the_model_positions_is_refused(tokenizer):
    check_max_length(tokenizer, 128, model_positions=128)
    with pytest.raises(ConfigError, match="max_length <= 128"):
        check_max_length(tokenizer, 129, model_positions=128)


def test_max_length_too_short_is_refused(tokenizer):
    with pytest.raises(ConfigError, match=">= 8"):
        check_max_length(tokenizer, 4)


# --------------------------------------------------------------------------- batching


def _padding(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("n, batch_size", [(1037, 16), (5, 8), (100, 1)])
def test_length_grouped_batches_cover_every_index_once(n, batch_size):
    rng = random.Random(n)
    lengths = [rng.randint(5, 120) for _ in range(n)]
    batches = length_grouped_batches(lengths, batch_size, seed=0, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert len(batches) == -(-n // batch_size) == len(LengthGroupedBatchSampler(lengths, batch_size))


def test_length_grouped_batches_are_deterministic_and_change_per_epoch_and_seed(mrpc_lengths):
    def run(seed, epoch):
        return length_grouped_batches(mrpc_lengths, 32, seed=seed, epoch=epoch)
    first = run(0, 0)
    assert run(0, 0) == first
    assert run(0, 1) != first
    assert run(1, 0) != first


def test_length_grouping_pads_less_than_random_batches(mrpc_lengths):
    grouped = length_grouped_batches(mrpc_lengths, 32, seed=0, epoch=0)
    shuffled = LengthGroupedBatchSampler(mrpc_lengths, 32, shuffle=True, group_by_length=False).batches()
    assert sorted(i for b in shuffled for i in b) == list(range(len(mrpc_lengths)))
    assert _padding(grouped, mrpc_lengths) < 0.5 * _padding(shuffled, mrpc_lengths)


@pytest.mark.parametrize("replicas", [1, 2])
def test_shuffled_batches_start_with_the_longest_full_batch_and_end_with_the_short_one(mrpc_lengths, replicas):
    # The largest shape first: memory is allocated for it once and reused (lower peak), and an
    # out-of-memory error shows on the first step; the rest of the order stays shuffled.
    for epoch in range(3):
        for rank in range(replicas):
            batches = length_grouped_batches(mrpc_lengths, 32, seed=0, epoch=epoch, num_replicas=replicas, rank=rank)
            longest = [max(mrpc_lengths[i] for i in b) for b in batches]
            full = [t for t, b in zip(longest, batches) if len(b) == 32]
            assert len(batches[0]) == 32 and longest[0] == max(full)
            assert all(len(b) == 32 for b in batches[:-1])
    later = [max(mrpc_lengths[i] for i in b) for b in length_grouped_batches(mrpc_lengths, 32, seed=0, epoch=0)[1:]]
    assert later != sorted(later, reverse=True) and later != sorted(later)


def test_unshuffled_batches_are_sorted_longest_first(mrpc_lengths):
    batches = length_grouped_batches(mrpc_lengths, 32, seed=0, epoch=0, shuffle=False)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(mrpc_lengths)))
    ordered = [mrpc_lengths[i] for i in flat]
    assert ordered == sorted(mrpc_lengths, reverse=True)
    assert length_grouped_batches(mrpc_lengths, 32, seed=5, epoch=3, shuffle=False) == batches


def test_batch_size_must_be_positive():
    with pytest.raises(ConfigError, match="batch_size=0"):
        length_grouped_batches([3, 4], 0, seed=0, epoch=0)


def test_sampler_follows_set_epoch(mrpc_lengths):
    sampler = LengthGroupedBatchSampler(mrpc_lengths, 16, shuffle=True, seed=3)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(sampler) == length_grouped_batches(mrpc_lengths, 16, seed=3, epoch=1)


def test_pad_collator_pads_with_the_pad_id_and_keeps_idx():
    examples = [
        {"input_ids": [101, 5, 6, 102], "attention_mask": [1, 1, 1, 1], "token_type_ids": [0, 0, 0, 1],
         "labels": 1, "idx": 7},
        {"input_ids": [101, 9, 102], "attention_mask": [1, 1, 1], "token_type_ids": [0, 0, 1],
         "labels": 0, "idx": 2},
    ]
    batch = PadCollator(pad_token_id=99)(examples)
    assert batch["input_ids"].tolist() == [[101, 5, 6, 102], [101, 9, 102, 99]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 1], [0, 0, 1, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    assert batch["idx"].tolist() == [7, 2]


def test_pad_collator_rounds_up_and_keeps_float_labels():
    examples = [{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": 3.5, "idx": 0},
                {"input_ids": [1], "attention_mask": [1], "labels": 0.0, "idx": 1}]
    batch = PadCollator(pad_token_id=0, pad_to_multiple_of=8)(examples)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum(1).tolist() == [3, 1]
    assert "token_type_ids" not in batch
    assert batch["labels"].dtype == torch.float and batch["labels"].tolist() == [3.5, 0.0]


def test_make_loader_yields_padded_batches_covering_the_split(mrpc_tokenized, tokenizer):
    ds = mrpc_tokenized[0]["train"]
    loader = make_loader(ds, 32, shuffle=True, seed=0, pad_token_id=tokenizer.pad_token_id)
    lengths = list(ds["length"])
    labels = list(ds["labels"])
    seen = []
    for batch in loader:
        idx = batch["idx"].tolist()
        seen += idx
        mask = batch["attention_mask"]
        assert mask.sum(1).tolist() == [lengths[i] for i in idx]
        assert batch["input_ids"].shape[1] == max(lengths[i] for i in idx)
        assert (batch["input_ids"][mask == 0] == tokenizer.pad_token_id).all()
        assert batch["labels"].tolist() == [labels[i] for i in idx]
    assert sorted(seen) == list(range(len(ds)))


def test_make_loader_order_is_seeded_per_epoch(mrpc_tokenized):
    ds = mrpc_tokenized[0]["validation"]

    def order(loader):
        return [i for batch in loader for i in batch["idx"].tolist()]

    loader = make_loader(ds, 16, shuffle=True, seed=1)
    first = order(loader)
    assert order(make_loader(ds, 16, shuffle=True, seed=1)) == first
    loader.batch_sampler.set_epoch(1)
    assert order(loader) != first
    evaluation = make_loader(ds, 16, shuffle=False)
    assert order(evaluation) == order(evaluation)
    lengths = list(ds["length"])
    assert [lengths[i] for i in order(evaluation)] == sorted(lengths, reverse=True)


def test_make_loader_refuses_an_empty_split(mrpc_tokenized):
    empty = mrpc_tokenized[0]["train"].select([])
    with pytest.raises(DataError, match="empty split"):
        make_loader(empty, 8, shuffle=True)


def test_make_loader_refuses_untokenized_data(mrpc_sample):
    with pytest.raises(DataError, match="tokenize_task"):
        make_loader(mrpc_sample["train"], 8, shuffle=True)


def test_loader_reads_arrow_batches_without_copying_columns(mrpc_tokenized):
    """A split stays in Arrow (a full-size split is never copied into Python lists per
    process); each batch holds exactly the rows its indices name."""
    split = mrpc_tokenized[0]["train"]
    loader = make_loader(split, 8, shuffle=True)
    assert loader.dataset.arrow and not hasattr(loader.dataset, "columns")
    batch = next(iter(loader))
    for row, i in enumerate(batch["idx"].tolist()):
        ids = split[i]["input_ids"]
        assert batch["input_ids"][row, :len(ids)].tolist() == ids and batch["labels"][row] == split[i]["labels"]


@pytest.mark.parametrize("n, batch_size", [(1200, 32), (48, 8), (37, 5), (7, 3)])
def test_a_short_batch_comes_last_and_every_example_once(n, batch_size):
    lengths = [(i * 37) % 61 + 1 for i in range(n)]
    for epoch in range(3):
        batches = length_grouped_batches(lengths, batch_size, seed=1, epoch=epoch)
        assert all(len(b) == batch_size for b in batches[:-1])
        assert sorted(i for b in batches for i in b) == list(range(n))


@pytest.mark.parametrize("n, replicas", [(1200, 2), (1201, 2), (50, 3), (9, 4)])
def test_rank_shards_are_disjoint_equal_and_cover_the_epoch(n, replicas):
    """Data-parallel sharding: every rank the same number of batches (a rank with fewer would
    hang the others at the next all-reduce), disjoint examples, the whole split each epoch (a
    split that does not divide evenly repeats at most replicas - 1 examples), new orders per epoch."""
    lengths = [(i * 13) % 40 + 1 for i in range(n)]
    orders = []
    for epoch in range(2):
        samplers = [LengthGroupedBatchSampler(lengths, 32, seed=0, num_replicas=replicas, rank=r)
                    for r in range(replicas)]
        for s in samplers:
            s.set_epoch(epoch)
        shards = [[i for b in s for i in b] for s in samplers]
        assert len({len(list(s)) for s in samplers}) == 1
        assert all(len(list(s)) == len(s) for s in samplers)
        seen = [i for shard in shards for i in shard]
        assert set(seen) == set(range(n)) and len(seen) - n < replicas
        if n % replicas == 0:
            assert len(seen) == n  # disjoint
        orders.append(shards[0])
    assert orders[0] != orders[1]


def test_evaluation_shards_split_without_overlap():
    samplers = [LengthGroupedBatchSampler(list(range(10)), 3, shuffle=False, num_replicas=2, rank=r) for r in (0, 1)]
    a, b = ([i for batch in s for i in batch] for s in samplers)
    assert sorted(a + b) == list(range(10)) and not set(a) & set(b)
    assert len(samplers[0]) == len(list(samplers[0]))


def test_unlabelled_rows_load_without_labels_and_split_names_are_checked(tmp_path):
    folder = tmp_path / "mrpc"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"id": "1", "text_a": "a b", "text_b": "c d"}\n')
    data = load_task("mrpc", ("train",), data_dir=tmp_path, unlabelled=("train",))
    assert data["train"].column_names == ["id", "text_a", "text_b", "domain"]
    with pytest.raises(DataError, match="field 'label' is missing"):
        load_task("mrpc", ("train",), data_dir=tmp_path)
    with pytest.raises(ConfigError, match="list it in splits too"):
        load_task("mrpc", ("train",), data_dir=tmp_path, unlabelled=("validation",))


def test_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    folder = tmp_path / "mrpc"
    folder.mkdir()
    good = b'{"id": "1", "text_a": "a", "text_b": "b", "label": 0}\n'
    (folder / "train.jsonl").write_bytes(good + b'{"id": "2", "text_a": "caf\xe9", "text_b": "b", "label": 0}\n')
    with pytest.raises(DataError, match=r"train.jsonl, line 2: not UTF-8 .*re-save the file as UTF-8"):
        load_task("mrpc", ("train",), data_dir=tmp_path)


def test_an_empty_split_without_domains_points_at_the_file(tmp_path):
    folder = tmp_path / "mrpc"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"is empty; check mrpc/train.jsonl"):
        load_task("mrpc", ("train",), data_dir=tmp_path)
