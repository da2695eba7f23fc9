"""WordPiece and byte-level BPE vocabularies: special tokens, pair layout, round trip, cache, errors."""

from __future__ import annotations

import pytest
from pretraining_helpers import tiny_corpus, tiny_texts, tiny_tokenizer

from tlutils.errors import ConfigError, DataError
from tlutils.pretraining import Layout, train_tokenizer
from tlutils.pretraining.tokenizer import tokenizer_kind

TEXTS = ["The big cat sat on the mat.", "A blue bird flew over the road!", "Red  trees\nand green houses?"]  # corpus characters only


@pytest.fixture(scope="module")
def wordpiece():
    return tiny_tokenizer("wordpiece")


@pytest.fixture(scope="module")
def bpe():
    return tiny_tokenizer("bpe")


def test_wordpiece_special_tokens_and_pair_layout(wordpiece):
    assert len(wordpiece) == 80 and tokenizer_kind(wordpiece) == "wordpiece"
    assert [wordpiece.pad_token, wordpiece.unk_token, wordpiece.cls_token, wordpiece.sep_token, wordpiece.mask_token] \
        == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert [wordpiece.pad_token_id, wordpiece.cls_token_id, wordpiece.sep_token_id] == [0, 2, 3]
    enc = wordpiece("The cat sat.", "A dog ran.")
    tokens = wordpiece.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    first = tokens.index("[SEP]") + 1
    assert enc["token_type_ids"] == [0] * first + [1] * (len(tokens) - first)
    a = wordpiece("The cat sat.", add_special_tokens=False)["input_ids"]
    b = wordpiece("A dog ran.", add_special_tokens=False)["input_ids"]
    assert Layout.of(wordpiece).pair(a, b) == (enc["input_ids"], enc["token_type_ids"])


def test_wordpiece_round_trip_is_lowercased_text(wordpiece):
    for text in TEXTS:
        ids = wordpiece(text)["input_ids"]
        assert wordpiece.unk_token_id not in ids
        decoded = wordpiece.decode(ids, skip_special_tokens=True)
        assert decoded.replace(" ", "") == text.lower().replace(" ", "").replace("\n", "")


def test_bpe_special_tokens_layout_and_exact_round_trip(bpe):
    assert len(bpe) == 280 and tokenizer_kind(bpe) == "bpe"
    assert [bpe.convert_ids_to_tokens(i) for i in range(5)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    enc = bpe("The cat sat.", "A dog ran.")
    a = bpe("The cat sat.", add_special_tokens=False)["input_ids"]
    b = bpe("A dog ran.", add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == [0, *a, 2, 2, *b, 2]  # <s> A </s></s> B </s>
    assert Layout.of(bpe).pair(a, b)[0] == enc["input_ids"]
    for text in [*TEXTS, "Commas, Ünïcödé — déjà vu, 3½ “quotes” 🙂"]:  # bytes never unknown: exact round trip
        ids = bpe(text)["input_ids"]
        assert bpe.unk_token_id not in ids
        assert bpe.decode(ids, skip_special_tokens=True) == text
    masked = bpe.convert_ids_to_tokens(bpe("The <mask> sat.")["input_ids"])
    assert "<mask>" in masked and masked[masked.index("<mask>") - 1] != "Ġ"  # it absorbs the space, as in RoBERTa


def test_training_is_cached_by_corpus_hash(isolated_outputs):
    corpus = tiny_corpus()
    first = train_tokenizer(corpus, "wordpiece", 80)
    folder = next((isolated_outputs / "pretraining" / "tokenizers").iterdir())
    assert folder.name.startswith("wordpiece-80-") and (folder / "tokenizer.json").is_file()
    assert train_tokenizer(corpus, "wordpiece", 80).get_vocab() == first.get_vocab()  # read, not retrained
    other = train_tokenizer(tiny_corpus(seed=1), "wordpiece", 80)
    assert len(list((isolated_outputs / "pretraining" / "tokenizers").iterdir())) == 2 and len(other) == 80


def test_bpe_training_is_deterministic():
    """Byte-level BPE retrains to the same vocabulary. (WordPiece does not: tokenizers' trainer
    numbers the ##-pieces in hash-map order, huggingface/tokenizers#1794 -- hence the cache.)"""
    texts = list(tiny_corpus().sentences())
    assert train_tokenizer(texts, "bpe", 280).get_vocab() == train_tokenizer(texts, "bpe", 280).get_vocab()


WORDPIECE_VOCAB = """
import hashlib, json, sys
sys.path.insert(0, {tests!r})
from pretraining_helpers import tiny_corpus
from tlutils.pretraining import train_tokenizer
texts = list(tiny_corpus().sentences()) * 3 + ["unbelievable unbelievably believers rebelled", "zygote zygotes"]
for _ in range(3):
    vocab = train_tokenizer(texts, "wordpiece", 120).get_vocab()
    print(hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest())
"""


def test_wordpiece_training_is_deterministic_across_processes():
    """WordPiece retrains to the same entries with the same ids, in one process and in another
    (Rust seeds its hash maps per process: huggingface/tokenizers#1794, worked around by seeding
    the ##-pieces in sorted order); the ##-pieces are ordinary entries, not special tokens."""
    import subprocess
    import sys
    from pathlib import Path

    code = WORDPIECE_VOCAB.format(tests=str(Path(__file__).parent))
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(3)]
    assert len(runs[0]) == 3 and len({h for run in runs for h in run}) == 1
    tok = train_tokenizer(list(tiny_corpus().sentences()), "wordpiece", 80)
    assert any(t.startswith("##") for t in tok.get_vocab()) and set(tok.all_special_tokens) == \
        {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    ids = tok("birds flew", add_special_tokens=False)["input_ids"]
    assert "##s" in tok.convert_ids_to_tokens(ids) and tok.decode(ids) == "birds flew"


def test_too_small_corpus_empty_corpus_and_bad_kind_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"yields only \d+ wordpiece entries.*use vocab_size<=\d+") as err:
        train_tokenizer(tiny_texts(20), "wordpiece", 8000)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="corpus is empty"):
        train_tokenizer(["", "  "], "bpe", 300)
    with pytest.raises(ConfigError, match="use 'wordpiece'"):
        train_tokenizer(tiny_texts(20), "unigram", 300)
    with pytest.raises(ConfigError, match="below the 261 entries"):
        train_tokenizer(tiny_texts(20), "bpe", 100)
