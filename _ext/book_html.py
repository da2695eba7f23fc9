"""A Sphinx extension for the book's HTML: every page gets each script once, and code wraps.

In this Jupyter Book 1 stack sphinx-thebe's configuration script (``const THEBE_JS_URL = ...``)
is added to every page twice, and the second copy throws "Identifier 'THEBE_JS_URL' has already
been declared" in the reader's browser console. This drops repeated scripts (same source, same
attributes, same inline body) from the page context before the page is written; the first copy
keeps its place. It also adds ``static/book.css``: code cells and their outputs wrap long lines
instead of clipping them at the column edge. ``tests/test_site_in_browser.py`` checks the console
and the code blocks of every page.

At the end of every HTML build it adds the figure gallery (:mod:`tlutils.gallery`): each
chapter's figures as ``figures/<chapter>-<n>.svg`` and ``.png``, read from the notebooks the build
executed or rendered (``jupyter_execute/``), and ``figures/index.html`` rendered with the book's
theme, so the gallery exists however the book is built (``make book``, the tests' smoke site,
``jupyter-book build``) and the syllabus can link it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx.util import logging

logger = logging.getLogger(__name__)


def _script_key(script: Any) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    filename = getattr(script, "filename", script) or ""  # an inline script's is None or "" (both occur)
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def drop_repeated_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """``html-page-context`` handler: keep the first of each identical script."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: the builder and later handlers hold the same list


def _add_static(app: Any) -> None:
    app.config.html_static_path.append(str(Path(__file__).parent / "static"))
    app.add_css_file("book.css")


def figure_gallery(app: Any) -> list[tuple[str, dict, str]]:
    """``html-collect-pages`` handler: write the figure files, return the gallery page to render.

    It runs after every page is written, when ``jupyter_execute/`` holds each notebook's outputs.
    """
    if getattr(app.builder, "format", None) != "html":
        return []
    import yaml

    from tlutils.gallery import build, gallery_body, missing_alt, toc_pages

    toc_path = Path(getattr(app.config, "external_toc_path", "") or Path(app.srcdir) / "_toc.yml")
    if not toc_path.is_absolute():
        toc_path = Path(app.srcdir) / toc_path
    pages = toc_pages(yaml.safe_load(toc_path.read_text(encoding="utf-8")))
    chapters = build(Path(app.outdir), Path(app.outdir).parent / "jupyter_execute", pages)
    for where in missing_alt(chapters):
        logger.info(f"figure gallery: no alt text for {where}")
    return [("figures/index", {"title": "Figure gallery", "body": gallery_body(chapters)}, "page.html")]


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _add_static)
    app.connect("html-collect-pages", figure_gallery)
    app.connect("html-page-context", drop_repeated_scripts, priority=999)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
