"""The *Feature extraction* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import pytest

EXTRACTORS = {"cnn", "bigru", "cnn_random", "frozen_joint_cls", "frozen_joint_mean", "frozen_separate_cls",
              "frozen_separate_mean"}
GRID = [(0.0, 0.0), (0.5, 0.0), (0.0, 10.0), (0.5, 10.0)]


@pytest.mark.chapter
def test_feature_extraction_chapter(run_chapter):
    record = run_chapter("traditional/feature_extraction")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]
    assert m["train_size"] == 64 and m["eval_size"] == 64
    assert 0.3 <= m["majority_baseline"] <= 0.9

    ex = m["extractors"]
    assert set(ex) == EXTRACTORS
    hidden = 128  # tiny-bert
    for name, row in ex.items():
        for key in ("accuracy", "f1", "train_accuracy"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        assert row["seconds"] >= 0 and 0 < row["ci95"] < 0.5
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
        assert 0 <= layers["best_layer"][view] <= 2
        assert math.isclose(curve[-1], ex[f"frozen_{view}"]["accuracy"])  # the table's row is the last layer
    # layer 0 with CLS pooling is the same vector for every input: a constant prediction
    assert layers["accuracy"]["joint_cls"][0] in (m["majority_baseline"], 1 - m["majority_baseline"])

    sp = m["sparsity"]
    assert sp["sizes"] == sorted(set(sp["sizes"])) and sp["sizes"][-1] == m["train_size"]
    for name in ("cnn", "bigru", "joint_cls", "separate_mean"):
        assert len(sp[name]) == len(sp["sizes"]) and all(0.0 <= a <= 1.0 for a in sp[name])
        assert all(r >= 0 for r in sp["range"][name])
    assert sp["trained_repeats"] == sp["repeats"] == 1
    assert math.isclose(sp["cnn"][-1], ex["cnn"]["accuracy"])  # the full-size point is the table's run

    over = m["overfitting"]
    for model in ("cnn", "mlp_probe"):
        assert [(r["dropout"], r["weight_decay"]) for r in over[model]] == GRID
        for r in over[model]:
            assert math.isclose(r["gap"], r["train_accuracy"] - r["accuracy"])
    l2 = over["linear_probe_l2"]
    assert l2["C"] == sorted(l2["C"]) and len(l2["train_accuracy"]) == len(l2["accuracy"]) == len(l2["C"])
    assert l2["train_accuracy"][-1] >= l2["train_accuracy"][0]  # a weaker penalty fits the training set better
    assert set(over["summary"]) == {"CNN extractor", "MLP probe", "linear probe (wd = 1/C)"}
    for row in over["summary"].values():
        assert row["smallest gap"] <= row["gap, no regularisation"] + 1e-12
        assert row["best accuracy"] >= row["accuracy, no regularisation"] - 1e-12
        assert isinstance(row["best clearly better"], bool)

    cache = m["cache"]
    assert cache["from_cache"] is False and cache["extract_seconds"] > 0 and cache["probe_seconds"] > 0
    assert all(isinstance(v, bool) for v in m["checks"].values())
