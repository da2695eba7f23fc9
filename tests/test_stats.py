"""tlutils.stats: intervals that cover, verdicts that follow them, Holm that controls the family."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, matthews_corrcoef

from tlutils.errors import ConfigError
from tlutils.stats import (Comparison, at_majority_class, compare, compare_seeds, holm, mcnemar,
                           seed_interval, verdict)


def two_arms(rng, n: int, acc_a: float, acc_b: float, shared: float = 0.6):
    """Binary labels and two classifiers whose errors are correlated (as real arms' are).

    With probability ``shared`` an example's correctness is the same draw for both arms.
    """
    y = rng.integers(0, 2, n)
    common = rng.random(n)
    own_a, own_b = rng.random(n), rng.random(n)
    use_common = rng.random(n) < shared
    right_a = np.where(use_common, common, own_a) < acc_a
    right_b = np.where(use_common, common, own_b) < acc_b
    return y, np.where(right_a, y, 1 - y), np.where(right_b, y, 1 - y)


def test_paired_bootstrap_interval_covers_the_true_difference():
    """Over 200 simulated evaluation sets the 95% interval holds the true difference ~95%."""
    rng = np.random.default_rng(0)
    true_diff, hits = 0.05, 0
    for rep in range(200):
        y, a, b = two_arms(rng, 400, 0.80, 0.75)
        c = compare(y, a, b, n_resamples=500, seed=rep)
        hits += c.low <= true_diff <= c.high
    assert 0.90 <= hits / 200 <= 0.99


def test_pairing_narrows_the_interval_when_errors_are_shared():
    rng = np.random.default_rng(1)
    y, a, b = two_arms(rng, 400, 0.80, 0.78, shared=0.9)
    c = compare(y, a, b)
    unpaired_half = 1.96 * np.sqrt(2 * 0.79 * 0.21 / 400)  # two independent binomial SEs
    assert (c.high - c.low) / 2 < 0.6 * unpaired_half


def test_false_positive_rate_at_no_difference_is_about_alpha():
    rng = np.random.default_rng(2)
    resolved = sum(compare(*two_arms(rng, 300, 0.75, 0.75), n_resamples=400, seed=r).verdict != "not resolved"
                   for r in range(200))
    assert resolved / 200 <= 0.10


def test_verdicts_follow_the_sign_and_the_interval():
    rng = np.random.default_rng(3)
    y, a, b = two_arms(rng, 2000, 0.85, 0.70)
    c = compare(y, a, b, names=("full", "head only"))
    assert c.verdict == "A better" and c.winner == "full" and c.low > 0
    assert compare(y, b, a).verdict == "B better"
    same = compare(y, a, a)
    assert same.verdict == "not resolved" and same.difference == 0 and same.winner is None
    assert verdict(a, b, labels=y) == "A better"
    assert "full better" in c.sentence() and "2000 paired examples" in c.sentence()
    assert "not resolved at this budget" in same.sentence()


@pytest.mark.parametrize("metric,reference", [("f1", f1_score), ("mcc", matthews_corrcoef)])
def test_vectorised_f1_and_mcc_match_sklearn(metric, reference):
    rng = np.random.default_rng(4)
    y, a, b = two_arms(rng, 300, 0.8, 0.7)
    c = compare(y, a, b, metric=metric)
    assert c.value_a == pytest.approx(reference(y, a)) and c.value_b == pytest.approx(reference(y, b))
    generic = compare(y, a, b, metric=lambda t, p: reference(t, p), n_resamples=300)
    assert generic.difference == pytest.approx(c.difference)
    assert abs(generic.low - c.low) < 0.03  # same bootstrap distribution, fewer samples


def test_logits_are_argmaxed_and_mismatched_lengths_rejected():
    y = np.array([0, 1, 1, 0])
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert compare(y, logits, y).value_a == 1.0
    with pytest.raises(ConfigError, match="same examples"):
        compare(y, y[:3], y)


def test_mcnemar_counts_only_discordant_examples():
    y = np.zeros(100, int)
    a = np.zeros(100, int)
    b = np.zeros(100, int)
    b[:20] = 1  # B wrong on 20 examples A gets right
    out = mcnemar(y, a, b)
    assert out["a_only"] == 20 and out["b_only"] == 0 and out["p_value"] < 1e-5
    assert mcnemar(y, a, a)["p_value"] == 1.0


def test_seed_interval_uses_student_t():
    s = seed_interval([0.80, 0.82, 0.84])
    assert s["mean"] == pytest.approx(0.82) and s["sd"] == pytest.approx(0.02)
    assert s["high"] - s["mean"] == pytest.approx(4.303 * 0.02 / np.sqrt(3), rel=1e-3)
    assert seed_interval([0.7])["sd"] == 0.0


def test_seed_t_interval_coverage():
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(400):
        a = 0.80 + rng.normal(0, 0.02, 3)
        b = 0.78 + rng.normal(0, 0.02, 3)
        c = compare_seeds(a, b, paired=False)
        hits += c.low <= 0.02 <= c.high
    assert 0.90 <= hits / 400 <= 0.99


def test_compare_seeds_verdicts_and_errors():
    c = compare_seeds([0.85, 0.86, 0.87], [0.70, 0.71, 0.73], names=("full", "lora"))
    assert c.verdict == "A better" and "3 seeds" in c.sentence()
    assert compare_seeds([0.8, 0.7, 0.9], [0.75, 0.85, 0.8]).verdict == "not resolved"
    assert compare_seeds([0.8, 0.8], [0.7, 0.7]).verdict == "A better"  # no spread, exact
    with pytest.raises(ConfigError, match="same seeds"):
        compare_seeds([0.8, 0.7, 0.9], [0.7, 0.8])
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        compare_seeds([0.8], [0.7])


def test_pooled_runs_are_named_for_what_they_are():
    """Two targets x three seeds pooled are six runs, not six seeds; the name survives Holm."""
    c = compare_seeds([0.85, 0.86, 0.87, 0.80, 0.82, 0.81], [0.70, 0.71, 0.73, 0.75, 0.74, 0.76],
                      unit="runs (dvd and kitchen x 3 seeds)")
    assert "6 runs (dvd and kitchen x 3 seeds)" in c.sentence() and "seeds)" in c.as_dict()["sentence"]
    assert "6 seeds" not in c.sentence() and "6 runs" in holm([c])[0].sentence()


def test_holm_adjusts_step_down_and_can_unresolve():
    def c(p, d=0.05):
        return Comparison("a", "b", "accuracy", 0.8, 0.75, d, 0.01, 0.09, p, 400, "paired bootstrap")

    out = holm([c(0.01), c(0.04), c(0.03)])
    assert [x.p_adjusted for x in out] == pytest.approx([0.03, 0.06, 0.06])
    assert [x.verdict for x in out] == ["A better", "not resolved", "not resolved"]
    assert all(x.family_size == 3 for x in out) and "Holm-adjusted p = 0.03 over 3" in out[0].sentence()
    assert "p < 0.001" in holm([c(0.0)])[0].sentence()  # a bootstrap p of 0 is "below its resolution"


def test_holm_controls_the_family_wise_error():
    rng = np.random.default_rng(6)
    any_false = 0
    for rep in range(100):
        family = [compare(*two_arms(rng, 200, 0.7, 0.7), n_resamples=300, seed=rep * 10 + k) for k in range(5)]
        any_false += any(x.verdict != "not resolved" for x in holm(family))
    assert any_false / 100 <= 0.10


def test_as_dict_is_json_ready_with_verdict_and_sentence():
    y = np.array([0, 1] * 50)
    d = compare(y, y, 1 - y).as_dict()
    json.dumps(d)
    assert d["verdict"] == "A better" and d["sentence"].endswith("A better.")


def test_majority_class_detection():
    y = np.array([1] * 68 + [0] * 32)
    assert at_majority_class(np.ones(100, int), y)
    assert not at_majority_class(y, y)
    noise = np.random.default_rng(7).integers(0, 2, 100)
    assert at_majority_class(noise, np.random.default_rng(8).integers(0, 2, 100), min_mcc=0.5)
