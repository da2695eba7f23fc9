"""Calibration: does a classifier's confidence match its accuracy?

A model is *calibrated* when, among the predictions it makes with confidence 0.8, 80% are
right. :func:`expected_calibration_error` measures the gap over confidence bins and
:func:`plot_reliability_diagram` draws it. The chapter *Terms I: from text to a trained
classifier* (section *Label smoothing*) uses both to compare training with and without label
smoothing.

Reference: Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017),
https://arxiv.org/abs/1706.04599 (ECE: their eq. (3); reliability diagrams: their figure 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def reliability_bins(probs: np.ndarray, labels: Sequence[int], n_bins: int = 10) -> dict[str, np.ndarray]:
    """Confidence, accuracy and count of the predictions in ``n_bins`` equal-width bins.

    Args:
        probs: predicted class probabilities (rows sum to 1).
        labels: gold class ids.
        n_bins: bins over [0, 1]; a confidence ``c`` falls in bin ``min(floor(c * n_bins), n_bins - 1)``.

    Shapes:
        probs ``(N, C)``, labels ``(N,)``; every returned array ``(n_bins,)``.

    Returns:
        ``confidence`` (mean top-class probability per bin), ``accuracy`` (fraction correct
        per bin), ``count`` and the bin ``edges`` (``(n_bins + 1,)``); empty bins hold NaN.
    """
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    index = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        acc = np.bincount(index, weights=correct.astype(float), minlength=n_bins) / count
    return {"confidence": conf, "accuracy": acc, "count": count, "edges": np.linspace(0, 1, n_bins + 1)}


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], n_bins: int = 10) -> float:
    """ECE: ``Σ_b (n_b / N) |accuracy_b - confidence_b|`` over equal-width confidence bins.

    Shapes:
        probs ``(N, C)``, labels ``(N,)``.

    Returns:
        a float in [0, 1]; 0 when, in every bin, the mean confidence equals the accuracy.

    Reference: Guo et al. (2017), https://arxiv.org/abs/1706.04599, eq. (3).
    """
    bins = reliability_bins(probs, labels, n_bins)
    full = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][full] - bins["confidence"][full])
    return float((bins["count"][full] * gaps).sum() / bins["count"].sum())


def plot_reliability_diagram(runs: Mapping[str, tuple[np.ndarray, Sequence[int]]], n_bins: int = 10,
                             ax: Optional["Axes"] = None, title: str = "Reliability diagram") -> "Axes":
    """Accuracy against confidence per bin, one line per run, with the diagonal of perfect
    calibration and each run's ECE in the legend: ``plot_reliability_diagram({"CE": (probs, labels)})``.

    Points below the diagonal are over-confident bins, points above under-confident ones;
    marker area grows with the number of predictions in the bin.
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(4.6, 4.2))[1]
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfectly calibrated")
    for name, (probs, labels) in runs.items():
        bins = reliability_bins(probs, labels, n_bins)
        full = bins["count"] > 0
        ece = expected_calibration_error(probs, labels, n_bins)
        sizes = 300 * bins["count"][full] / bins["count"].sum()
        line, = ax.plot(bins["confidence"][full], bins["accuracy"][full], marker="", label=f"{name} (ECE {ece:.3f})")
        ax.scatter(bins["confidence"][full], bins["accuracy"][full], s=sizes, color=line.get_color(), alpha=0.7)
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="confidence (top-class probability)", ylabel="accuracy",
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return ax
