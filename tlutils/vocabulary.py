"""Tokenizers and vocabularies: word-level splitting, coverage and out-of-vocabulary rates,
and subword vocabularies (WordPiece, byte-level BPE) trained on a corpus.

The chapter *Terms I: from text to a trained classifier* (sections on tokenization, WordPiece
and vocabulary) explains each function and measures it on MRPC, MultiNLI and Amazon reviews.

References:
    WordPiece: Schuster & Nakajima, "Japanese and Korean voice search" (ICASSP 2012), as used by
    BERT (Devlin et al., 2019, https://arxiv.org/abs/1810.04805). Byte-pair encoding: Sennrich
    et al., 2016 (https://arxiv.org/abs/1508.07909); byte-level BPE as in GPT-2 and RoBERTa
    (Liu et al., 2019, https://arxiv.org/abs/1907.11692).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from tokenizers import Tokenizer

WORD_PATTERN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def word_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Rule-based word tokenization: runs of letters/digits (with one inner apostrophe, as in
    ``don't``) and single punctuation marks, optionally lowercased.

    Args:
        text: raw text.
        lowercase: fold case, so ``Hello`` and ``hello`` are one word.

    Returns:
        the list of tokens: ``word_tokenize("Hello world!") == ["hello", "world", "!"]``.
    """
    return WORD_PATTERN.findall(text.lower() if lowercase else text)


def word_counts(texts: Iterable[str], lowercase: bool = True) -> Counter:
    """How often each :func:`word_tokenize` token occurs in ``texts``."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(word_tokenize(text, lowercase))
    return counts


def build_vocabulary(counts: Counter, max_size: int | None = None, min_count: int = 1) -> set[str]:
    """The ``max_size`` most frequent words seen at least ``min_count`` times (ties broken by
    first occurrence, as :meth:`collections.Counter.most_common` does)."""
    return {w for w, c in counts.most_common(max_size) if c >= min_count}


def coverage(vocabulary: set[str], counts: Counter) -> float:
    """Fraction of running tokens (not distinct words) in ``counts`` that ``vocabulary`` holds."""
    total = sum(counts.values())
    return sum(c for w, c in counts.items() if w in vocabulary) / total if total else 0.0


def oov_rate(vocabulary: set[str], texts: Iterable[str], lowercase: bool = True) -> float:
    """Out-of-vocabulary rate: the fraction of running tokens of ``texts`` not in ``vocabulary``.

    Returns:
        a number in [0, 1]; ``1 - coverage(vocabulary, word_counts(texts))``.
    """
    return 1.0 - coverage(vocabulary, word_counts(texts, lowercase))


def train_wordpiece(texts: Iterable[str], vocab_size: int, *, lowercase: bool = True,
                    min_frequency: int = 0,
                    special_tokens: Sequence[str] = BERT_SPECIAL_TOKENS) -> "Tokenizer":
    """Train a BERT-style WordPiece tokenizer (BERT's normalizer and pre-tokenizer) on ``texts``.

    Args:
        texts: training texts.
        vocab_size: the size of the vocabulary to learn (special tokens and single characters
            included; the trainer stops earlier when the corpus has no more pairs to merge).
        lowercase: lowercase and strip accents, as ``bert-base-uncased`` does.
        min_frequency: pairs seen fewer times are never merged.
        special_tokens: added first, so ``[PAD]`` gets id 0.

    Returns:
        a ``tokenizers.Tokenizer``; ``tok.encode(text).tokens`` gives the pieces, continuation
        pieces prefixed with ``##``, and characters never seen in training become ``[UNK]``.

    Reference: Schuster & Nakajima (2012); Devlin et al. (2019), https://arxiv.org/abs/1810.04805.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(special_tokens), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def train_byte_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 0,
                   special_tokens: Sequence[str] = ("<pad>", "<unk>", "<s>", "</s>")) -> "Tokenizer":
    """Train a byte-level BPE tokenizer (GPT-2/RoBERTa style) on ``texts``.

    Every text is first mapped to its UTF-8 bytes, and the 256 byte values are always in the
    vocabulary, so no input ever needs an unknown token.

    Returns:
        the trained ``tokenizers.Tokenizer`` (pieces show a leading space as ``Ġ``).

    Reference: Sennrich et al. (2016), https://arxiv.org/abs/1508.07909; Liu et al. (2019),
    https://arxiv.org/abs/1907.11692.
    """
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(special_tokens), show_progress=False)
    return tokenizer._tokenizer  # the plain Tokenizer: same encode() API as train_wordpiece's


def subword_stats(tokenizer: "Tokenizer", texts: Sequence[str], unk_token: str = "[UNK]") -> dict[str, float]:
    """How a subword tokenizer cuts ``texts``.

    Returns:
        ``unk_per_word`` (unknown tokens per :func:`word_tokenize` word: WordPiece turns a whole
        word it cannot spell into one ``[UNK]``, so this is the fraction of words lost),
        ``unk_per_token`` (the fraction of output tokens that are unknown: it *grows* with the
        vocabulary only because there are fewer pieces), ``pieces_per_word`` and ``vocab_size``.
    """
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    pieces = sum(len(e.tokens) for e in encodings)
    unknown = sum(t == unk_token for e in encodings for t in e.tokens)
    words = sum(len(word_tokenize(t)) for t in texts)
    return {"unk_per_word": unknown / max(words, 1), "unk_per_token": unknown / max(pieces, 1),
            "pieces_per_word": pieces / max(words, 1), "vocab_size": float(tokenizer.get_vocab_size())}
