"""SICK's relatedness score is its own regression task on the same pairs as SICK's entailment label."""

from __future__ import annotations

import json

import pytest

from tlutils.data import get_task, load_task
from tlutils.errors import DataError


def test_sick_relatedness_is_a_regression_task_on_sicks_pairs(data_dir):
    spec = get_task("sick_relatedness")
    assert spec.is_regression and spec.num_labels == 1 and spec.label_range == (1.0, 5.0)
    assert spec.folder == get_task("sick").folder and spec.main_metric == "pearson"
    scores = load_task("sick_relatedness", ("validation",), data_dir=data_dir)["validation"]
    labels = load_task("sick", ("validation",), data_dir=data_dir)["validation"]
    assert scores["id"] == labels["id"] and scores["text_a"] == labels["text_a"]
    raw = [json.loads(line) for line in (data_dir / "sick" / "validation.jsonl").open()]
    assert scores["label"] == [float(r["relatedness_score"]) for r in raw]
    assert labels["label"] == [r["label"] for r in raw]  # the entailment task is unchanged
    assert all(1.0 <= s <= 5.0 for s in scores["label"]) and len(set(scores["label"])) > 20


def _write(root, rows):
    (root / "sick").mkdir(parents=True)
    (root / "sick" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("score, match", [(None, "relatedness_score. is missing"), (5.5, r"outside \[1.0, 5.0\]"), ("high", "outside")])
def test_a_missing_or_bad_relatedness_score_is_refused(tmp_path, score, match):
    row = {"id": "1", "text_a": "A man plays.", "text_b": "A person plays.", "label": 0}
    if score is not None:
        row["relatedness_score"] = score
    _write(tmp_path, [row])
    with pytest.raises(DataError, match=match):
        load_task("sick_relatedness", ("train",), data_dir=tmp_path)
    assert load_task("sick", ("train",), data_dir=tmp_path)["train"]["label"] == [0]  # SICK's label is read as before
