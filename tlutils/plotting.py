"""Figures every chapter reuses: learning curves, confusion matrices, comparison bars; and the
one switch that makes every chapter's figures SVG and PNG at once (:func:`set_figure_formats`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from tlutils.train import History


FIGURE_FORMATS = ("svg", "png")
"""What every chapter's figures are saved as: SVG (vector, for slides and the HTML book) and PNG."""


def set_figure_formats(*formats: str) -> None:
    """Make the notebook's inline figures carry each of ``formats`` (default :data:`FIGURE_FORMATS`).

    Every chapter calls it once in its setup cell, so each figure output holds an ``image/svg+xml``
    and an ``image/png`` rendering of the same drawing: the HTML book shows one of them
    (myst-nb's priority: SVG first), and ``python -m tlutils.gallery`` exports both for teaching
    without running anything again. The SVGs are made reproducible: a fixed ``svg.hashsalt`` for
    their element ids and no creation date, so an unchanged figure is byte-for-byte the same file
    in every build. Outside a running IPython kernel (a script, a test) it does nothing.

    Args:
        formats: matplotlib-inline format names (``"svg"``, ``"png"``, ``"retina"``, ``"pdf"``, ...).
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with every notebook kernel
        return
    if get_ipython() is None:
        return
    import matplotlib
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    formats = formats or FIGURE_FORMATS
    matplotlib.rcParams["svg.hashsalt"] = "tlutils"
    undated = {} if {"jpg", "jpeg"} & set(formats) else {"metadata": {"Date": None}}  # JPEG takes no metadata
    set_matplotlib_formats(*formats, **undated)


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) < window:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_learning_curves(histories: Mapping[str, "History"], metric: Optional[str] = None,
                         smooth: int = 5) -> "Figure":
    """Training loss per step (moving average over ``smooth`` steps) and the evaluation
    metric per epoch, one line per run: ``plot_learning_curves({"pretrained": h1, "scratch": h2})``."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, history in histories.items():
        steps = [s["step"] for s in history.steps]
        losses = _smooth([s["loss"] for s in history.steps], smooth)
        ax_loss.plot(steps[len(steps) - len(losses):], losses, label=name)
        key = f"eval_{metric or history.main_metric}"
        epochs = [e["epoch"] for e in history.epochs if key in e]
        if epochs:
            ax_metric.plot(epochs, [e[key] for e in history.epochs if key in e], marker="o", label=name)
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", title="Training loss")
    name = metric or next(iter(histories.values())).main_metric
    ax_metric.set(xlabel="epoch", ylabel=f"validation {name}", title=f"Validation {name}")
    ax_metric.xaxis.get_major_locator().set_params(integer=True)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_confusion_matrix(labels: Sequence[int], predictions: Sequence[int],
                          label_names: Sequence[str], ax: Optional["Axes"] = None,
                          title: str = "Confusion matrix") -> "Axes":
    """Counts of (gold, predicted) pairs, annotated, rows = gold labels."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    ax = ax or plt.subplots(figsize=(4, 3.6))[1]
    matrix = confusion_matrix(labels, predictions, labels=list(range(len(label_names))))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ticks = range(len(label_names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=label_names, yticklabels=label_names,
           xlabel="predicted", ylabel="gold", title=title)
    return ax


def plot_comparison(values: Mapping[str, float], ylabel: str, *,
                    errors: Optional[Mapping[str, float]] = None, baseline: Optional[float] = None,
                    baseline_label: str = "majority class", ax: Optional["Axes"] = None,
                    title: str = "") -> "Axes":
    """Bars of one metric per method, value-labelled, with an optional baseline line."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5, 3.6))[1]
    names = list(values)
    heights = [values[n] for n in names]
    yerr = [errors.get(n, 0.0) for n in names] if errors else None
    bars = ax.bar(names, heights, yerr=yerr, capsize=4, color=plt.cm.tab10.colors[: len(names)])
    ax.bar_label(bars, fmt="%.3f", padding=2)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label=f"{baseline_label} ({baseline:.3f})")
        ax.legend(loc="lower right")
    shown = heights + ([baseline] if baseline is not None else [])
    ax.set(ylabel=ylabel, title=title)
    if all(0.0 <= v <= 1.0 for v in shown):  # scores: zoom on the differences, stay in [0, 1.05]
        ax.set_ylim(max(0.0, min(shown) - 0.15), min(1.05, max(shown) + 0.1))
    return ax
