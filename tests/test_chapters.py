"""The book's chapters: twins in sync, each chapter executed exactly once (smoke profile) with
papermill and asserted on through its results file, and the whole book built with warnings as
errors without executing it again.

One execution per chapter keeps `make test` within its 15 minutes as the book grows: papermill
fails on any cell that raises (what nbval's lax mode checked, a second time), and the executed
notebook is kept for the checks that need outputs.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import jupytext
import pytest

from tlutils.stats import VERDICTS

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p for p in (REPO / "book").rglob("*.md") if "kernelspec:" in p.read_text()[:800])
IDS = [str(p.relative_to(REPO / "book")) for p in CHAPTERS]


def _cells(notebook) -> list[tuple[str, str, tuple]]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in notebook.cells]


def test_every_toc_file_exists_and_every_chapter_is_in_the_toc():
    toc = (REPO / "_toc.yml").read_text()
    files = [line.split("file:")[1].strip() for line in toc.splitlines() if "file:" in line]
    files.append(toc.split("root:")[1].split()[0])
    for name in files:
        assert (REPO / f"{name}.md").is_file(), f"_toc.yml lists {name} but {name}.md is missing"
    for chapter in CHAPTERS:
        assert str(chapter.relative_to(REPO).with_suffix("")) in files, f"{chapter} is not in _toc.yml"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_ipynb_twin_in_sync_and_without_outputs(chapter):
    twin = chapter.with_suffix(".ipynb")
    assert twin.is_file(), f"{twin} is missing: run `make sync`"
    source, committed = jupytext.read(chapter), jupytext.read(twin)
    assert _cells(source) == _cells(committed), f"{twin} differs from {chapter.name}: run `make sync`"
    assert not any(c.get("outputs") for c in committed.cells), f"{twin} holds outputs: clear them"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_chapter_structure(chapter):
    """Every chapter has a parameters cell with PROFILE = "auto" and a hidden Colab cell."""
    notebook = jupytext.read(chapter)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", ())]
    if chapter.name != "intro.md":
        assert len(tagged) == 1 and 'PROFILE = "auto"' in tagged[0].source
    colab = [c for c in code if "google.colab" in c.source]
    assert colab and "remove-cell" in colab[0].metadata.get("tags", ())


def test_every_chapter_is_executed_by_exactly_one_test():
    """Each executed chapter has one papermill run in the tests (a new chapter without a test,
    or a chapter run twice, fails here)."""
    calls = re.findall(r'run_chapter\("([^"]+)"', "".join(p.read_text() for p in (REPO / "tests").glob("test_*.py")))
    runs = {c: calls.count(c) for c in set(calls)}
    for chapter in CHAPTERS:
        if chapter.name == "intro.md":
            continue
        name = str(chapter.relative_to(REPO / "book").with_suffix(""))
        assert runs.get(name) == 1, f"{name} is executed by {runs.get(name, 0)} tests: give it one run_chapter test"


@pytest.fixture
def outputs_in(tmp_path, monkeypatch):
    monkeypatch.setenv("TLUTILS_OUTPUT_DIR", str(tmp_path / "outputs"))
    return tmp_path


@pytest.mark.chapter
def test_sentence_pair_classification_chapter(run_chapter):
    record = run_chapter("concepts/sentence_pair_classification")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    mrpc = record["metrics"]["mrpc"]
    for name in ("pretrained", "scratch"):
        for metric in ("accuracy", "f1"):
            assert 0.0 <= mrpc[name][metric] <= 1.0
        assert -1.0 <= mrpc[name]["mcc"] <= 1.0 and mrpc[name]["samples_per_second"] > 0
    assert math.isclose(mrpc["transfer_gain_accuracy"],
                        mrpc["pretrained"]["accuracy"] - mrpc["scratch"]["accuracy"])
    assert 0.5 <= mrpc["majority_baseline"] <= 0.8  # MRPC validation: 68% paraphrases
    assert 0.0 <= mrpc["truncated_fraction"] <= 1.0
    rte = record["metrics"]["rte"]
    assert 0.0 <= rte["pretrained"]["accuracy"] <= 1.0 and 0.3 <= rte["majority_baseline"] <= 0.7
    assert rte["train_examples"] == 64 // 3  # a third of MRPC's, to keep the budget
    assert record["metrics"]["train_examples"] == 64
    comparisons = record["metrics"]["comparisons"]
    assert record["metrics"]["main_comparison"] == "pretrained_vs_scratch"
    for c in comparisons.values():
        assert c["verdict"] in VERDICTS and c["low"] <= c["difference"] <= c["high"] and c["n"] == 64
    assert math.isclose(comparisons["pretrained_vs_scratch"]["difference"], mrpc["transfer_gain_accuracy"])
    assert isinstance(mrpc["scratch"]["at_majority_class"], bool)


@pytest.mark.chapter
def test_intro_executes(outputs_in, executed_notebooks):
    import papermill as pm

    from conftest import keep_executed

    chapter = REPO / "book" / "intro.ipynb"
    out = outputs_in / "intro.ipynb"
    pm.execute_notebook(str(chapter), str(out), cwd=str(chapter.parent), kernel_name="python3",
                        progress_bar=False)
    text = out.read_text()
    assert '"smoke' in text and "equivalent" in text  # the profile printed, the MRPC pairs shown
    keep_executed(out, "intro", executed_notebooks)


@pytest.mark.chapter
def test_book_builds_with_warnings_as_errors(smoke_site):
    """`jupyter-book build -W`: cross-references, citations, the toc and the launch buttons.

    Nothing is executed here: the chapters the papermill tests of this session ran are rendered
    with their outputs (a second execution would cost minutes of CI), the others from their
    source. ``make book`` builds with execution.
    """
    assert "execute_notebooks: force" in (REPO / "_config.yml").read_text()
    proc, html, _ = smoke_site
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (html / "index.html").is_file()
    page = (html / "book" / "concepts" / "sentence_pair_classification.html").read_text()
    assert "Transfer gain" in page and "save_results" in page  # prose and code rendered
    assert "colab.research.google.com/github/tlbook/transfer-learning-nlp/blob/main/book/concepts/" \
           "sentence_pair_classification.ipynb" in page
    assert "Distilling the knowledge in a neural network" in (html / "book" / "references.html").read_text()


def colab_install_cell(fetch: Sequence[str] = ()) -> str:
    """The hidden Colab cell every chapter starts with, made from ``_config.yml``'s repository
    (its URL and branch are the one place the install source is written down); a chapter that
    reads tasks without a hub source (``fetch``) also makes sure their data are there
    (:func:`tlutils.fetch.ensure_local_data`: nothing happens where a data folder has them)."""
    import yaml

    repo = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]
    cell = ("# Colab only: install tlutils (does nothing anywhere else; Colab keeps its own PyTorch).\n"
            "import subprocess\nimport sys\n\n"
            'if "google.colab" in sys.modules:\n'
            '    subprocess.run([sys.executable, "-m", "pip", "install", "-q",\n'
            f'                    "tlutils @ git+{repo["url"]}@{repo["branch"]}"], check=True)')
    if fetch:
        cell += ("\n\n# Data the hub does not have: downloaded once from their original files where no data folder holds them.\n"
                 "from tlutils.fetch import ensure_local_data\n\n"
                 f"ensure_local_data({list(fetch)!r})")
    return cell


def hubless_tasks(text: str) -> list[str]:
    """The tasks a chapter reads that have no hub source (their data must be fetched on Colab)."""
    from tlutils.data import get_task

    return [t for t in tasks_loaded(text) if get_task(t).hub is None]


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if c.name != "intro.md"], ids=[i for i in IDS if i != "intro.md"])
def test_colab_install_cell_is_the_one_made_from_the_config(chapter):
    cells = [c for c in jupytext.read(chapter).cells if c.cell_type == "code" and "google.colab" in c.source]
    assert len(cells) == 1, f"{chapter.name}: {len(cells)} Colab install cells"
    expected = colab_install_cell(hubless_tasks(chapter.read_text()))
    assert cells[0].source.strip() == expected, (
        f"{chapter.name}: its Colab cell differs from the one made from _config.yml's repository "
        f"(url and branch) and the tasks it reads without a hub source; copy this:\n{expected}")


def tasks_loaded(text: str) -> list[str]:
    """The registered tasks a chapter reads: ``load_task("mrpc", ...)``, ``TASK = "sick"``, the names in a
    ``TASKS = ...`` line and the
    leave-one-domain-out loaders of Part IV (``leave_one_domain_out("amazon", ...)``)."""
    from tlutils.data import TASKS

    found = (re.findall(r'(?:load_task|leave_one_domain_out|domain_rows|oracle_train)\(\s*"([a-z_]+)"', text)
             + re.findall(r'^\s*TASK\s*=\s*"([a-z_]+)"', text, re.M)
             + [t for line in re.findall(r'^\s*TASKS\s*=(.*)$', text, re.M) for t in re.findall(r'"([a-z_]+)"', line)])
    return [t for t in dict.fromkeys(found) if t in TASKS]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_chapters_show_the_licence_of_restricted_data(chapter):
    """A chapter that reads MRPC, SICK, STS-B or the Amazon reviews says under which terms, with
    the text of ``tlutils.data.licence_notice`` (the registry's licences, so the two cannot drift)."""
    from tlutils.data import licence_notice

    text = chapter.read_text()
    notice = licence_notice(tasks_loaded(text))
    if notice:
        assert notice in text, f"{chapter.name}: add this after the prerequisites:\n{notice}"
    else:
        assert "{admonition} Data licence" not in text, f"{chapter.name}: a licence notice for no restricted data"
