"""The *Knowledge distillation* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import pytest

ROWS = ("from-teacher (hard labels)", "from-teacher (distilled)",
        "random small (hard labels)", "random small (distilled)")


@pytest.mark.chapter
def test_distillation_chapter(run_chapter):
    record = run_chapter("traditional/distillation")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]

    sizes = m["sizes"]
    assert sizes["labelled"] > 0 and sizes["unlabelled"] > 0 and sizes["validation"] > 0
    assert 0.0 <= m["majority_baseline"] <= 1.0

    teacher = m["teacher"]
    for key in ("accuracy", "f1", "accuracy_on_labelled", "accuracy_on_unlabelled"):
        assert 0.0 <= teacher[key] <= 1.0
    assert teacher["parameters"] > 0 and teacher["samples_per_second"] > 0
    assert teacher["layers"] == 2 and m["student_layers"] == 1  # the tiny teacher -> a 1-layer student
    assert 0.0 < m["embedding_share"] < 1.0

    students = m["students"]
    assert set(students) == set(ROWS)
    for name in ROWS:
        row = students[name]
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["f1"] <= 1.0
        assert 0 < row["parameters"] < teacher["parameters"], name
        assert row["samples_per_second"] > 0
        assert math.isclose(row["kept_fraction"], row["accuracy"] / teacher["accuracy"], rel_tol=1e-9)
        assert len(row["accuracy_per_seed"]) == len(m["seeds"])
        assert math.isclose(row["accuracy"], sum(row["accuracy_per_seed"]) / len(m["seeds"]), rel_tol=1e-9)
        above = teacher["accuracy"] - m["majority_baseline"]
        if above > 0:
            expected = (row["accuracy"] - m["majority_baseline"]) / above
            assert math.isclose(row["kept_above_majority"], expected, rel_tol=1e-9)
        else:
            assert row["kept_above_majority"] is None
    # the two students of a kind have the same architecture
    assert students[ROWS[0]]["parameters"] == students[ROWS[1]]["parameters"]
    assert students[ROWS[2]]["parameters"] == students[ROWS[3]]["parameters"]

    gains = m["distillation_gain"]
    assert set(gains) == {"from-teacher", "random small"}
    for kind, gain in gains.items():
        expected = students[f"{kind} (distilled)"]["accuracy"] - students[f"{kind} (hard labels)"]["accuracy"]
        assert math.isclose(gain, expected, abs_tol=1e-12)
    assert m["difference_standard_error"] > 0

    t_sweep, a_sweep = m["temperature_sweep"], m["alpha_sweep"]
    assert t_sweep["temperatures"] == [1.0, 2.0, 4.0, 8.0] and len(t_sweep["accuracy"]) == 4
    assert a_sweep["alphas"] == [0.0, 0.5, 1.0] and len(a_sweep["accuracy"]) == 3
    assert t_sweep["alpha"] == m["main"]["alpha"] and a_sweep["temperature"] == m["main"]["temperature"]
    assert all(0.0 <= a <= 1.0 for a in t_sweep["accuracy"] + a_sweep["accuracy"])
    # the shared point (T = 2, alpha = 0.5) is one run, reported in both sweeps
    assert t_sweep["accuracy"][1] == a_sweep["accuracy"][1]

    check = m["kd_loss_check"]
    assert check["library_error"] < 1e-5
    scaled, unscaled = check["scaled (T² · KL)"], check["unscaled (KL)"]
    assert unscaled == sorted(unscaled, reverse=True) and unscaled[-1] < unscaled[0] / 20
    assert scaled[-1] > scaled[0] / 5  # the T² factor keeps the gradient's scale

    comparison = m["distilbert_comparison"]
    assert math.isclose(comparison["parameters saved"],
                        1 - students["from-teacher (distilled)"]["parameters"] / teacher["parameters"])
    assert 0.0 < comparison["parameters saved"] < 1.0
