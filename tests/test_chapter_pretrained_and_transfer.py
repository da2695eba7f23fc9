"""The chapter *Pretrained models and transfer learning* and the glossary.

The chapter test executes the notebook in the smoke profile and asserts on its results file;
the glossary test checks that every ``{ref}`` in the glossary points at a label defined
somewhere under ``book/`` (the ``(label)=`` targets of the chapters).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tlutils.stats import VERDICTS

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
GLOSSARY = BOOK / "concepts" / "glossary.md"
TERMS = ("tokenization", "embedding", "WordPiece", "attention", "masking", "language model",
         "vocabulary", "label smoothing", "cross-entropy", "domain adaptation",
         "multi-task learning", "adversarial training", "gradient reversal layer",
         "self-training", "fine-tuning", "dropout", "contrastive learning", "triplet loss",
         "pretrained model", "transfer learning", "fine-tuned model")


def _labels_under_book() -> set[str]:
    """Every MyST target ``(label)=`` (on a line of its own) in the book's Markdown files."""
    labels = set()
    for path in BOOK.rglob("*.md"):
        if "_build" in path.parts:
            continue
        labels.update(re.findall(r"^\((?P<label>[^)\s]+)\)=\s*$", path.read_text(), flags=re.M))
    return labels


def _glossary_entries() -> dict[str, str]:
    """Term -> its definition block, parsed from the ``{glossary}`` directive."""
    text = GLOSSARY.read_text()
    block = re.search(r"```\{glossary\}\n(.*?)\n```", text, flags=re.S)
    assert block, "glossary.md has no ```{glossary} block"
    entries: dict[str, list[str]] = {}
    term = None
    for line in block.group(1).splitlines():
        if line and not line[0].isspace():
            term = line.strip()
            entries[term] = []
        elif term is not None:
            entries[term].append(line)
    return {t: "\n".join(lines) for t, lines in entries.items()}


def test_glossary_is_a_plain_page_with_every_term():
    text = GLOSSARY.read_text()
    assert "kernelspec" not in text and "code-cell" not in text, "the glossary is a plain MyST page"
    entries = _glossary_entries()
    assert sorted(entries) == sorted(TERMS), set(entries) ^ set(TERMS)
    for term, body in entries.items():
        assert "Demo: {ref}`" in body, f"{term}: no Demo link"
        assert "Used in:" in body, f"{term}: no 'Used in'"
        assert body.index("Demo:") < body.index("Used in:"), term


def test_every_article_term_carries_the_articles_chinese_name():
    """Readers of the source article map its terms to the book's: each of its terms names the
    Chinese word the article uses, and that word occurs in the article."""
    article = (REPO.parent / "shared" / "source" / "article.txt")
    text = article.read_text(encoding="utf-8") if article.is_file() else None
    for term, body in _glossary_entries().items():
        found = re.search(r"In the article \(Chinese\): (\S+)", body)
        assert found, f"{term}: no 'In the article (Chinese): ...' line"
        assert body.index("In the article") < body.index("Demo:"), term
        name = found.group(1).rstrip(",")
        line = body.split("In the article (Chinese):")[1].split("\n")[0]
        assert re.search(r"[\u4e00-\u9fff]", line) or "kept in English" in line, term
        if text is not None:  # the staged source article, where this checkout has it
            assert name.lower() in text.lower(), f"{term}: {name!r} does not occur in the article"


def test_every_glossary_ref_target_exists():
    """Fails while a chapter that defines a ``term-*`` label has not landed; the message lists
    the missing labels."""
    refs = set(re.findall(r"\{ref\}`[^`]*?<([^>`]+)>`|\{ref\}`([^`<>]+)`", GLOSSARY.read_text()))
    targets = {a or b for a, b in refs}
    missing = sorted(targets - _labels_under_book())
    assert not missing, f"glossary links to labels defined nowhere under book/: {missing}"


@pytest.mark.chapter
def test_pretrained_and_transfer_chapter(run_chapter):
    record = run_chapter("concepts/pretrained_and_transfer")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]
    assert m["train_examples"] == 64 and m["validation_examples"] == 64
    assert m["mlm_head_tensors"] == 0  # the packaged checkpoint has no language-model head
    assert 0.0 <= m["zero_shot_auc_random_init"] <= 1.0
    low, high = m["zero_shot_auc_gain_ci95"]
    assert low <= high and -1.0 <= low and high <= 1.0
    assert math.isclose(m["zero_shot_auc_gain"], m["similarity"]["before"]["auc"] - m["zero_shot_auc_random_init"])

    # cosine similarities before and after fine-tuning, for every run
    assert set(m["similarity"]) == {"before", "end-to-end", "partial", "progressive"}
    for name, s in m["similarity"].items():
        for key in ("paraphrase_mean", "non_paraphrase_mean"):
            assert -1.0 <= s[key] <= 1.0, (name, key)
        assert math.isclose(s["gap"], s["paraphrase_mean"] - s["non_paraphrase_mean"], abs_tol=1e-9)
        assert 0.0 <= s["auc"] <= 1.0
    handful = m["handful"]
    assert handful["labels"] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert all(len(handful[n]) == 8 and all(-1 <= c <= 1 for c in handful[n]) for n in m["similarity"])

    # per-layer relative weight change
    groups = ["embeddings", "layer 0", "layer 1", "pooler", "head"]  # the 2-layer smoke model
    for name, change in m["layer_change"].items():
        assert list(change) == groups, name
        assert all(math.isfinite(v) and v >= 0 for v in change.values()), name
    e2e, partial, progressive = (m["layer_change"][n] for n in ("end-to-end", "partial", "progressive"))
    assert all(v > 0 for v in e2e.values())  # end-to-end: every group was trained
    assert all(v > 0 for v in progressive.values())  # progressive: everything unfrozen by the end
    assert m["frozen_groups_partial"] == ["embeddings", "layer 0"]
    assert all(partial[g] == 0.0 for g in m["frozen_groups_partial"])  # frozen: exactly unchanged
    assert all(partial[g] > 0 for g in ("layer 1", "pooler", "head"))
    assert m["most_changed_encoder_layer"] in ("layer 0", "layer 1")
    assert math.isclose(m["top_over_bottom_layer_change"], e2e["layer 1"] / e2e["layer 0"])
    ratios = m["partial_change_relative_to_end_to_end"]
    assert set(ratios) == {"layer 1", "pooler", "head"} and all(r > 0 for r in ratios.values())
    for name in ("end-to-end", "partial", "progressive"):
        delta = m["similarity_change"][name]
        assert math.isclose(delta["auc"], m["similarity"][name]["auc"] - m["similarity"]["before"]["auc"])

    # end-to-end vs partial vs progressive at the same budget
    runs = m["runs"]
    assert runs["partial"]["trainable_parameters"] < runs["end-to-end"]["trainable_parameters"]
    assert runs["end-to-end"]["trainable_parameters"] == m["parameters"]
    stages = m["progressive_stage_trainable"]
    assert stages[0] == runs["partial"]["trainable_parameters"]
    assert stages == sorted(stages) and stages[-1] == m["parameters"] and len(set(stages)) == 3
    for name, run in runs.items():
        assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["f1"] <= 1.0, name
        assert -1.0 <= run["mcc"] <= 1.0 and run["train_seconds"] > 0, name
        assert run["pairs_per_second"] > 0 and isinstance(run["at_majority_class"], bool), name
    assert 0.5 <= m["majority_baseline"] <= 0.8

    # every comparison carries a verdict; one main, the rest Holm-corrected within their family
    comparisons = m["comparisons"]
    assert m["main_comparison"] == "end-to-end vs progressive (accuracy)"
    assert len(comparisons) == 3 + 7
    main = comparisons[m["main_comparison"]]
    assert main["p_adjusted"] is None and main["n"] == m["validation_examples"]
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["sentence"].startswith(f"{c['a']} vs {c['b']}"), name
        assert c["low"] <= c["high"], name
        if name != m["main_comparison"]:
            assert c["p_adjusted"] >= c["p_value"] and c["family_size"] in (2, 7), name
    zero_shot = comparisons["pretrained, zero-shot vs random weights (auc)"]
    assert math.isclose(zero_shot["difference"], m["zero_shot_auc_gain"])
