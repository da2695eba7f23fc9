"""Seeded, pure-Python text perturbations: character typos, word drops and adjacent word swaps.

The adversarial-training chapter (``adversarial-training``) uses them to ask whether a model
trained against worst-case perturbations of its *embeddings* is also more robust to simple,
random perturbations of its *text*. Nothing here needs a model, a tokenizer or the network.

Every word is touched with probability ``rate``; a touched word gets one operation, chosen
uniformly from ``ops``:

- ``"typo"``: one character edit inside the word (swap two neighbours, delete, insert or
  replace a letter);
- ``"drop"``: the word is removed (never the last remaining word);
- ``"swap"``: the word changes places with the next one.

The result depends only on ``(text, rate, seed, ops)``: :func:`perturb_text` draws from
``random.Random(f"{seed}:{text}")`` (a string seed is hashed with SHA-512, so it is the same in
every process, unlike ``hash()``). ``rate=0`` returns the text unchanged, and a non-empty text
never becomes empty.
"""

from __future__ import annotations

import random
import string
from typing import Any, Sequence

from tlutils.config import quiet_progress
from tlutils.errors import ConfigError

OPS = ("typo", "drop", "swap")
LETTERS = string.ascii_lowercase


def _check(rate: float, ops: Sequence[str]) -> None:
    if not (isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0):
        raise ConfigError(f"rate={rate}: the share of words to perturb must be in [0, 1].")
    unknown = [op for op in ops if op not in OPS]
    if unknown or not ops:
        raise ConfigError(f"ops={tuple(ops)}: choose one or more of {', '.join(OPS)}.")


def typo(word: str, rng: random.Random) -> str:
    """One character edit that changes ``word``: swap two neighbours, delete, insert or replace."""
    kinds = ["insert", "replace"] + (["swap"] if len(set(word)) > 1 and len(word) > 1 else []) \
        + (["delete"] if len(word) > 1 else [])
    kind = rng.choice(kinds)
    if kind == "swap":
        pairs = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
        if pairs:
            i = rng.choice(pairs)
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        kind = "replace"
    if kind == "delete":
        i = rng.randrange(len(word))
        return word[:i] + word[i + 1:]
    if kind == "insert":
        i = rng.randrange(len(word) + 1)
        return word[:i] + rng.choice(LETTERS) + word[i:]
    i = rng.randrange(len(word))
    return word[:i] + rng.choice([c for c in LETTERS if c != word[i].lower()]) + word[i + 1:]


def perturb_text(text: str, rate: float, seed: int = 0, ops: Sequence[str] = OPS) -> str:
    """Perturb a share ``rate`` of the words of ``text`` (see the module docstring).

    Args:
        text: a non-empty text; words are separated by whitespace (rejoined with single spaces
            when anything is perturbed).
        rate: the probability that a word is touched, in [0, 1].
        seed: the seed; the same ``(text, rate, seed, ops)`` always gives the same result.
        ops: the operations to choose from.

    Returns:
        the perturbed text, never empty; ``text`` itself when ``rate == 0``.
    """
    _check(rate, ops)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("perturb_text needs a non-empty text: filter empty rows out first.")
    if rate == 0:
        return text
    rng = random.Random(f"{seed}:{rate}:{','.join(ops)}:{text}")
    words = text.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if rng.random() >= rate:
            out.append(word)
            i += 1
            continue
        op = rng.choice(list(ops))
        if op == "swap" and i + 1 < len(words):
            out += [words[i + 1], word]
            i += 2
            continue
        if op == "drop" and len(out) + (len(words) - i - 1) > 0:
            i += 1
            continue
        out.append(typo(word, rng) if op == "typo" else word)
        i += 1
    return " ".join(out)


def perturb_texts(texts: Sequence[str], rate: float, seed: int = 0, ops: Sequence[str] = OPS) -> list[str]:
    """:func:`perturb_text` of each text (each text's draws depend on itself, not its position)."""
    return [perturb_text(t, rate, seed, ops) for t in texts]


def perturb_split(split: Any, rate: float, seed: int = 0, ops: Sequence[str] = OPS,
                  columns: Sequence[str] = ("text_a", "text_b")) -> Any:
    """A copy of a raw ``datasets.Dataset`` split (from ``load_task``) with ``columns`` perturbed.

    Columns that are missing or ``None`` in a row are left as they are; tokenize the result as
    usual. The labels and every other column are kept.
    """
    _check(rate, ops)

    def change(row: dict) -> dict:
        return {c: perturb_text(row[c], rate, seed, ops) for c in columns
                if c in row and isinstance(row[c], str) and row[c].strip()}

    if rate == 0:
        return split
    with quiet_progress():  # a bar per split is noise in a chapter
        return split.map(change, load_from_cache_file=False)
