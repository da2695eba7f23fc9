"""Shared fixtures of the tlutils unit tests.

The environment is set by the repository's root ``conftest.py`` before anything imports
``transformers``/``datasets`` (they read the offline switches at import time).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The environment (offline hub, data folder, smoke profile, no bars) is set by ../conftest.py.


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The staged data folder (``$TLUTILS_DATA_DIR``); a missing one is a failure, not a skip."""
    value = os.environ.get("TLUTILS_DATA_DIR")
    if not value:
        pytest.fail("TLUTILS_DATA_DIR is not set: run the tests with TLUTILS_DATA_DIR=../shared/data "
                    "(the staged JSON Lines folder).", pytrace=False)
    path = Path(value).expanduser()
    if not path.is_dir():
        pytest.fail(f"TLUTILS_DATA_DIR={value} does not exist: set TLUTILS_DATA_DIR=../shared/data "
                    "(the staged JSON Lines folder).", pytrace=False)
    return path


def mrpc_rows(n: int, prefix: str) -> list[dict]:
    """``n`` valid MRPC rows, labels alternating so both classes are present."""
    names = ("not_equivalent", "equivalent")
    return [{"id": f"{prefix}-{i}", "text_a": f"The company said {i} shares were sold on Monday.",
             "text_b": f"On Monday {i} shares were sold, the company said.",
             "label": i % 2, "label_name": names[i % 2]} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tiny_task_dir(tmp_path: Path) -> Path:
    """A small valid data folder: ``<root>/mrpc/{train,validation}.jsonl``, 12 rows each.

    Returns the root (what ``TLUTILS_DATA_DIR`` or ``data_dir=`` points at); tests corrupt
    the files to check the errors.
    """
    root = tmp_path / "data"
    write_jsonl(root / "mrpc" / "train.jsonl", mrpc_rows(12, "train"))
    write_jsonl(root / "mrpc" / "validation.jsonl", mrpc_rows(12, "validation"))
    return root


@pytest.fixture(scope="session")
def tokenizer():
    """MiniLM's WordPiece tokenizer (what ``tiny-bert`` and ``minilm`` use), loaded once."""
    from tlutils.models import load_tokenizer

    return load_tokenizer("tiny-bert")


@pytest.fixture
def isolated_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``TLUTILS_OUTPUT_DIR`` pointed at an empty temporary folder."""
    out = tmp_path / "outputs"
    monkeypatch.setenv("TLUTILS_OUTPUT_DIR", str(out))
    return out


def stray_warnings(executed: Path) -> list[str]:
    """The Python warnings an executed notebook printed to stderr (``file:line: XWarning: ...``),
    one entry per warning with the number of the cell that printed it: a reader of the HTML book
    would see each as a red block, often with the build machine's paths in it."""
    import re

    import nbformat

    found = []
    for number, cell in enumerate(nbformat.read(str(executed), as_version=4).cells):
        for output in cell.get("outputs", ()):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                found += [f"cell {number}: {m}" for m in re.findall(r"\w*Warning: [^\n]*", output.get("text", ""))]
            data = output.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:  # a progress bar, which needs a CDN script
                found.append(f"cell {number}: a widget output ({data.get('text/plain', '')[:60]!r}); wrap the call "
                             f"in tlutils.config.quiet_progress()")
    return found


@pytest.fixture(scope="session")
def executed_notebooks(tmp_path_factory) -> Path:
    """Where every chapter test leaves its executed notebook (``<part>/<chapter>.ipynb``): the
    HTML site of the tests is rendered from these, so no chapter is executed a second time."""
    return tmp_path_factory.mktemp("executed")


def keep_executed(executed: Path, chapter: str, folder: Path) -> None:
    """Copy an executed notebook of ``chapter`` (``"concepts/terms_text"``, ``"intro"``) into ``folder``."""
    import shutil

    target = folder / f"{chapter}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(executed, target)


def build_site(executed: Path, workdir: Path) -> tuple["subprocess.CompletedProcess[str]", Path, list[str]]:
    """``jupyter-book build -W`` of the book, each chapter that ``executed`` holds rendered with its
    outputs (the notebook the chapter test ran), the others from their ``.md`` without running
    them. Returns the process, the HTML folder and the chapters rendered with outputs."""
    import shutil
    import subprocess
    import sys

    import yaml

    source = workdir / "source"
    shutil.copytree(REPO / "book", source / "book", ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    for name in ("_toc.yml",):
        shutil.copy(REPO / name, source / name)
    for folder in ("_mathjax", "_ext", "tlutils"):  # MathJax, the Sphinx extension, literalinclude sources
        if (REPO / folder).is_dir():
            (source / folder).symlink_to(REPO / folder, target_is_directory=True)
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    config["exclude_patterns"] = [p for p in config["exclude_patterns"] if p != "**.ipynb"]
    (source / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    rendered = []
    for notebook in sorted(executed.rglob("*.ipynb")):
        chapter = notebook.relative_to(executed).with_suffix("")
        md = source / "book" / chapter.with_suffix(".md")
        if md.is_file():
            md.unlink()
            shutil.copyfile(notebook, md.with_suffix(".ipynb"))
            rendered.append(str(chapter))
    jb = Path(sys.executable).with_name("jupyter-book")
    command = [str(jb) if jb.exists() else "jupyter-book", "build", str(source), "-W", "--keep-going"]
    proc = subprocess.run(command, capture_output=True, text=True)
    return proc, source / "_build" / "html", rendered


@pytest.fixture(scope="session")
def smoke_site(executed_notebooks, tmp_path_factory):
    """The book's HTML, built once per session from the notebooks the chapter tests executed."""
    return build_site(executed_notebooks, tmp_path_factory.mktemp("site"))


@pytest.fixture
def run_chapter(tmp_path, monkeypatch, executed_notebooks):
    """Execute a chapter's `.ipynb` twin with papermill in the smoke profile and return its
    results record: ``record = run_chapter("concepts/sentence_pair_classification")``."""
    import papermill as pm

    monkeypatch.setenv("TLUTILS_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: figures land in the outputs

    def run(chapter: str, **parameters) -> dict:
        notebook = REPO / "book" / f"{chapter}.ipynb"
        executed = tmp_path / notebook.name
        pm.execute_notebook(str(notebook), str(executed),
                            parameters={"PROFILE": "smoke", "SEED": 0, **parameters},
                            cwd=str(notebook.parent), kernel_name="python3", progress_bar=False)
        warnings = stray_warnings(executed)
        assert not warnings, (f"{chapter} prints warnings that the published page would show; fix them "
                              f"at their source: {warnings}")
        keep_executed(executed, chapter, executed_notebooks)
        return json.loads((tmp_path / "outputs" / notebook.stem / "metrics.json").read_text())

    return run
