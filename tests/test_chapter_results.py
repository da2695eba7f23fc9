"""The *Results across the book* page: every committed record has its rows, and the page runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlutils.results import FINDING_FIELDS, findings, stored_comparisons
from tlutils.stats import VERDICTS

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "results" / "chapters"


def test_every_committed_comparison_has_a_row():
    """A record whose comparisons are missing from the results page fails here."""
    rows = findings()
    for path in sorted(RECORDS.glob("*.json")):
        record = json.loads(path.read_text())
        stored = stored_comparisons(record["metrics"])
        if not stored:
            continue
        mine = {r["path"] for r in rows if r["chapter"] == record["chapter"] and r["profile"] == record["profile"]}
        assert mine == set(stored), f"{path.name}: rows for {sorted(mine)} but stored {sorted(stored)}"
    assert all(set(r) == set(FINDING_FIELDS) and r["verdict"] in VERDICTS for r in rows)


def test_every_record_with_a_main_comparison_marks_exactly_one_row(tmp_path):
    rows = findings()
    for (chapter, profile) in {(r["chapter"], r["profile"]) for r in rows}:
        record = json.loads((RECORDS / f"{chapter}.{profile}.json").read_text())
        mains = [r for r in rows if r["chapter"] == chapter and r["profile"] == profile and r["main"]]
        if "main_comparison" in record["metrics"]:
            assert len(mains) == 1, f"{chapter}.{profile}: main comparison not found among its rows"


def test_findings_reads_nested_comparisons_and_skips_other_profiles(tmp_path):
    def stored(verdict):
        return {"a": "x", "b": "y", "metric": "accuracy", "difference": 0.1, "low": 0.0, "high": 0.2,
                "verdict": verdict, "sentence": f"x vs y: ... {verdict}"}

    record = {"chapter": "toy", "profile": "small", "metrics": {
        "main_comparison": "top", "comparisons": {"top": stored("A better")},
        "sweep": {"comparisons": {"T=2": stored("not resolved")}}, "scalar": 1.0}}
    (tmp_path / "toy.small.json").write_text(json.dumps(record))
    (tmp_path / "toy.smoke.json").write_text(json.dumps({**record, "profile": "smoke"}))
    rows = findings(tmp_path)
    assert [(r["path"], r["main"], r["verdict"]) for r in rows] == [
        ("comparisons.top", True, "A better"), ("sweep.comparisons.T=2", False, "not resolved")]


@pytest.mark.chapter
def test_results_chapter(run_chapter):
    record = run_chapter("outlook/results")
    m = record["metrics"]
    rows = findings()
    assert m["comparisons"] == len(rows) > 0
    assert m["chapters"] == sorted({r["chapter"] for r in rows})
    for profile, verdicts in m["verdicts"].items():
        assert sum(verdicts.values()) == sum(r["profile"] == profile for r in rows)
