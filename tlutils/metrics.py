"""Task metrics through scikit-learn and SciPy (``evaluate.load`` needs the network).

References: Matthews correlation as GLUE reports it for CoLA (Wang et al., 2019,
https://arxiv.org/abs/1804.07461); Pearson/Spearman for STS-B.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tlutils.errors import ConfigError

METRICS = ("accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman")


def compute_metrics(predictions: np.ndarray, labels: np.ndarray,
                    names: Sequence[str] = ("accuracy",)) -> dict[str, float]:
    """Score predictions against labels.

    Args:
        predictions: class ids ``(N,)``, logits ``(N, C)`` (argmax taken), or regression
            scores ``(N,)`` / ``(N, 1)``.
        labels: gold labels ``(N,)``.
        names: which of :data:`METRICS` to compute. ``f1`` is the F1 of class 1 (binary
            tasks, as GLUE reports it for MRPC); ``macro_f1`` averages over classes.

    Returns:
        ``{name: value}`` with plain floats (JSON-ready).
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if len(predictions) != len(labels) or len(labels) == 0:
        raise ConfigError(f"compute_metrics needs as many predictions as labels (> 0); got "
                          f"{len(predictions)} and {len(labels)}.")
    regression = any(n in ("pearson", "spearman") for n in names)
    if predictions.ndim == 2:
        predictions = predictions[:, 0] if regression else predictions.argmax(-1)
    out = {}
    for name in names:
        if name == "accuracy":
            out[name] = accuracy_score(labels, predictions)
        elif name == "f1":
            out[name] = f1_score(labels, predictions, zero_division=0)
        elif name == "macro_f1":
            out[name] = f1_score(labels, predictions, average="macro", zero_division=0)
        elif name == "mcc":
            out[name] = matthews_corrcoef(labels, predictions)
        elif name in ("pearson", "spearman"):
            from scipy.stats import pearsonr, spearmanr

            if np.std(predictions) == 0 or np.std(labels) == 0:  # correlation undefined: report 0
                out[name] = 0.0
            else:
                out[name] = (pearsonr if name == "pearson" else spearmanr)(predictions, labels)[0]
        else:
            raise ConfigError(f"Unknown metric {name!r}: use one of {', '.join(METRICS)}.")
    return {k: float(v) for k, v in out.items()}


def majority_baseline(train_labels: Sequence[int], eval_labels: Sequence[int]) -> float:
    """Accuracy of always predicting the most frequent training label -- the floor to beat."""
    values, counts = np.unique(np.asarray(train_labels), return_counts=True)
    return float(np.mean(np.asarray(eval_labels) == values[counts.argmax()]))
