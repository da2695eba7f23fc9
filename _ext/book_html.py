"""A Sphinx extension for the book's HTML: every page gets each script once, and code wraps.

In this Jupyter Book 1 stack sphinx-thebe's configuration script (``const THEBE_JS_URL = ...``)
is added to every page twice, and the second copy throws "Identifier 'THEBE_JS_URL' has already
been declared" in the reader's browser console. This drops repeated scripts (same source, same
attributes, same inline body) from the page context before the page is written; the first copy
keeps its place. It also adds ``static/book.css``: code cells and their outputs wrap long lines
instead of clipping them at the column edge. ``tests/test_site_in_browser.py`` checks the console
and the code blocks of every page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _add_static)
    app.connect("html-page-context", drop_repeated_scripts, priority=999)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
