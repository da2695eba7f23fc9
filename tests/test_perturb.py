"""Properties of the seeded text perturber: deterministic, identity at rate 0, never empty."""

from __future__ import annotations

from collections import Counter

import pytest

from tlutils.errors import ConfigError
from tlutils.perturb import OPS, perturb_split, perturb_text, perturb_texts, typo

TEXTS = ["The company said 42 shares were sold on Monday.",
         "Amrozi accused his brother , whom he called \" the witness \" , of deliberately distorting his evidence .",
         "yes", "a b", "  spaced   out\ttext \n"]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("rate", [0.1, 0.5, 1.0])
def test_the_same_seed_gives_the_same_text(text, rate):
    assert perturb_text(text, rate, seed=7) == perturb_text(text, rate, seed=7)


def test_a_text_is_perturbed_the_same_wherever_it_stands():
    assert perturb_texts(TEXTS, 0.3, seed=1)[1] == perturb_texts(TEXTS[1:2], 0.3, seed=1)[0]


def test_other_seeds_give_other_texts():
    long = " ".join(f"word{i}" for i in range(60))
    assert len({perturb_text(long, 0.3, seed=s) for s in range(5)}) == 5


@pytest.mark.parametrize("text", TEXTS)
def test_rate_zero_is_the_identity(text):
    assert perturb_text(text, 0.0, seed=3) == text  # whitespace included


@pytest.mark.parametrize("ops", [("drop",), OPS, ("typo", "drop")])
@pytest.mark.parametrize("text", TEXTS)
def test_never_empty(text, ops):
    for seed in range(30):
        out = perturb_text(text, 1.0, seed=seed, ops=ops)
        assert out.strip(), (text, seed)


def test_rate_one_with_typos_changes_every_word():
    text = "paraphrase detection needs robust models aa"
    out = perturb_text(text, 1.0, seed=0, ops=("typo",))
    assert len(out.split()) == len(text.split())
    assert all(a != b for a, b in zip(out.split(), text.split()))
    assert all(typo(w, __import__("random").Random(s)) != w for w in ("a", "aa", "ab", "word") for s in range(20))


def test_swaps_keep_the_words_and_drops_remove_some():
    text = " ".join(f"w{i}" for i in range(40))
    swapped = perturb_text(text, 0.5, seed=2, ops=("swap",))
    assert Counter(swapped.split()) == Counter(text.split()) and swapped != text
    dropped = perturb_text(text, 0.5, seed=2, ops=("drop",)).split()
    assert 0 < len(dropped) < 40 and dropped == [w for w in text.split() if w in set(dropped)]  # order kept


def test_the_share_of_touched_words_follows_the_rate():
    text = " ".join(f"word{i}" for i in range(2000))
    out = perturb_text(text, 0.2, seed=0, ops=("typo",)).split()
    changed = sum(a != b for a, b in zip(out, text.split())) / 2000
    assert 0.17 < changed < 0.23


@pytest.mark.parametrize("bad", [dict(rate=-0.1), dict(rate=1.5), dict(rate=0.1, ops=("shout",)),
                                 dict(rate=0.1, ops=())])
def test_bad_settings_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError) as err:
        perturb_text("some text", **bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_input_is_refused(text):
    with pytest.raises(ConfigError, match="non-empty"):
        perturb_text(text, 0.1)


def test_perturb_split_changes_only_the_text_columns():
    from datasets import Dataset

    split = Dataset.from_list([{"id": str(i), "text_a": TEXTS[0], "text_b": TEXTS[1], "label": i % 2}
                               for i in range(6)])
    out = perturb_split(split, 0.5, seed=0)
    assert out["label"] == split["label"] and out["id"] == split["id"]
    assert out["text_a"][0] == perturb_text(TEXTS[0], 0.5, seed=0) != TEXTS[0]
    assert perturb_split(split, 0.0) is split
