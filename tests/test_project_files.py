"""The files a reader, an instructor or a packager reads first agree with each other."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_citation_matches_the_package_and_the_repository():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["authors"]
    assert citation["version"] == project["version"]
    assert citation["license"] == project["license"]["text"] == "Apache-2.0"
    assert citation["repository-code"] == config["repository"]["url"]


def test_code_and_book_licences_are_both_there():
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    book = (REPO / "LICENSE-BOOK.md").read_text()
    assert "CC BY 4.0" in book and "Apache License 2.0" in book
