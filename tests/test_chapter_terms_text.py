"""The chapter *Terms I: from text to a trained classifier*, executed in the smoke profile."""

from __future__ import annotations

import pytest

from tlutils.stats import VERDICTS


@pytest.mark.chapter
def test_terms_text_chapter(run_chapter):
    record = run_chapter("concepts/terms_text")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 120
    m = record["metrics"]

    tok = m["tokenization"]
    assert tok["types_whitespace"] > tok["types_regex"] > 0 and 0 < tok["glued_fraction"] < 1

    assert m["embedding"]["static_cosine_min"] > 0.9999  # one row of the table, whatever the context

    wp = m["wordpiece"]
    unk = wp["unk_per_word"]
    assert all(b <= a + 1e-12 for a, b in zip(unk, unk[1:])), unk  # never grows with the vocabulary
    pieces = wp["pieces_per_word"]
    assert all(b <= 1.01 * a for a, b in zip(pieces, pieces[1:])) and pieces[-1] < pieces[0]  # flat once saturated
    assert wp["bpe_unk_per_word"] == 0.0 and wp["bpe_pieces_per_word"] >= 1.0

    att = m["attention"]
    assert att["max_abs_diff"] < 1e-5 and att["layers"] == 2 and att["heads"] == 2

    mask = m["masking"]  # smoke: a few hundred chosen tokens, so loose bounds
    assert 0.10 < mask["chosen"] < 0.20 and 0.65 < mask["mask"] < 0.92
    assert 0.02 < mask["random"] < 0.2 and 0.02 < mask["unchanged"] < 0.2
    assert abs(mask["mask"] + mask["random"] + mask["unchanged"] - 1) < 1e-9
    assert mask["max_abs_z"] < 4 and mask["n_chosen"] > 100
    assert mask["padding"]["with mask"] < 1e-4 < mask["padding"]["without mask"]

    lm = m["language_model"]
    assert lm["bigram"]["natural"] < lm["bigram"]["shuffled"]
    assert lm["neural"]["natural"] > 1 and lm["steps"] == 20

    vocab = m["vocabulary"]
    assert set(vocab["oov"]) == {"amazon", "mnli"}
    assert set(vocab["oov"]["amazon"]) == {"books", "dvd", "electronics", "kitchen"}
    assert len(vocab["oov"]["mnli"]) == 5
    assert all(0 <= v <= 1 for task in vocab["oov"].values() for row in task.values() for v in row.values())
    for gap in vocab["diagonal_gap"].values():
        assert gap["in_domain"] < gap["cross_domain"]
    covered = [row["validation"] for row in vocab["coverage"]]
    assert covered == sorted(covered)

    assert lm["best_k"] in (1.0, 0.1, 0.01, 0.001) and lm["test_sentences"] == 2 * 64

    ls = m["label_smoothing"]
    assert ls["task"] == "mrpc" and ls["train_examples"] == 64 and ls["validation_examples"] == 64
    assert abs(ls["optimum_gold_probability"] - (1 - 0.1 + 0.1 / 2)) < 0.01
    for name in ("cross-entropy", "label smoothing 0.1"):
        assert 0.0 <= ls[name]["ece"] <= 1.0 and 0.0 <= ls[name]["accuracy"] <= 1.0
        assert 0.5 <= ls[name]["mean_confidence"] <= 1.0
        assert isinstance(ls[name]["at_majority_class"], bool) and ls[name]["pairs_per_second"] > 0

    ce = m["cross_entropy"]
    assert ce["ce_identity_error"] < 1e-5 and abs(ce["stable_at_1e4"] - 1e4) < 1

    # every comparison carries a verdict: the main one (label smoothing's ECE) and the Holm families
    comparisons = m["comparisons"]
    assert m["main_comparison"] == "label smoothing 0.1 vs cross-entropy (calibration_score)"
    assert len(comparisons) == 3 + 2
    assert comparisons[m["main_comparison"]]["p_adjusted"] is None
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["low"] <= c["high"], name
        if name != m["main_comparison"]:
            assert c["p_adjusted"] >= c["p_value"] and c["family_size"] in (1, 3), name
