"""Exercises keep their solutions in dropdowns, and a solution that is code is a code cell, hidden
behind a toggle and executed with its chapter (so it cannot rot), never a ```python block in the
prose. Parsed from the Markdown sources; nothing is executed."""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p for p in (REPO / "book").rglob("*.md") if "kernelspec:" in p.read_text()[:800])
IDS = [str(p.relative_to(REPO / "book")) for p in CHAPTERS]
HEADING = re.compile(r"^## +(.+?)\s*$", re.MULTILINE)  # a section: ends the Exercises or starts them
DROPDOWN = re.compile(r"^\s*(:{3,})\{dropdown\}[^\n]*\n(.*?)^\s*\1\s*$", re.MULTILINE | re.DOTALL)
PYTHON_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(python|py|ipython3?)\b", re.MULTILINE)
HIDDEN = {"hide-input", "hide-cell", "remove-cell"}  # remove-cell: bookkeeping (save_results), never shown


def exercises(chapter: Path) -> tuple[str, list]:
    """The Markdown text and the code cells of the chapter's ``## Exercises`` section."""
    inside, text, code = False, [], []
    for cell in jupytext.read(chapter).cells:
        if cell.cell_type == "code":
            code += [cell] if inside else []
            continue
        start = 0
        for heading in HEADING.finditer(cell.source):
            text += [cell.source[start:heading.start()]] if inside else []
            inside, start = heading.group(1) == "Exercises", heading.end()
        text += [cell.source[start:]] if inside else []
    return "\n".join(text), code


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_code_solutions_are_hidden_code_cells(chapter):
    text, code = exercises(chapter)
    if re.search(r"^## Exercises\s*$", chapter.read_text(), re.MULTILINE):
        assert DROPDOWN.search(text), f"{chapter.name}: no solution dropdown found in its Exercises"
    fenced = [m.group(2)[:60].strip() for m in DROPDOWN.finditer(text) if PYTHON_FENCE.search(m.group(2))]
    assert not fenced, (f"{chapter.name}: solutions with a ```python block (never executed): {fenced}; make the "
                        f"code a {{code-cell}} right after the exercise's list item, tagged hide-input or hide-cell")
    unhidden = [c.source.splitlines()[0] for c in code if not HIDDEN & set(c.metadata.get("tags", ()))]
    assert not unhidden, f"{chapter.name}: Exercises code cells without a hide-input/hide-cell tag: {unhidden}"


def test_the_parser_sees_fenced_and_cell_solutions():
    """The checks above would pass vacuously if the parser missed the section or the fence."""
    fenced = ":::{dropdown} Solution\n   ```python\n   x = 1\n   ```\n   :::\n"
    assert PYTHON_FENCE.search(DROPDOWN.search(fenced).group(2))
    assert sum(len(exercises(c)[1]) for c in CHAPTERS) >= 7  # the solutions made code cells so far
