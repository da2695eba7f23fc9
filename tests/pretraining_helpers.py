"""Tiny corpora and tokenizers for the tests of ``tlutils.pretraining`` (fast: no real data)."""

from __future__ import annotations

import random

WORDS = ("the a cat dog bird sat ran flew on under over mat big small red blue green house tree road "
         "quickly slowly happily and but because when while").split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
    return " ".join(words).capitalize() + rng.choice(".!?")


def tiny_texts(n: int = 120, seed: int = 0) -> list[str]:
    """``n`` documents of 1-6 made-up sentences over a 30-word vocabulary."""
    rng = random.Random(seed)
    return [" ".join(sentence(rng) for _ in range(rng.randint(1, 6))) for _ in range(n)]


def tiny_corpus(n: int = 120, seed: int = 0):
    from tlutils.pretraining import Corpus

    return Corpus.from_texts(tiny_texts(n, seed))


def tiny_tokenizer(kind: str = "wordpiece", corpus=None):
    """A vocabulary of the tiny corpus (uncached): 80 WordPiece or 280 byte-level BPE entries."""
    from tlutils.pretraining import train_tokenizer

    corpus = corpus if corpus is not None else tiny_corpus()
    return train_tokenizer(list(corpus.sentences()), kind, 80 if kind == "wordpiece" else 280)
