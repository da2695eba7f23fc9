"""The syllabus page: every chapter of the book has a week, and its numbers come from the sources and records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.chapter
def test_syllabus_chapter(run_chapter):
    record = run_chapter("syllabus")
    m = record["metrics"]
    assert m["weeks"] == 14 and 0 < m["weeks_ready"] <= 14
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    pages = {c["file"].removeprefix("book/") for part in toc["parts"] for c in part["chapters"]}
    pages.add(toc["root"].removeprefix("book/"))
    chapters = pages - {"syllabus", "references"}
    # every chapter of the table of contents is taught in some week, and nothing taught is missing
    assert set(m["chapters_ready"]) == chapters, set(m["chapters_ready"]) ^ chapters
    assert not set(m["chapters_to_come"]) & pages
    for chapter, minutes in m["running_minutes"].items():
        small = json.loads((REPO / "benchmarks" / "results" / "chapters" / f"{Path(chapter).name}.small.json").read_text())
        assert minutes == round(small["wall_time_s"] / 60, 1), chapter
    assert m["exercises"] >= 3 * (len(chapters) - 3)  # every chapter but the intro, glossary and results has >= 3
    assert all(v > 0 for v in m["reading_minutes"].values())
