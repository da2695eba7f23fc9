"""Figures for teaching: every figure has alt text in its chapter's source, every plotting chapter
renders its figures as SVG and PNG, and the gallery writer turns executed notebooks into figure
files and a page that lists them (``tlutils.gallery``; the browser check opens the built one)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import jupytext
import pytest
import yaml

from tlutils.gallery import (build, collect, find_notebook, gallery_body, main, missing_alt, notebook_figures,
                             toc_pages)

REPO = Path(__file__).resolve().parents[1]
# A code cell draws a figure when it calls pyplot, a tlutils plot_* helper, pandas' .plot or
# displays a figure (the browser check's "chapter that plots" uses the same signs).
DRAWS = re.compile(r"\bplt\.(?!cm\b|rcParams\b)|\.subplots\(|\bplot_\w+\(|\.plot(\.\w+)?\(|display\(fig")
ALT_RULE = ('give each figure cell `mystnb: image: alt: "..."` metadata (a YAML block at the top of the '
            "{code-cell}): what is plotted, the axes and encodings, and what to look for, in words that "
            "stay true from run to run; then `make sync`")


def toc_chapters() -> list[Path]:
    """The notebook chapters (a ``kernelspec``) among the pages of ``_toc.yml``, in order."""
    pages = toc_pages(yaml.safe_load((REPO / "_toc.yml").read_text()))
    paths = [REPO / f"{page}.md" for page in pages]
    return [p for p in paths if p.is_file() and "kernelspec:" in p.read_text()[:800]]


def figure_cells(chapter: Path) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(jupytext.read(chapter).cells)
            if c.cell_type == "code" and DRAWS.search(c.source)]


def test_every_figure_cell_has_alt_text():
    """Each code cell that draws a figure, in every chapter of ``_toc.yml``, gives its figures
    alt text: the chapter page's ``<img alt>`` and the gallery's caption."""
    missing = []
    for chapter in toc_chapters():
        for index, cell in figure_cells(chapter):
            alt = ((cell.metadata.get("mystnb") or {}).get("image") or {}).get("alt", "")
            if not str(alt).strip():
                first = next((line for line in cell.source.splitlines() if DRAWS.search(line)), "")
                missing.append(f"{chapter.relative_to(REPO)} cell {index}: {first.strip()[:70]}")
    assert not missing, f"{len(missing)} figure cells without alt text ({ALT_RULE}):\n" + "\n".join(missing)


def test_every_plotting_chapter_renders_svg_and_png():
    """A chapter that draws figures calls ``set_figure_formats()`` in its setup, so each figure
    output carries both formats (the page shows one; the gallery exports both)."""
    without = [str(c.relative_to(REPO)) for c in toc_chapters()
               if figure_cells(c) and not re.search(r"^set_figure_formats\(\)", c.read_text(), re.MULTILINE)]
    assert not without, (f"chapters that plot without `set_figure_formats()` (from tlutils.plotting) in their "
                         f"setup cell: {without}")


def test_alt_text_reaches_the_ipynb_twin():
    """The Colab twin carries the same metadata (``make sync``), so a build from it keeps the alt text."""
    for chapter in toc_chapters():
        twin = chapter.with_suffix(".ipynb")
        if not twin.is_file():
            continue
        source = {i: c.metadata.get("mystnb") for i, c in figure_cells(chapter)}
        cells = json.loads(twin.read_text())["cells"]
        assert {i: cells[i]["metadata"].get("mystnb") for i in source} == source, f"{twin.name}: run `make sync`"


# --- the gallery writer, on small synthetic executed notebooks -------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"not really a picture"
SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>\n'


def _notebook(title: str, figures: list[tuple[str, dict]]) -> dict:
    """An executed notebook: a title, a code cell without a figure, then one cell per figure
    (alt text, output data)."""
    cells = [{"cell_type": "markdown", "metadata": {}, "source": [f"(label)=\n", f"# {title}\n", "Text."]},
             {"cell_type": "code", "metadata": {}, "source": "x = 1", "execution_count": 1,
              "outputs": [{"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {}}]}]
    for alt, data in figures:
        metadata = {"mystnb": {"image": {"alt": alt}}} if alt else {}
        cells.append({"cell_type": "code", "metadata": metadata, "source": "plt.show()", "execution_count": 2,
                      "outputs": [{"output_type": "stream", "name": "stdout", "text": "done\n"},
                                  {"output_type": "display_data", "metadata": {},
                                   "data": {"text/plain": "<Figure size 640x480 with 1 Axes>", **data}}]})
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}


BOTH = {"image/png": base64.b64encode(PNG).decode(), "image/svg+xml": SVG.splitlines(keepends=True)}


@pytest.fixture
def executed(tmp_path: Path) -> Path:
    """Executed notebooks laid out as a book build leaves them (``jupyter_execute/book/...``)."""
    root = tmp_path / "jupyter_execute"
    notebooks = {
        "book/part/first": _notebook("First *chapter*", [("Line chart of loss against step.", BOTH),
                                                          ("Bars of accuracy per method & <arm>.", BOTH)]),
        "book/part/second": _notebook("Second", [("", {"image/png": base64.b64encode(PNG).decode()})]),
        "book/part/no_figures": _notebook("No figures", []),
    }
    for page, notebook in notebooks.items():
        path = root / f"{page}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(notebook))
    return root


PAGES = ["book/intro", "book/part/second", "book/part/first", "book/part/no_figures", "book/part/not_executed"]


def test_figures_are_read_in_order_with_their_alt_text(executed):
    notebook = json.loads((executed / "book/part/first.ipynb").read_text())
    figures = notebook_figures(notebook)
    assert [(f.number, f.alt, f.cell) for f in figures] == [
        (1, "Line chart of loss against step.", 2), (2, "Bars of accuracy per method & <arm>.", 3)]
    assert figures[0].files == {"svg": SVG.encode(), "png": PNG}


def test_gallery_writes_every_figure_and_lists_it_with_its_alt_text(executed, tmp_path):
    html_dir = tmp_path / "html"
    chapters = build(html_dir, executed, PAGES)
    assert [c.page for c in chapters] == ["book/part/second", "book/part/first"]  # the toc's order; figures only
    assert [c.title for c in chapters] == ["Second", "First chapter"]
    folder = html_dir / "figures"
    assert sorted(p.name for p in folder.iterdir()) == ["first-1.png", "first-1.svg", "first-2.png", "first-2.svg",
                                                        "second-1.png"]
    assert (folder / "first-2.png").read_bytes() == PNG and (folder / "first-1.svg").read_text() == SVG
    assert missing_alt(chapters) == ["book/part/second, figure 1 (cell 2)"]

    body = gallery_body(chapters)
    assert body.index('id="second"') < body.index('id="first"')
    assert '<img src="first-1.svg" alt="Line chart of loss against step."' in body
    assert 'alt="Bars of accuracy per method &amp; &lt;arm&gt;."' in body  # escaped, not markup
    assert "<strong>Figure 1.</strong> Line chart of loss against step.</p>" in body  # alt as caption
    for name in ("first-1.svg", "first-1.png", "first-2.svg", "first-2.png", "second-1.png"):
        assert f'href="{name}"' in body
    assert 'href="second-1.svg"' not in body and '<img src="second-1.png"' in body  # PNG only: shown and linked
    assert 'href="../book/part/first.html"' in body  # the chapter page, from figures/index.html
    assert "no description yet" in body  # a figure without alt text is still labelled


def test_gallery_reads_the_tests_layout_and_rewrites_cleanly(executed, tmp_path):
    """The chapter tests keep notebooks as ``<part>/<chapter>.ipynb`` (no ``book/``); a second
    build removes figures that no longer exist."""
    flat = tmp_path / "flat"
    (flat / "part").mkdir(parents=True)
    (flat / "part" / "first.ipynb").write_text((executed / "book/part/first.ipynb").read_text())
    assert find_notebook(flat, "book/part/first") == flat / "part" / "first.ipynb"
    assert find_notebook(flat, "book/part/second") is None
    html_dir = tmp_path / "html"
    build(html_dir, executed, PAGES)
    build(html_dir, flat, PAGES)
    assert sorted(p.name for p in (html_dir / "figures").iterdir()) == ["first-1.png", "first-1.svg",
                                                                          "first-2.png", "first-2.svg"]
    assert [c.page for c in collect(flat, PAGES)] == ["book/part/first"]


def test_command_line_writes_a_standalone_page_with_the_books_styles(executed, tmp_path, capsys):
    html_dir = tmp_path / "_build" / "html"
    (html_dir / "_static" / "styles").mkdir(parents=True)
    (html_dir / "_static" / "styles" / "theme.css").write_text("body {}")
    toc = tmp_path / "_toc.yml"
    toc.write_text(yaml.safe_dump({"format": "jb-book", "root": "book/intro", "parts": [
        {"caption": "Part", "chapters": [{"file": "book/part/first", "sections": [{"file": "book/part/second"}]}]}]}))
    assert toc_pages(yaml.safe_load(toc.read_text())) == ["book/intro", "book/part/first", "book/part/second"]
    assert main(["--html", str(html_dir), "--executed", str(executed), "--toc", str(toc)]) == 0
    page = (html_dir / "figures" / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'href="../_static/styles/theme.css"' in page
    assert "pydata-sphinx-theme.css" not in page  # only stylesheets the site has
    assert page.index('id="first"') < page.index('id="second"')
    out = capsys.readouterr().out
    assert "3 figures of 2 chapters" in out and "no alt text: book/part/second, figure 1" in out


def test_set_figure_formats_gives_every_figure_svg_and_png():
    """In a kernel each figure is formatted as both types, reproducibly (no date, fixed ids);
    outside one the call does nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from IPython.core.interactiveshell import InteractiveShell

    from tlutils.plotting import set_figure_formats

    salt = matplotlib.rcParams["svg.hashsalt"]
    set_figure_formats()  # no kernel here: nothing changes
    assert matplotlib.rcParams["svg.hashsalt"] == salt
    shell = InteractiveShell.instance()
    try:
        set_figure_formats()
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        first, _ = shell.display_formatter.format(fig)
        again, _ = shell.display_formatter.format(fig)
        assert {"image/svg+xml", "image/png"} <= set(first)
        assert first["image/svg+xml"] == again["image/svg+xml"] and "<dc:date>" not in first["image/svg+xml"]
        plt.close(fig)
    finally:
        matplotlib.rcParams["svg.hashsalt"] = salt
        InteractiveShell.clear_instance()
