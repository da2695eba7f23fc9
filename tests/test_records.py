"""The committed small-profile records: what the published book measured, and its budget.

``make book`` (small profile) copies every chapter's results file to
``benchmarks/results/chapters/<chapter>.small.json``. A smoke run shows that a chapter works;
these records hold what it *finds* with the real model and data, so the claims the prose
makes are asserted here. Refresh them with ``make book`` after changing a chapter.

Wall times are recorded (``python -m tlutils.results`` lists them) but not asserted: they
measure the machine as much as the chapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "results" / "chapters"
EXECUTED = sorted(p.stem for p in (REPO / "book").rglob("*.md")
                  if "kernelspec:" in p.read_text()[:800] and "save_results(" in p.read_text())


def record(chapter: str) -> dict:
    path = RECORDS / f"{chapter}.small.json"
    assert path.is_file(), f"{path} is missing: run `make book` (small profile) and commit the record"
    return json.loads(path.read_text())


@pytest.mark.parametrize("chapter", EXECUTED)
def test_every_executed_chapter_has_a_small_record(chapter):
    r = record(chapter)
    assert r["profile"] == "small" and r["model"] == "minilm" and r["chapter"] == chapter
    assert r["wall_time_s"] > 0 and r["environment"]["cpu_count"] >= 1


def test_running_example_pretrained_beats_scratch():
    mrpc = record("sentence_pair_classification")["metrics"]["mrpc"]
    assert mrpc["pretrained"]["accuracy"] > mrpc["scratch"]["accuracy"]
    assert mrpc["pretrained"]["accuracy"] > mrpc["majority_baseline"]


def test_feature_extraction_frozen_encoder_beats_majority():
    m = record("feature_extraction")["metrics"]
    assert m["extractors"]["frozen_separate_mean"]["accuracy"] > m["majority_baseline"]
    assert len(m["layer_probe"]["layers"]) == 6 + 1  # MiniLM-L6 and its embedding layer


def test_fine_tuning_every_strategy_and_the_encoder_helps():
    m = record("fine_tuning")["metrics"]
    rows = m["strategies"]
    assert {"head only", "full", "gradual unfreezing", "layer-wise lr decay", "lora"} <= set(rows)
    assert any(name.startswith("top-") for name in rows)
    # updating the encoder beats the article's "last layer only" in this record
    assert rows["full"]["accuracy"] > rows["head only"]["accuracy"]
    assert rows["lora"]["trainable_parameters"] < rows["full"]["trainable_parameters"] / 100
    assert len(m["seeds"]["full"]["accuracy"]) >= 3


def test_distilled_student_beats_the_same_student_on_hard_labels():
    m = record("distillation")["metrics"]
    students = m["students"]
    assert students["from-teacher (distilled)"]["accuracy"] > students["from-teacher (hard labels)"]["accuracy"]
    assert students["from-teacher (distilled)"]["parameters"] < m["teacher"]["parameters"]
