"""The *Feature extraction* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import pytest

from tlutils.stats import VERDICTS

EXTRACTORS = {"cnn", "bigru", "cnn_random", "frozen_joint_cls", "frozen_joint_mean", "frozen_separate_cls",
              "frozen_separate_mean"}
SETTINGS = ["none", "dropout 0.5", "weight decay 10"]
MAIN = "frozen_vs_cnn_random"
COMPARISONS = {MAIN, "frozen_vs_cnn", "frozen_vs_bigru",
               "separate_mean_vs_joint_cls", "separate_mean_vs_joint_mean", "separate_mean_vs_separate_cls",
               "separate_mean_last_layer_vs_layer0", "joint_mean_last_layer_vs_layer0",
               "cnn_dropout_vs_none", "cnn_weight_decay_vs_none", "mlp_dropout_vs_none",
               "mlp_weight_decay_vs_none", "linear_cv_C_vs_weakest_penalty",
               "linear_vs_mlp_probe"}


@pytest.mark.chapter
def test_feature_extraction_chapter(run_chapter):
    record = run_chapter("traditional/feature_extraction")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]
    # evaluation = MRPC validation + test (64 each in smoke); nothing is chosen on it
    assert m["train_size"] == 64 and m["eval_splits"] == {"validation": 64, "test": 64} and m["eval_size"] == 128
    assert 0.3 <= m["majority_baseline"] <= 0.9

    ex = m["extractors"]
    assert set(ex) == EXTRACTORS
    hidden = 128  # tiny-bert
    for name, row in ex.items():
        for key in ("accuracy", "f1", "train_accuracy"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        assert -1.0 <= row["mcc"] <= 1.0 and isinstance(row["at_majority_class"], bool)
        assert row["seconds"] >= 0 and row["train_pairs_per_s"] > 0
    assert ex["frozen_joint_cls"]["feature_dim"] == ex["frozen_joint_mean"]["feature_dim"] == hidden
    assert ex["frozen_separate_cls"]["feature_dim"] == ex["frozen_separate_mean"]["feature_dim"] == 4 * hidden
    for view in ("joint_cls", "joint_mean", "separate_cls", "separate_mean"):
        assert ex[f"frozen_{view}"]["C"] == 0.01  # smoke: one fixed C (small/full choose by cross-validation)
    assert ex["cnn"]["feature_dim"] == ex["cnn_random"]["feature_dim"]  # same CNN, other word vectors
    assert ex["cnn_random"]["trained_parameters"] > ex["cnn"]["trained_parameters"]  # it learns word vectors

    layers = m["layer_probe"]
    assert layers["layers"] == list(range(2 + 1))  # tiny-bert: 2 layers + the embedding layer
    for view, curve in layers["accuracy"].items():
        assert len(curve) == 3 and all(0.0 <= a <= 1.0 for a in curve)
        assert len(layers["at_majority_class"][view]) == 3
        assert math.isclose(curve[-1], ex[f"frozen_{view}"]["accuracy"])  # the table's row is the last layer
    # layer 0 with CLS pooling is the same vector for every input: a constant prediction, flagged as such
    assert layers["accuracy"]["joint_cls"][0] in (m["majority_baseline"], 1 - m["majority_baseline"])
    assert layers["at_majority_class"]["joint_cls"][0] and layers["at_majority_class"]["separate_cls"][0]

    sp = m["sparsity"]
    assert sp["sizes"] == sorted(set(sp["sizes"])) and sp["sizes"][-1] == m["train_size"]
    for name in ("cnn", "bigru", "joint_cls", "separate_mean"):
        assert len(sp[name]) == len(sp["sizes"]) and all(0.0 <= a <= 1.0 for a in sp[name])
        assert all(r >= 0 for r in sp["range"][name])
        assert len(sp["at_majority_class"][name]) == len(sp["sizes"])
    assert sp["trained_repeats"] == sp["repeats"] == 1
    assert math.isclose(sp["cnn"][-1], ex["cnn"]["accuracy"])  # the full-size point is the table's run

    over = m["overfitting"]
    for model in ("cnn", "mlp_probe"):
        assert [r["setting"] for r in over[model]] == SETTINGS
        for r in over[model]:
            assert math.isclose(r["gap"], r["train_accuracy"] - r["accuracy"]) and r["train_pairs_per_s"] > 0
    assert [r["setting"] for r in over["linear_probe"]] == ["weakest penalty", "C by cross-validation"]
    l2 = over["linear_probe_l2"]
    assert l2["C"] == sorted(l2["C"]) and len(l2["train_accuracy"]) == len(l2["accuracy"]) == len(l2["C"])
    assert l2["C_cv"] in l2["C"] and over["linear_probe"][0]["C"] == max(l2["C"])
    assert over["linear_probe"][1]["C"] == l2["C_cv"]
    assert l2["train_accuracy"][-1] >= l2["train_accuracy"][0]  # a weaker penalty fits the training set better
    assert len(over["sentences"]) == 5 and all("gap" in s and "Holm" in s for s in over["sentences"])

    # every comparison has a verdict; the main one is tested alone, the others Holm-corrected as one family
    comparisons = m["comparisons"]
    assert m["main_comparison"] == MAIN and set(comparisons) == COMPARISONS
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["n"] == m["eval_size"] and c["sentence"]
        assert c["low"] <= c["difference"] <= c["high"]
        assert isinstance(c["at_majority_class"], list)
        if name == MAIN:
            assert c["p_adjusted"] is None and c["family_size"] == 1
        else:
            assert c["p_adjusted"] >= c["p_value"] and c["family_size"] == len(COMPARISONS) - 1
            assert "Holm" in c["sentence"]
    assert math.isclose(comparisons[MAIN]["value_a"], ex["frozen_separate_mean"]["accuracy"])
    assert math.isclose(comparisons[MAIN]["value_b"], ex["cnn_random"]["accuracy"])
    seeds = m["main_seed_check"]  # the main comparison against other training seeds of the CNN
    assert [r["seed"] for r in seeds] == [0, 1] and all(r["verdict"] in VERDICTS for r in seeds)
    assert math.isclose(seeds[0]["accuracy"], ex["cnn_random"]["accuracy"])
    assert seeds[0]["verdict"] == comparisons[MAIN]["verdict"]

    cache = m["cache"]
    assert cache["from_cache"] is False and cache["extract_seconds"] > 0 and cache["probe_seconds"] > 0
    assert "checks" not in m  # replaced by the comparisons
