"""Properties of tlutils.vocabulary: rule-based tokens, coverage/OOV, trained subword vocabularies."""

from __future__ import annotations

from collections import Counter

from tlutils.vocabulary import (build_vocabulary, coverage, oov_rate, subword_stats, train_byte_bpe,
                                train_wordpiece, word_counts, word_tokenize)

TEXTS = ["The company said its shares rose sharply on Monday.",
         "Shares of the bank fell after the company's report.",
         "Analysts said the report was unbelievably optimistic."] * 5


def test_word_tokenize_splits_punctuation_and_case():
    assert word_tokenize("Hello world!") == ["hello", "world", "!"]
    assert word_tokenize("Don't panic.", lowercase=False) == ["Don't", "panic", "."]


def test_coverage_and_oov():
    counts = word_counts(TEXTS)
    full = build_vocabulary(counts)
    assert coverage(full, counts) == 1.0 and oov_rate(full, TEXTS) == 0.0
    small = build_vocabulary(counts, max_size=3)
    assert len(small) == 3 and 0.0 < coverage(small, counts) < 1.0
    assert oov_rate(full, ["zebras graze quietly"]) == 1.0
    assert build_vocabulary(Counter({"a": 5, "b": 1}), min_count=2) == {"a"}


def test_wordpiece_larger_vocab_fewer_pieces_same_unknowns():
    held_out = ["The analysts reported unbelievably strong shares.", "東京 report"]
    small, large = train_wordpiece(TEXTS, 60), train_wordpiece(TEXTS, 200)
    s, l = subword_stats(small, held_out), subword_stats(large, held_out)
    assert s["vocab_size"] < l["vocab_size"]
    assert l["pieces_per_word"] < s["pieces_per_word"]
    assert s["unk_per_word"] == l["unk_per_word"] > 0  # only unseen characters become [UNK]
    assert "[UNK]" in large.encode("東京", add_special_tokens=False).tokens
    assert large.token_to_id("[PAD]") == 0


def test_byte_level_bpe_has_no_unknowns():
    bpe = train_byte_bpe(TEXTS, 300)
    stats = subword_stats(bpe, ["東京 naïve 🙂 report"], unk_token="<unk>")
    assert stats["unk_per_word"] == 0.0 and stats["pieces_per_word"] > 1
