"""Figures: learning curves, confusion matrices, comparison bars (tlutils.plotting)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tlutils.plotting import plot_comparison, plot_confusion_matrix, plot_learning_curves  # noqa: E402
from tlutils.train import History  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _history(n_steps: int, accuracies: list[float], offset: float = 0.0) -> History:
    steps = [{"step": i + 1, "loss": 1.0 / (i + 1) + offset} for i in range(n_steps)]
    epochs = [{"epoch": e + 1, "eval_accuracy": a, "eval_f1": a - 0.1} for e, a in enumerate(accuracies)]
    return History(task="mrpc", main_metric="accuracy", steps=steps, epochs=epochs)


def test_learning_curves_draw_one_line_per_run():
    histories = {"pretrained": _history(12, [0.7, 0.8, 0.82]), "scratch": _history(12, [0.6, 0.65, 0.66], 0.5)}
    fig = plot_learning_curves(histories)
    assert isinstance(fig, Figure)
    ax_loss, ax_metric = fig.axes
    assert [line.get_label() for line in ax_loss.get_lines()] == ["pretrained", "scratch"]
    assert [line.get_label() for line in ax_metric.get_lines()] == ["pretrained", "scratch"]
    x, y = ax_metric.get_lines()[1].get_data()
    assert list(x) == [1, 2, 3] and list(y) == pytest.approx([0.6, 0.65, 0.66])
    assert ax_metric.get_ylabel() == "validation accuracy"
    assert len(ax_loss.get_legend().get_texts()) == 2


def test_learning_curves_smooth_the_loss_and_align_it_with_the_last_steps():
    history = _history(10, [0.7])
    fig = plot_learning_curves({"run": history}, smooth=5)
    x, y = fig.axes[0].get_lines()[0].get_data()
    losses = np.array([s["loss"] for s in history.steps])
    assert list(x) == list(range(5, 11))  # 10 steps, window 5 -> 6 averages ending at steps 5..10
    assert y == pytest.approx([losses[i:i + 5].mean() for i in range(6)])
    raw = plot_learning_curves({"run": history}, smooth=1).axes[0].get_lines()[0].get_data()
    assert list(raw[0]) == list(range(1, 11)) and raw[1] == pytest.approx(losses)


def test_learning_curves_plot_the_chosen_metric():
    fig = plot_learning_curves({"a": _history(3, [0.7, 0.9])}, metric="f1")
    line = fig.axes[1].get_lines()[0]
    assert list(line.get_ydata()) == pytest.approx([0.6, 0.8])
    assert fig.axes[1].get_ylabel() == "validation f1"


def test_runs_without_evaluation_get_no_metric_line():
    evaluated = _history(6, [0.7, 0.8])
    unevaluated = History(task="mrpc", main_metric="accuracy", steps=evaluated.steps, epochs=[{"epoch": 1}])
    fig = plot_learning_curves({"eval": evaluated, "no-eval": unevaluated})
    assert len(fig.axes[0].get_lines()) == 2
    assert [line.get_label() for line in fig.axes[1].get_lines()] == ["eval"]


def test_confusion_matrix_counts_with_gold_rows():
    labels = [0, 0, 0, 1, 2]
    preds = [1, 1, 0, 1, 2]  # matrix [[1, 2, 0], [0, 1, 0], [0, 0, 1]]
    ax = plot_confusion_matrix(labels, preds, ["entailment", "neutral", "contradiction"])
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(ax.texts) == 9
    assert texts == {(0, 0): "1", (0, 1): "2", (0, 2): "0", (1, 0): "0", (1, 1): "1", (1, 2): "0",
                     (2, 0): "0", (2, 1): "0", (2, 2): "1"}
    assert np.asarray(ax.images[0].get_array()).tolist() == [[1, 2, 0], [0, 1, 0], [0, 0, 1]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["entailment", "neutral", "contradiction"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "gold")


def test_confusion_matrix_includes_classes_never_seen():
    fig, ax = plt.subplots()
    out = plot_confusion_matrix([0, 0], [0, 0], ["negative", "positive"], ax=ax, title="t")
    assert out is ax and ax.get_title() == "t"
    assert len(ax.texts) == 4
    assert sorted(t.get_text() for t in ax.texts) == ["0", "0", "0", "2"]


def _bars(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)][0]


def test_comparison_draws_one_labelled_bar_per_method():
    values = {"scratch": 0.68, "frozen": 0.71, "fine-tuned": 0.84}
    ax = plot_comparison(values, "accuracy", title="MRPC")
    bars = _bars(ax)
    assert [b.get_height() for b in bars] == pytest.approx(list(values.values()))
    assert [t.get_text() for t in ax.texts] == ["0.680", "0.710", "0.840"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(values)
    assert ax.get_legend() is None and not ax.get_lines()
    assert ax.get_ylabel() == "accuracy" and ax.get_title() == "MRPC"


def test_comparison_baseline_and_error_bars():
    values = {"a": 0.7, "b": 0.8}
    ax = plot_comparison(values, "accuracy", errors={"a": 0.02}, baseline=0.68)
    assert len(_bars(ax)) == 2
    baseline = ax.get_lines()[-1]
    assert list(baseline.get_ydata()) == [0.68, 0.68]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["majority class (0.680)"]
    assert len(ax.collections) == 1  # the error bars
    low, high = ax.get_ylim()
    assert low <= 0.68 and high >= 0.8


@pytest.mark.parametrize("values, baseline", [
    ({"pretrained": 0.84, "scratch": 0.69}, None),
    ({"pretrained": 0.84, "scratch": 0.69}, 0.68),
    ({"pretrained": 0.55, "scratch": 0.52}, 0.68),  # baseline above every bar
    ({"pretrained": 0.35, "scratch": -0.08}, None),  # negative MCC / correlation
    ({"bf16": 412.0, "fp32": 198.0}, None),  # not a score: samples/s
])
def test_comparison_keeps_every_value_and_the_baseline_in_view(values, baseline):
    ax = plot_comparison(values, "score", baseline=baseline)
    low, high = ax.get_ylim()
    assert low < high
    for value in [*values.values(), *([baseline] if baseline is not None else [])]:
        assert low <= value <= high
