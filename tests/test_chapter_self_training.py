"""The *Self-training* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tlutils.stats import VERDICTS

ARMS = ("supervised", "supervised + noise", "self-training", "noisy student")
FAILURES = ("good teacher, confident and balanced", "good teacher, threshold 0",
            "bad teacher, confident and balanced", "bad teacher, threshold 0")


@pytest.mark.chapter
def test_self_training_chapter(run_chapter):
    record = run_chapter("traditional/self_training")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]

    sizes, seeds = m["sizes"], m["seeds"]
    budgets = sizes["budgets"]
    assert sizes["train"] > max(budgets) and sizes["evaluation"] > 0 and len(seeds) == sizes["seeds"] >= 2
    assert 0.0 <= m["majority_baseline"] <= 1.0 and math.isclose(sum(m["class_shares_train"]), 1.0)
    settings = m["settings"]
    assert 0.0 <= settings["threshold"] <= 1.0 and settings["main_budget"] in budgets

    # the curve: every arm, every budget, one accuracy per seed, with its seed interval
    curve = m["curve"]
    assert set(curve) == {str(b) for b in budgets}
    for b in budgets:
        for arm in ARMS:
            row = curve[str(b)][arm]
            assert len(row["accuracy"]) == len(seeds) and all(0.0 <= a <= 1.0 for a in row["accuracy"])
            assert math.isclose(row["mean"], float(np.mean(row["accuracy"])), abs_tol=1e-12)
            assert row["low"] <= row["mean"] <= row["high"] and row["n"] == len(seeds)
        assert 0.0 <= m["teacher_on_pool"][str(b)] <= 1.0
    assert set(m["at_majority_class"]) == {f"{arm} at {b}" for b in budgets for arm in ARMS}

    # rounds: round 0 is the teacher; each student round records what it kept, measured on hidden labels
    for b in budgets:
        for arm in ("self-training", "noisy student"):
            for history in m["rounds"][str(b)][arm]:
                assert [r["round"] for r in history] == list(range(settings["rounds"] + 1))
                assert history[0]["pseudo_labels"] == 0
                for r in history[1:]:
                    assert 0 <= r["pseudo_labels"] <= sizes["train"] - b and sum(r["per_class"]) == r["pseudo_labels"]
                    assert (r["pseudo_label_accuracy"] is None) == (r["pseudo_labels"] == 0)

    # one main comparison over seeds (uncorrected), the further ones Holm-corrected as one family
    comparisons = m["comparisons"]
    main = comparisons[m["main_comparison"]]
    b0 = settings["main_budget"]
    assert m["main_comparison"] == f"self-training ({b0} labels) vs supervised ({b0} labels)"
    assert main["p_adjusted"] is None and main["method"] == "paired seed t" and main["n"] == len(seeds)
    assert math.isclose(main["value_a"], curve[str(b0)]["self-training"]["mean"], abs_tol=1e-12)
    assert math.isclose(main["value_b"], curve[str(b0)]["supervised"]["mean"], abs_tol=1e-12)
    family = len(budgets) - 1 + 2 * len(budgets)
    assert len(comparisons) == 1 + family
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["low"] <= c["difference"] <= c["high"], name
        assert c["sentence"].startswith(f"{c['a']} vs {c['b']}"), name
        if name != m["main_comparison"]:
            assert c["family_size"] == family and c["p_adjusted"] >= c["p_value"], name
    on_examples = m["main_on_examples"]
    assert on_examples["method"] == "paired bootstrap" and on_examples["n"] == sizes["evaluation"]
    assert on_examples["verdict"] in VERDICTS

    # confirmation bias: four settings, every seed followed round by round, one comparison each
    bias = m["confirmation_bias"]
    catch_up = "bad teacher's last student vs clean labels"
    assert set(bias["runs"]) == set(FAILURES) == set(bias["drift"]) == set(bias["comparisons"]) - {catch_up}
    for name in FAILURES:
        runs = bias["runs"][name]
        assert len(runs) == len(seeds) and all(len(run) == settings["rounds"] + 1 for run in runs)
        assert all(0.0 <= r["score"] <= 1.0 for run in runs for r in run)
        c = bias["comparisons"][name]
        assert c["family_size"] == 5 and c["verdict"] in VERDICTS
        assert math.isclose(c["value_b"], float(np.mean([run[0]["score"] for run in runs])), abs_tol=1e-12)
    c = bias["comparisons"][catch_up]
    assert c["family_size"] == 5 and c["b"] == "teacher on clean labels"
    assert math.isclose(c["value_a"], bias["comparisons"]["bad teacher, confident and balanced"]["value_a"])
    assert math.isclose(c["value_b"], bias["comparisons"]["good teacher, confident and balanced"]["value_b"])
    for run in bias["runs"]["good teacher, threshold 0"]:  # threshold 0, no balance: the whole pool, every round
        assert all(r["pseudo_labels"] == run[1]["pseudo_labels"] > 0 for r in run[1:])

    # the end-to-end round through fit
    e2e = m["e2e"]
    assert e2e["labelled"] > 0 and e2e["pool"] > 0 and e2e["steps"] > 0 and 0 <= e2e["kept"] <= e2e["pool"]
    assert (e2e["pseudo_label_accuracy"] is None) == (e2e["kept"] == 0)
    assert e2e["comparison"]["n"] == e2e["evaluation"] and e2e["comparison"]["verdict"] in VERDICTS
    assert math.isclose(e2e["comparison"]["value_a"], e2e["student"]["accuracy"], abs_tol=1e-12)
    assert set(e2e["at_majority_class"]) == {"teacher", "student"}

    stages = m["stage_seconds"]
    assert "label-budget curve: heads on cached features" in stages and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= record["wall_time_s"] + 1e-6
