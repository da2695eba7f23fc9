"""The figure gallery: every chapter's figures as SVG and PNG files, and one page that lists them.

An instructor who teaches from the book takes figures into slides; a reader who cannot see them
reads their descriptions. Both come from what a build already has: the executed notebooks
(``_build/jupyter_execute/<page>.ipynb``, which myst-nb writes for every page whether it executed
it or rendered stored outputs) hold each figure as ``image/svg+xml`` and ``image/png`` (the chapters
call :func:`tlutils.plotting.set_figure_formats`), and each figure's code cell holds its alt text
as ``mystnb.image.alt`` metadata, the same text the chapter page gives its ``<img>``. Nothing is
executed again.

The gallery writes, under the built site's ``figures/``:

- ``<chapter>-<n>.svg`` and ``<chapter>-<n>.png`` for the ``n``-th figure of each chapter
  (``fine_tuning-2.svg``);
- ``index.html``: per chapter, in the order of ``_toc.yml``, each figure with its alt text as
  ``alt`` and as caption, links to its two files and to the chapter page.

The book's Sphinx extension (``_ext/book_html.py``) renders the page with the book's theme at the
end of every build (``make book``, the smoke site of the tests, ``jupyter-book build``);
``python -m tlutils.gallery`` writes a standalone page that links the book's stylesheets, for a
site built earlier or notebooks executed elsewhere.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

FORMATS = {"image/svg+xml": "svg", "image/png": "png"}
"""The output types the gallery exports, and their file extensions (in the order shown)."""


@dataclass(frozen=True)
class Figure:
    """One figure output of a chapter: its files' contents by extension and its alt text."""

    number: int                       # 1-based, in the order of the chapter's outputs
    alt: str                          # the cell's ``mystnb.image.alt`` ("" when it has none)
    files: dict[str, bytes]           # "svg"/"png" -> file content
    cell: int                         # index of the code cell in the notebook


@dataclass
class Chapter:
    """The figures of one page of the book."""

    page: str                         # the page as in ``_toc.yml``: ``book/traditional/fine_tuning``
    title: str
    figures: list[Figure] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The file-name prefix of its figures: the page's last component (``fine_tuning``)."""
        return Path(self.page).name

    def filename(self, figure: Figure, extension: str) -> str:
        return f"{self.name}-{figure.number}.{extension}"


def toc_pages(toc: dict) -> list[str]:
    """Every page of a Jupyter Book ``_toc.yml`` (as loaded by ``yaml.safe_load``), root first,
    in reading order, parts and nested sections included: ``["book/intro", ...]``."""
    pages = [toc["root"]]

    def walk(entries: Iterable[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                pages.append(str(entry["file"]).removesuffix(".md").removesuffix(".ipynb"))
            walk(entry.get("sections", ()))

    for part in toc.get("parts", ()):
        walk(part.get("chapters", ()))
    walk(toc.get("chapters", ()))
    return pages


def _text(value: object) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def cell_alt(cell: dict) -> str:
    """The alt text a code cell gives its figures (``metadata.mystnb.image.alt``), or ``""``."""
    image = ((cell.get("metadata") or {}).get("mystnb") or {}).get("image") or {}
    return " ".join(_text(image.get("alt")).split())


def notebook_title(notebook: dict, default: str) -> str:
    """The first level-1 heading of the notebook's markdown, without MyST targets or markup."""
    for cell in notebook.get("cells", ()):
        if cell.get("cell_type") == "markdown":
            match = re.search(r"^# (.+)$", _text(cell.get("source")), re.MULTILINE)
            if match:
                return re.sub(r"[*_`]", "", match.group(1)).strip()
    return default


def notebook_figures(notebook: dict) -> list[Figure]:
    """Every figure output of an executed notebook (nbformat 4, as a dict), in order.

    An output is a figure when it holds one of :data:`FORMATS`; it keeps every format it has
    (a chapter that never called ``set_figure_formats`` gives PNG only).
    """
    figures = []
    for index, cell in enumerate(notebook.get("cells", ())):
        if cell.get("cell_type") != "code":
            continue
        for output in cell.get("outputs", ()):
            data = output.get("data") or {}
            files = {}
            for mime, extension in FORMATS.items():
                if mime in data:
                    content = _text(data[mime])
                    files[extension] = (base64.b64decode(content) if extension == "png"
                                        else content.encode("utf-8"))
            if files:
                figures.append(Figure(len(figures) + 1, cell_alt(cell), files, index))
    return figures


def find_notebook(executed: Path, page: str) -> Optional[Path]:
    """The executed notebook of ``page`` under ``executed``: ``<executed>/<page>.ipynb`` (a book
    build's ``jupyter_execute``) or the page without its first folder (``concepts/x.ipynb``, the
    tests' executed notebooks)."""
    parts = Path(page).parts
    for start in range(min(2, len(parts))):
        candidate = executed.joinpath(*parts[start:]).with_suffix(".ipynb")
        if candidate.is_file():
            return candidate
    return None


def collect(executed: Path, pages: Sequence[str]) -> list[Chapter]:
    """The chapters among ``pages`` that have an executed notebook with at least one figure."""
    chapters = []
    for page in pages:
        path = find_notebook(executed, page)
        if path is None:
            continue
        notebook = json.loads(path.read_text(encoding="utf-8"))
        figures = notebook_figures(notebook)
        if figures:
            chapters.append(Chapter(page, notebook_title(notebook, Path(page).name), figures))
    return chapters


def write_figures(chapters: Sequence[Chapter], folder: Path) -> list[Path]:
    """Write every figure's files into ``folder`` (emptied of earlier figures first)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("*.svg"), *folder.glob("*.png")]:
        old.unlink()
    written = []
    for chapter in chapters:
        for figure in chapter.figures:
            for extension, content in figure.files.items():
                path = folder / chapter.filename(figure, extension)
                path.write_bytes(content)
                written.append(path)
    return written


def missing_alt(chapters: Sequence[Chapter]) -> list[str]:
    """``"<page>, figure <n> (cell <i>)"`` for each figure without alt text."""
    return [f"{c.page}, figure {f.number} (cell {f.cell})" for c in chapters for f in c.figures if not f.alt]


def gallery_body(chapters: Sequence[Chapter], to_root: str = "../") -> str:
    """The HTML of the gallery's content (what goes inside the page's ``<main>``).

    Args:
        to_root: the site's root relative to the gallery page (chapter pages are linked as
            ``<to_root><page>.html``).
    """
    e = html.escape
    count = sum(len(c.figures) for c in chapters)
    out = ['<section id="figure-gallery">', "<h1>Figure gallery</h1>",
           f"<p>Every figure of the book ({count} in {len(chapters)} chapters), each as SVG (a vector "
           "image: it scales to any slide) and PNG, with the description that the chapter page gives "
           "screen readers. The figures come from this build's executed chapters; the book's text and "
           "figures are under the licence in <code>LICENSE-BOOK.md</code>.</p>"]
    if chapters:
        out.append('<nav class="gallery-contents"><ul>')
        out += [f'<li><a href="#{e(c.name)}">{e(c.title)}</a> ({len(c.figures)})</li>' for c in chapters]
        out.append("</ul></nav>")
    for chapter in chapters:
        page = f"{to_root}{chapter.page}.html"
        out.append(f'<section id="{e(chapter.name)}">')
        out.append(f'<h2>{e(chapter.title)} <small>(<a href="{e(page)}">chapter</a>)</small></h2>')
        for figure in chapter.figures:
            shown = "svg" if "svg" in figure.files else next(iter(figure.files))
            alt = figure.alt or f"Figure {figure.number} of {chapter.title} (no description yet)"
            links = " · ".join(f'<a href="{e(chapter.filename(figure, x))}" download>{x.upper()}</a>'
                               for x in ("svg", "png") if x in figure.files)
            anchor = f"{chapter.name}-{figure.number}"
            out.append(f'<figure class="gallery-figure" id="{e(anchor)}">'
                       f'<img src="{e(chapter.filename(figure, shown))}" alt="{e(alt, quote=True)}" '
                       f'style="max-width: 100%; height: auto;" />'
                       f"<figcaption><p><strong>Figure {figure.number}.</strong> {e(alt)}</p>"
                       f'<p>{links} · from <a href="{e(page)}">{e(chapter.title)}</a></p></figcaption>'
                       "</figure>")
        out.append("</section>")
    out.append("</section>")
    return "\n".join(out)


_STYLESHEETS = ("styles/theme.css", "styles/pydata-sphinx-theme.css", "styles/sphinx-book-theme.css",
                "pygments.css", "book.css")


def standalone_page(body: str, html_dir: Path, to_root: str = "../") -> str:
    """A complete HTML page around ``body`` that links the book's stylesheets (those present in
    ``html_dir/_static``) and follows the reader's light/dark choice as the book does."""
    links = "\n".join(f'<link rel="stylesheet" href="{to_root}_static/{css}" />'
                      for css in _STYLESHEETS if (html_dir / "_static" / css).is_file())
    theme = ("<script>document.documentElement.dataset.theme = localStorage.getItem('theme') === 'dark' "
             "|| (localStorage.getItem('theme') === 'auto' && matchMedia('(prefers-color-scheme: dark)').matches) "
             "? 'dark' : 'light';</script>")
    return (f'<!DOCTYPE html>\n<html lang="en" data-theme="light">\n<head>\n<meta charset="utf-8" />\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1" />\n'
            f"<title>Figure gallery</title>\n{links}\n{theme}\n</head>\n<body>\n"
            f'<main class="bd-main" style="max-width: 60rem; margin: 2rem auto; padding: 0 1rem;">'
            f'<article class="bd-article">\n<p><a href="{to_root}index.html">Back to the book</a></p>\n'
            f"{body}\n</article></main>\n</body>\n</html>\n")


def build(html_dir: Path, executed: Path, pages: Sequence[str]) -> list[Chapter]:
    """Collect the figures of ``pages`` from ``executed`` and write their files under
    ``html_dir/figures/``; the page itself is written by the caller (:func:`main` or the book's
    Sphinx extension). Returns the chapters, each with its figures."""
    chapters = collect(executed, pages)
    write_figures(chapters, html_dir / "figures")
    return chapters


def main(argv: Optional[Sequence[str]] = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(prog="python -m tlutils.gallery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=Path("_build/html"), help="the built site (default: _build/html)")
    parser.add_argument("--executed", type=Path, default=None,
                        help="the executed notebooks (default: jupyter_execute beside the site)")
    parser.add_argument("--toc", type=Path, default=Path("_toc.yml"), help="the book's table of contents")
    args = parser.parse_args(argv)
    executed = args.executed or args.html.parent / "jupyter_execute"
    if not args.html.is_dir():
        parser.error(f"{args.html} is not a built site: run `make book` first")
    pages = toc_pages(yaml.safe_load(args.toc.read_text(encoding="utf-8")))
    chapters = build(args.html, executed, pages)
    page = args.html / "figures" / "index.html"
    page.write_text(standalone_page(gallery_body(chapters), args.html), encoding="utf-8")
    count = sum(len(c.figures) for c in chapters)
    print(f"figure gallery: {count} figures of {len(chapters)} chapters in {page}")
    for where in missing_alt(chapters):
        print(f"  no alt text: {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
