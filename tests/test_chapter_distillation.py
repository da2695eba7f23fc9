"""The *Knowledge distillation* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import pytest

from tlutils.stats import VERDICTS

ROWS = ("from-teacher (hard labels)", "from-teacher (distilled)",
        "random small (hard labels)", "random small (distilled)")
MAIN = "random small (distilled) vs random small (hard labels) (accuracy)"


@pytest.mark.chapter
def test_distillation_chapter(run_chapter):
    record = run_chapter("traditional/distillation")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]

    sizes = m["sizes"]
    assert sizes["labelled"] > 0 and sizes["unlabelled"] > 0
    assert sizes["evaluation"] == sizes["validation"] + sizes["test"] > 0  # every score: validation + test
    assert 0.0 <= m["majority_baseline"] <= 1.0

    teacher = m["teacher"]
    for key in ("accuracy", "f1", "accuracy_on_labelled", "accuracy_on_unlabelled"):
        assert 0.0 <= teacher[key] <= 1.0
    assert -1.0 <= teacher["mcc"] <= 1.0
    assert teacher["parameters"] > 0 and teacher["samples_per_second"] > 0 and teacher["train_pairs_per_second"] > 0
    assert teacher["layers"] == 2 and m["student_layers"] == 1  # the tiny teacher -> a 1-layer student
    assert 0.0 < m["embedding_share"] < 1.0
    assert 0.0 <= m["from_teacher_untrained"]["accuracy"] <= 1.0
    assert isinstance(m["from_teacher_untrained"]["at_majority_class"], bool)

    students = m["students"]
    assert set(students) == set(ROWS)
    for name in ROWS:
        row = students[name]
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["f1"] <= 1.0 and -1.0 <= row["mcc"] <= 1.0
        assert 0 < row["parameters"] < teacher["parameters"], name
        assert row["samples_per_second"] > 0 and row["train_pairs_per_second"] > 0 and row["train_seconds"] > 0
        assert math.isclose(row["kept_fraction"], row["accuracy"] / teacher["accuracy"], rel_tol=1e-9)
        above = teacher["accuracy"] - m["majority_baseline"]
        if above > 0:
            expected = (row["accuracy"] - m["majority_baseline"]) / above
            assert math.isclose(row["kept_above_majority"], expected, rel_tol=1e-9)
        else:
            assert row["kept_above_majority"] is None
    # the two students of a kind have the same architecture
    assert students[ROWS[0]]["parameters"] == students[ROWS[1]]["parameters"]
    assert students[ROWS[2]]["parameters"] == students[ROWS[3]]["parameters"]
    assert set(m["at_majority_class"]) == {"teacher", *ROWS}
    assert all(isinstance(v, bool) for v in m["at_majority_class"].values())
    assert set(m["plans"]) == {"from-teacher", "random small"}

    # one main comparison (uncorrected), four further ones (Holm over four), all on the same pairs
    comparisons = m["comparisons"]
    assert m["main_comparison"] == MAIN and len(comparisons) == 5
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["low"] <= c["difference"] <= c["high"], name
        assert c["n"] == sizes["evaluation"] and c["method"] == "paired bootstrap", name
        assert c["sentence"].startswith(f"{c['a']} vs {c['b']}"), name
        assert math.isclose(c["difference"], c["value_a"] - c["value_b"], abs_tol=1e-12), name
        if c["metric"] in ("accuracy", "mcc"):
            scores = {**students, "teacher": teacher}
            assert math.isclose(c["value_a"], scores[c["a"]][c["metric"]], abs_tol=1e-9), name
            assert math.isclose(c["value_b"], scores[c["b"]][c["metric"]], abs_tol=1e-9), name
        if name == MAIN:
            assert c["p_adjusted"] is None and c["family_size"] == 1
        else:
            assert c["p_adjusted"] is not None and c["p_adjusted"] >= c["p_value"] and c["family_size"] == 4

    # the smoke profile reruns the main comparison with a second seed (the record profile with three)
    seeds = m["main_over_seeds"]
    assert seeds["seeds"] == [0, 1] and seeds["n"] == 2 and seeds["method"] == "paired seed t"
    assert seeds["verdict"] in VERDICTS and seeds["low"] <= seeds["difference"] <= seeds["high"]
    assert seeds["accuracy"]["distilled"][0] == students["random small (distilled)"]["accuracy"]
    assert seeds["accuracy"]["hard labels"][0] == students["random small (hard labels)"]["accuracy"]

    sweep = m["sweep"]
    assert sweep["ran"] is True  # the smoke profile runs the sweep (small skips it for time)
    assert sweep["main_point"] == [m["main"]["temperature"], m["main"]["alpha"]]
    assert len(sweep["points"]) == 6 and len(sweep["accuracy"]) == 6
    assert all(0.0 <= a <= 1.0 for a in sweep["accuracy"])
    shared = sweep["points"].index(sweep["main_point"])  # the main run is the sweep's shared point
    assert math.isclose(sweep["accuracy"][shared], students["random small (distilled)"]["accuracy"], abs_tol=1e-9)
    assert len(sweep["comparisons"]) == 5
    assert all(c["verdict"] in VERDICTS and c["family_size"] == 5 for c in sweep["comparisons"].values())

    check = m["kd_loss_check"]
    assert check["library_error"] < 1e-5
    scaled, unscaled = check["scaled (T² · KL)"], check["unscaled (KL)"]
    assert unscaled == sorted(unscaled, reverse=True) and unscaled[-1] < unscaled[0] / 20
    assert scaled[-1] > scaled[0] / 5  # the T² factor keeps the gradient's scale

    comparison = m["distilbert_comparison"]
    assert math.isclose(comparison["parameters saved"],
                        1 - students["from-teacher (distilled)"]["parameters"] / teacher["parameters"])
    assert 0.0 < comparison["parameters saved"] < 1.0

    stages = m["stage_seconds"]
    assert "teacher: fine-tuning" in stages and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= record["wall_time_s"] + 1e-6
