"""The *Adversarial training* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import pytest

from tlutils.stats import VERDICTS

ARMS = ("plain", "FGM", "PGD", "FreeLB")
MAIN = "FGM vs plain (attack 0.5)"  # smoke: epsilon 0.5


@pytest.mark.chapter
def test_adversarial_chapter(run_chapter):
    record = run_chapter("traditional/adversarial")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]
    n = m["sizes"]["evaluation"]
    assert n > 0 and m["sizes"]["train"] > 0 and 0.0 <= m["majority_baseline"] <= 1.0
    eps = m["epsilon"]
    assert m["attack_epsilons"][0] == 0.0 and eps in m["attack_epsilons"]
    assert m["attack_epsilons"] == sorted(m["attack_epsilons"])

    # the attack by hand equals tlutils.pgd_attack; the loss climbs along the ascent; PGD(K=1) = FGM
    check = m["attack_check"]
    assert check["library_error"] < 1e-5
    path = check["loss_path"]
    assert path[-1] > path[0] and check["embedding_norm"] > 0
    assert m["pgd1_equals_fgm"] < 1e-5

    # cost per step: every method measured, with its number of forward-backward passes
    cost = m["cost"]
    assert set(cost) == set(ARMS)
    k = m["cost_K"]
    assert [cost[a]["passes"] for a in ARMS] == [1, 2, k + 1, k]
    for arm, row in cost.items():
        assert row["wall_s_per_step"] > 0 and row["cpu_s_per_step"] > 0, arm
        assert math.isclose(row["cpu_vs_plain"], row["cpu_s_per_step"] / cost["plain"]["cpu_s_per_step"])
    assert cost["plain"]["cpu_vs_plain"] == 1.0
    # the ratios themselves are measurements (they move with the machine's load): the committed
    # records carry them, a timed assertion here would only be flaky

    runs = m["runs"]
    assert set(runs) == set(ARMS)  # the smoke profile trains all four arms
    conditions = ({f"attack {e:g}" for e in m["attack_epsilons"]} | {f"text {r:g}" for r in m["settings"]["rates"]}
                  | {m["strong_attack"]})
    assert m["strong_attack"] == f"attack {eps:g}, {m['settings']['strong_steps']} steps"
    for arm, run in runs.items():
        assert set(run["accuracy"]) == conditions, arm
        assert all(0.0 <= v <= 1.0 for v in run["accuracy"].values()), arm
        assert run["train_seconds"] > 0 and isinstance(run["at_majority_class"], bool)
    assert 0 < runs["FGM"]["train_stats"]["delta_norm"] <= eps * (1 + 1e-5)
    assert runs["FGM"]["train_stats"]["adversarial_loss"] >= runs["FGM"]["train_stats"]["clean_loss"] - 1e-3
    assert m["at_majority_class"] == {a: runs[a]["at_majority_class"] for a in ARMS}

    comparisons = m["comparisons"]
    assert m["main_comparison"] == MAIN == next(iter(comparisons))
    rates = m["settings"]["rates"]
    # FGM vs plain elsewhere, PGD and FreeLB clean and at epsilon against plain and against FGM,
    # the accuracy change per text rate
    further = len(conditions) - 1 + 2 * 2 * 2 + len(rates)
    assert len(comparisons) == 1 + further
    assert {c["a"] for c in comparisons.values() if c["b"] == "FGM"} == {"PGD", "FreeLB"}
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["low"] <= c["difference"] <= c["high"], name
        assert c["n"] == n and c["method"] == "paired bootstrap" and c["b"] in ("plain", "FGM"), name
        base = c["b"]
        condition = name[len(f"{c['a']} vs {base} ("):-1]
        if condition.startswith("accuracy change, "):
            key = condition[len("accuracy change, "):]
            assert c["metric"] == "accuracy change", name
            for arm, value in ((c["a"], c["value_a"]), ("plain", c["value_b"])):
                acc = runs[arm]["accuracy"]
                assert math.isclose(value, acc[key] - acc["attack 0"], abs_tol=1e-9), name
            continue
        key = "attack 0" if condition == "clean" else condition
        assert math.isclose(c["value_a"], runs[c["a"]]["accuracy"][key], abs_tol=1e-9), name
        assert math.isclose(c["value_b"], runs[base]["accuracy"][key], abs_tol=1e-9), name
        if name == MAIN:
            assert c["p_adjusted"] is None and c["family_size"] == 1
        else:
            assert c["p_adjusted"] >= c["p_value"] and c["family_size"] == further

    seeds = m["main_over_seeds"]
    assert seeds["seeds"] == [0, 1] and seeds["n"] == 2 and seeds["verdict"] in VERDICTS
    assert seeds["accuracy"]["FGM"][0] == runs["FGM"]["accuracy"][f"attack {eps:g}"]

    stages = m["stage_seconds"]
    assert "cost per step" in stages and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= record["wall_time_s"] + 1e-6
