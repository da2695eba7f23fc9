"""The pretraining corpus: sentence splitting, de-duplication, overlap removal, cache, errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tlutils.errors import DataError
from tlutils.pretraining import Corpus, build_corpus, load_corpus, normalise, split_sentences
from tlutils.pretraining.corpus import default_tasks


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def pair(i: int, a: str, b: str, label: int = 0) -> dict:
    return {"id": str(i), "text_a": a, "text_b": b, "label": label,
            "label_name": ("not_equivalent", "equivalent")[label]}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """MRPC-shaped train/validation/test and an RTE train/validation (no test split)."""
    root = tmp_path / "data"
    write(root / "mrpc" / "train.jsonl", [
        pair(0, "The cat sat. It was happy. Then it slept.", "A dog barked."),
        pair(1, "The Cat sat!", "Birds sing at dawn. They stop at noon."),  # "The Cat sat!" duplicates row 0
        pair(2, "Prices rose in May. Held-out sentence here. Prices fell in June.", "Nothing else."),
    ])
    write(root / "mrpc" / "validation.jsonl", [pair(0, "held-out sentence HERE", "Unrelated text.")])
    write(root / "mrpc" / "test.jsonl", [pair(0, "A dog barked", "Something new.")])
    rte = [{"id": "0", "text_a": "Mr. Smith went to Washington. He stayed.", "text_b": "Smith travelled.",
            "label": 0, "label_name": "entailment"}]
    write(root / "rte" / "train.jsonl", rte)
    write(root / "rte" / "validation.jsonl", [{**rte[0], "text_a": "Other.", "text_b": "Texts."}])
    return root


def test_split_sentences_handles_abbreviations_initials_and_paragraphs():
    text = "Dr. Smith met J. R. Jones in the U.S. capital. They talked!\n\nlater, more.  \"Quoted.\" (Yes.) 3 cats."
    assert split_sentences(text) == ["Dr. Smith met J. R. Jones in the U.S. capital.", "They talked!",
                                     "later, more.", "\"Quoted.\"", "(Yes.)", "3 cats."]
    assert split_sentences("no capital. after this full stop") == ["no capital. after this full stop"]
    assert split_sentences("one line\nwrapped here") == ["one line wrapped here"]
    assert split_sentences("   ") == []


def test_normalise_is_case_punctuation_and_space_blind():
    assert normalise("The  Cat, sat!") == normalise("the cat sat") == "the cat sat"
    assert normalise("Café") == normalise("CAFÉ")
    assert normalise("...") == ""


def test_build_corpus_removes_overlap_and_duplicates_and_cuts_documents(data, isolated_outputs):
    corpus = build_corpus(["mrpc", "rte"], data_dir=data)
    sentences = list(corpus.sentences())
    assert "Held-out sentence here." not in sentences  # in validation (normalised)
    assert "A dog barked." not in sentences  # in test
    assert sentences.count("The cat sat.") == 1 and "The Cat sat!" not in sentences  # duplicate
    removed = corpus.stats["removed"]
    assert removed["evaluation_overlap"] == 2 and removed["duplicates"] == 1
    assert corpus.stats["removed_by_task"]["mrpc"]["evaluation_overlap"] == 2
    # Row 2's passage lost its middle sentence: two documents, so "rose" and "fell" are not consecutive.
    parts = [d.sentences for d in corpus.documents if d.source == "mrpc/2"]
    assert ("Prices rose in May.",) in parts and ("Prices fell in June.",) in parts
    assert ("The cat sat.", "It was happy.", "Then it slept.") in [d.sentences for d in corpus.documents]
    assert ("Mr. Smith went to Washington.", "He stayed.") in [d.sentences for d in corpus.documents]
    assert corpus.stats["documents"] == len(corpus.documents)
    assert corpus.stats["sentences"] == len(sentences) == corpus.stats["input_sentences"] - 3
    assert sum(t["words"] for t in corpus.stats["by_task"].values()) == corpus.stats["words"]
    assert corpus.stats["bytes"] == sum(len(s.encode()) + 1 for s in sentences)


def test_build_corpus_is_cached_by_a_hash_of_its_inputs(data, isolated_outputs):
    first = build_corpus(["mrpc", "rte"], data_dir=data)
    assert (first.folder / "documents.jsonl").is_file() and first.folder.is_relative_to(isolated_outputs)
    again = build_corpus(["mrpc", "rte"], data_dir=data)
    assert again.hash == first.hash and again.folder == first.folder
    assert again.documents == first.documents and again.stats == first.stats
    write(data / "mrpc" / "test.jsonl", [pair(0, "Prices rose in May.", "x")])  # other inputs -> other corpus
    changed = build_corpus(["mrpc", "rte"], data_dir=data)
    assert changed.hash != first.hash and "Prices rose in May." not in list(changed.sentences())


def test_empty_corpus_file_and_empty_corpus_are_one_line_errors(data, isolated_outputs):
    corpus = build_corpus(["mrpc"], data_dir=data)
    (corpus.folder / "documents.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty: delete .* build_corpus") as err:
        load_corpus(corpus.folder)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no documents"):
        Corpus([])
    with pytest.raises(DataError, match="no documents"):
        Corpus.from_texts(["", "   "])


def test_split_keeps_both_texts_of_a_row_together_and_is_deterministic():
    from tlutils.pretraining import Document

    docs = [Document("t", f"t/{i // 2}", (f"Sentence {i}.",)) for i in range(400)]
    corpus = Corpus(docs)
    train, held = corpus.split(0.1, seed=3)
    assert 0 < len(held) < len(docs) and len(train) + len(held) == len(docs)
    assert {d.source for d in train}.isdisjoint({d.source for d in held})
    assert corpus.split(0.1, seed=3) == (train, held)


def test_real_corpus_figures(isolated_outputs):
    """The book's corpus: about 7.8 MB and 1.4M words, no evaluation sentence in it (< 10 s)."""
    began = time.perf_counter()
    corpus = build_corpus(cache=False)
    assert time.perf_counter() - began < 20
    stats = corpus.stats
    assert stats["tasks"] == list(default_tasks()) == ["amazon", "mnli", "mrpc", "rte", "sick", "snli", "stsb"]
    assert 7.0e6 < stats["bytes"] < 8.5e6 and 1.25e6 < stats["words"] < 1.55e6
    assert stats["by_task"]["amazon"]["share_words"] > 0.5  # the largest part by far
    assert stats["removed"]["evaluation_overlap"] > 0 and stats["removed"]["duplicates"] > 0
    assert sum(len(d.sentences) >= 2 for d in corpus.documents) > 5000  # consecutive pairs for NSP/SOP
    normalised = {normalise(s) for s in corpus.sentences()}
    assert len(normalised) == stats["sentences"]  # de-duplicated
