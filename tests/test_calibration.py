"""Properties of tlutils.calibration (ECE, reliability bins)."""

from __future__ import annotations

import numpy as np

from tlutils.calibration import expected_calibration_error, plot_reliability_diagram, reliability_bins


def _calibrated(n_per_bin: int = 100):
    """In each bin the model says c for the predicted class and is right exactly c of the time."""
    probs, labels = [], []
    for c in (0.55, 0.65, 0.75, 0.85, 0.95):
        right = int(round(c * n_per_bin))
        probs += [[c, 1 - c]] * n_per_bin
        labels += [0] * right + [1] * (n_per_bin - right)
    return np.array(probs), np.array(labels)


def test_ece_zero_when_perfectly_calibrated():
    probs, labels = _calibrated()
    assert expected_calibration_error(probs, labels) < 1e-12


def test_ece_of_overconfident_model():
    probs, labels = _calibrated()
    over = np.where(probs > 0.5, 0.99, 0.01)  # same predictions, confidence pushed to 0.99
    ece = expected_calibration_error(over, labels)
    accuracy = (over.argmax(1) == labels).mean()
    assert abs(ece - (0.99 - accuracy)) < 1e-9  # one bin: |acc - conf|


def test_bins_count_everything_and_ece_in_unit_interval():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 3)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 3, 500)
    bins = reliability_bins(probs, labels, n_bins=15)
    assert bins["count"].sum() == 500 and len(bins["edges"]) == 16
    assert 0.0 <= expected_calibration_error(probs, labels, 15) <= 1.0
    # confidence 1.0 lands in the last bin, not out of range
    assert reliability_bins(np.array([[1.0, 0.0]]), [0], 10)["count"][-1] == 1


def test_plot_reliability_diagram():
    probs, labels = _calibrated()
    ax = plot_reliability_diagram({"calibrated": (probs, labels)})
    assert "ECE 0.000" in ax.get_legend().get_texts()[1].get_text()
