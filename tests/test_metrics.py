"""Task metrics against hand-computed values (tlutils.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tlutils.errors import ConfigError
from tlutils.metrics import METRICS, compute_metrics, majority_baseline

# TP = 3 (0, 1, 6), FN = 1 (2), FP = 1 (5), TN = 3 (3, 4, 7)
BINARY_LABELS = [1, 1, 1, 0, 0, 0, 1, 0]
BINARY_PREDS = [1, 1, 0, 0, 0, 1, 1, 0]


def test_binary_metrics_by_hand():
    out = compute_metrics(np.array(BINARY_PREDS), np.array(BINARY_LABELS), ("accuracy", "f1", "mcc"))
    assert out["accuracy"] == pytest.approx(6 / 8)
    assert out["f1"] == pytest.approx(0.75)  # precision 3/4, recall 3/4
    assert out["mcc"] == pytest.approx((3 * 3 - 1 * 1) / math.sqrt(4 * 4 * 4 * 4))
    assert list(out) == ["accuracy", "f1", "mcc"]
    assert all(type(v) is float for v in out.values())


def test_f1_is_the_f1_of_class_one():
    # class 1: TP 1, FP 0, FN 2 -> P 1, R 1/3, F1 0.5 (class 0 would give 0.8)
    out = compute_metrics([1, 0, 0, 0, 0], [1, 1, 1, 0, 0], ("f1",))
    assert out["f1"] == pytest.approx(0.5)


def test_macro_f1_by_hand():
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    # class 0: P 1/2 R 1/2 -> 0.5; class 1: P 2/3 R 1 -> 0.8; class 2: P 1 R 1/2 -> 2/3
    out = compute_metrics(preds, labels, ("macro_f1", "accuracy"))
    assert out["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert out["accuracy"] == pytest.approx(4 / 6)


def test_logits_are_argmaxed():
    logits = np.array([[2.0, -1.0], [0.1, 0.3], [-5.0, 5.0], [0.0, -0.2]])
    out = compute_metrics(logits, np.array([0, 1, 0, 0]), ("accuracy",))
    assert out["accuracy"] == pytest.approx(3 / 4)  # predictions 0, 1, 1, 0


def test_three_class_logits():
    logits = np.array([[0.1, 0.2, 0.9], [3.0, 0.0, 0.0], [0.0, 1.0, 0.5]])
    assert compute_metrics(logits, [2, 0, 2], ("accuracy",))["accuracy"] == pytest.approx(2 / 3)


def test_correlations_by_hand():
    # centred x = (-1, 0, 1), y = (-1, 1, 0): cov 1, both norms sqrt(2) -> r = 0.5 (ranks the same)
    out = compute_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]), ("pearson", "spearman"))
    assert out["pearson"] == pytest.approx(0.5)
    assert out["spearman"] == pytest.approx(0.5)


def test_spearman_is_rank_based_and_pearson_is_not():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    out = compute_metrics(x, x ** 3, ("pearson", "spearman"))
    assert out["spearman"] == pytest.approx(1.0)
    assert out["pearson"] < 0.99
    assert compute_metrics(x, -x, ("pearson",))["pearson"] == pytest.approx(-1.0)


def test_regression_outputs_of_shape_n_by_1():
    preds = np.array([[1.0], [2.0], [3.0]])
    out = compute_metrics(preds, np.array([1.0, 3.0, 2.0]), ("pearson", "spearman"))
    assert out == pytest.approx({"pearson": 0.5, "spearman": 0.5})


@pytest.mark.parametrize("name", ["pearson", "spearman"])
def test_constant_predictions_give_zero_not_nan(name):
    with np.errstate(all="raise"):
        value = compute_metrics(np.full(4, 2.5), np.array([0.0, 1.0, 4.0, 5.0]), (name,))[name]
    assert value == 0.0 and not math.isnan(value)


@pytest.mark.filterwarnings("ignore")
def test_constant_labels_give_finite_correlations():
    out = compute_metrics(np.array([0.5, 1.0, 4.0]), np.array([3.0, 3.0, 3.0]), ("pearson", "spearman"))
    assert all(math.isfinite(v) for v in out.values())


def test_constant_predictions_keep_classification_metrics_finite():
    out = compute_metrics([0, 0, 0, 0], [1, 0, 1, 0], ("accuracy", "f1", "mcc", "macro_f1"))
    assert out == pytest.approx({"accuracy": 0.5, "f1": 0.0, "mcc": 0.0, "macro_f1": 1 / 3})


def test_unknown_metric_names_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        compute_metrics([0, 1], [0, 1], ("accuracy", "bleu"))
    assert "'bleu'" in str(info.value)
    for name in METRICS:
        assert name in str(info.value)


@pytest.mark.parametrize("preds, labels", [([0, 1, 1], [0, 1]), ([], [])])
def test_length_mismatch_and_empty_input_are_refused(preds, labels):
    with pytest.raises(ConfigError, match="as many predictions as labels"):
        compute_metrics(np.array(preds), np.array(labels))


def test_majority_baseline():
    assert majority_baseline([0, 0, 1], [0, 1, 1, 1]) == pytest.approx(0.25)
    assert majority_baseline([2, 1, 2, 2, 0], [2, 2, 0]) == pytest.approx(2 / 3)
    assert type(majority_baseline([1], [1])) is float
