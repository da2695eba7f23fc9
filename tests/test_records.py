"""The committed small-profile records: what the published book measured, and its budget.

``make book`` (small profile) copies every chapter's results file to
``benchmarks/results/chapters/<chapter>.small.json``. A smoke run shows that a chapter works;
these records hold what it *finds* with the real model and data, so the claims the prose
makes are asserted here. Refresh them with ``make book`` after changing a chapter.

Every comparison a chapter draws is stored with its verdict from ``tlutils.stats``; the tests
below assert the verdicts (``"not resolved"`` included, where that is the finding), never a bare
difference of two accuracies. Wall times are recorded (``python -m tlutils.results`` lists
them) but not asserted: they measure the machine as much as the chapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlutils.stats import VERDICTS

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "results" / "chapters"
EXECUTED = sorted(p.stem for p in (REPO / "book").rglob("*.md")
                  if "kernelspec:" in p.read_text()[:800] and "save_results(" in p.read_text())


def record(chapter: str) -> dict:
    path = RECORDS / f"{chapter}.small.json"
    assert path.is_file(), f"{path} is missing: run `make book` (small profile) and commit the record"
    return json.loads(path.read_text())


def comparison(chapter: str, name: str) -> dict:
    """One stored comparison of a chapter's record (see ``tlutils.stats.Comparison.as_dict``)."""
    comparisons = record(chapter)["metrics"].get("comparisons", {})
    assert name in comparisons, f"{chapter}: no comparison {name!r} (has {sorted(comparisons)})"
    return comparisons[name]


@pytest.mark.parametrize("chapter", EXECUTED)
def test_every_executed_chapter_has_a_small_record(chapter):
    r = record(chapter)
    assert r["profile"] == "small" and r["model"] == "minilm" and r["chapter"] == chapter
    assert r["wall_time_s"] > 0 and r["environment"]["cpu_count"] >= 1
    # the machine and precision the numbers were measured with (AVX2-only vs native bf16)
    assert r["environment"]["precision"] in ("no", "bf16") and "flags" in r["environment"]["cpu"]


@pytest.mark.parametrize("chapter", EXECUTED)
def test_every_record_declares_its_main_comparison_with_a_consistent_verdict(chapter):
    m = record(chapter)["metrics"]
    comparisons = m.get("comparisons", {})
    assert comparisons and m.get("main_comparison") in comparisons, \
        f"{chapter}: store its comparisons (tlutils.stats) and name the main one"
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS, (chapter, name)
        assert c["low"] <= c["difference"] <= c["high"] or c["method"].endswith("seed t"), (chapter, name)
        if c["p_adjusted"] is None and c["verdict"] != "not resolved":  # uncorrected: the interval decides
            assert (c["low"] > 0) == (c["verdict"] == "A better"), (chapter, name)
        assert c["sentence"].endswith(".") and c["a"] in c["sentence"], (chapter, name)


def test_running_example_pretrained_beats_scratch_and_scratch_sits_at_the_floor():
    mrpc = record("sentence_pair_classification")["metrics"]["mrpc"]
    main = comparison("sentence_pair_classification", "pretrained_vs_scratch")
    assert main["verdict"] == "A better" and main["low"] > 0 and main["n"] == 408
    assert not mrpc["pretrained"]["at_majority_class"]
    assert mrpc["scratch"]["at_majority_class"]  # the prose says the random twin learned nothing


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
