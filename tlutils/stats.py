"""Is a difference real? One helper for every comparison the book draws.

A chapter compares *arms* (two models, two strategies, two losses) on the same evaluation
examples, or over several seeds. A difference of two accuracies means nothing until it is set
against its noise, so every comparison goes through this module and ends in one of three
verdicts: ``"A better"``, ``"B better"`` or ``"not resolved"``.

- :func:`compare` — two arms scored on the **same examples**: a paired bootstrap of the metric
  difference (any metric: accuracy, F1, MCC, a correlation), with its interval and p-value.
  Pairing matters: the two arms err on many of the same hard examples, so the paired interval
  is much narrower than two separate binomial intervals would suggest.
- :func:`mcnemar` — McNemar's exact test on the discordant examples (accuracy only), the
  classical paired test; a cross-check on the bootstrap.
- :func:`seed_interval` / :func:`compare_seeds` — several runs per arm: mean ± sd with a
  Student-t interval, and a t-interval of the (paired) seed-wise difference.
- :func:`holm` — when a table draws several comparisons, each chapter names its one *main*
  comparison (tested at 5 %) and corrects the *further* ones for multiplicity with Holm's
  step-down procedure; the corrected comparisons say so in their sentence.
- :func:`at_majority_class` — an arm whose predictions are (almost) constant learned nothing:
  its comparisons are uninformative and the chapter must say so.

Every result is a :class:`Comparison`, whose :meth:`Comparison.sentence` is the text a chapter
prints, so a finding in the prose is generated from the run and cannot disagree with it.

References: Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993 (ch. 13, 16);
Koehn, *Statistical Significance Tests for Machine Translation Evaluation*, EMNLP 2004
(paired bootstrap resampling); Dror et al., *The Hitchhiker's Guide to Testing Statistical
Significance in NLP*, ACL 2018, https://aclanthology.org/P18-1128; McNemar, Psychometrika
1947; Holm, *A Simple Sequentially Rejective Multiple Test Procedure*, Scand. J. Stat. 1979.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

from tlutils.errors import ConfigError

VERDICTS = ("A better", "B better", "not resolved")
Metric = Union[str, Callable[[np.ndarray, np.ndarray], float]]


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing arm A with arm B on one metric.

    ``difference`` is ``value_a - value_b``; ``low``/``high`` bound it at ``confidence``.
    ``p_value`` is two-sided; ``p_adjusted`` is set when the comparison was corrected for
    multiplicity (:func:`holm`), and then decides the verdict.
    """

    a: str
    b: str
    metric: str
    value_a: float
    value_b: float
    difference: float
    low: float
    high: float
    p_value: float
    n: int
    method: str
    confidence: float = 0.95
    p_adjusted: Optional[float] = None
    family_size: int = 1
    unit: Optional[str] = None  # what ``n`` counts, when not seeds or paired examples

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence

    @property
    def verdict(self) -> str:
        """``"A better"``, ``"B better"`` or ``"not resolved"`` (A is :attr:`a`)."""
        p = self.p_value if self.p_adjusted is None else self.p_adjusted
        if p >= self.alpha or self.difference == 0:
            return "not resolved"
        return "A better" if self.difference > 0 else "B better"

    @property
    def winner(self) -> Optional[str]:
        """The better arm's name, or ``None`` when the difference is not resolved."""
        return {"A better": self.a, "B better": self.b}.get(self.verdict)

    def sentence(self, digits: int = 3) -> str:
        """The finding as one sentence, for a chapter to print."""
        f = f"{{:.{digits}f}}"
        signed = f"{{:+.{digits}f}}"
        level = f"{self.confidence:.0%}"
        where = (f"{self.n} {self.unit}" if self.unit else
                 f"{self.n} seeds" if "seed" in self.method else f"{self.n} paired examples")
        text = (f"{self.a} vs {self.b}: {self.metric} {f.format(self.value_a)} vs "
                f"{f.format(self.value_b)}, difference {signed.format(self.difference)} "
                f"({level} {self.method} interval {signed.format(self.low)} to "
                f"{signed.format(self.high)}, {where}")
        if self.p_adjusted is not None:
            shown = "< 0.001" if self.p_adjusted < 0.001 else f"= {self.p_adjusted:.3g}"  # bootstrap resolution
            family = "1 comparison" if self.family_size == 1 else f"{self.family_size} comparisons"
            text += f"; Holm-adjusted p {shown} over {family}"
        outcome = f"{self.winner} better" if self.winner else "not resolved at this budget"
        return f"{text}) — {outcome}."

    def as_dict(self) -> dict:
        """JSON-ready fields, the verdict and the sentence included (for ``save_results``)."""
        out = dataclasses.asdict(self)
        out.update(verdict=self.verdict, winner=self.winner, sentence=self.sentence())
        return out


# --------------------------------------------------------------------------- metrics


def _binary_counts(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Confusion counts ``(tp, fp, fn, tn)`` of each bootstrap sample; idx is ``(B, N)``."""
    pos_true, pos_pred = (y == 1)[idx], (p == 1)[idx]  # (B, N)
    tp = (pos_true & pos_pred).sum(1)
    fp = (~pos_true & pos_pred).sum(1)
    fn = (pos_true & ~pos_pred).sum(1)
    tn = (~pos_true & ~pos_pred).sum(1)
    return tp.astype(float), fp.astype(float), fn.astype(float), tn.astype(float)


def _resampled(metric: Metric, y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The metric on every bootstrap sample: ``(B,)``. Vectorised for accuracy, binary F1, MCC."""
    if metric == "accuracy":
        return (y == p)[idx].mean(1)
    binary = set(np.unique(y)) <= {0, 1} and set(np.unique(p)) <= {0, 1}
    if metric in ("f1", "mcc") and binary:
        tp, fp, fn, tn = _binary_counts(y, p, idx)
        with np.errstate(invalid="ignore", divide="ignore"):
            if metric == "f1":
                out = 2 * tp / (2 * tp + fp + fn)
            else:
                out = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return np.nan_to_num(out, nan=0.0)  # sklearn's convention for an undefined score
    fn_ = _metric_fn(metric)
    return np.array([fn_(y[i], p[i]) for i in idx])


def _metric_fn(metric: Metric) -> Callable[[np.ndarray, np.ndarray], float]:
    if callable(metric):
        return metric
    from tlutils.metrics import METRICS, compute_metrics

    if metric not in METRICS:
        raise ConfigError(f"Unknown metric {metric!r}: use one of {', '.join(METRICS)} or pass a function.")
    return lambda y, p: compute_metrics(p, y, (metric,))[metric]


def _metric_name(metric: Metric) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")


def _as_predictions(x: Sequence, metric: Metric) -> np.ndarray:
    """Class ids from ids or logits ``(N, C)``; regression scores are kept as they are."""
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr[:, 0] if metric in ("pearson", "spearman") else arr.argmax(-1)
    return arr


# --------------------------------------------------------------------------- same examples


def compare(labels: Sequence, predictions_a: Sequence, predictions_b: Sequence, *,
            metric: Metric = "accuracy", names: tuple[str, str] = ("A", "B"),
            confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Comparison:
    """Paired bootstrap of ``metric(A) - metric(B)`` on the same evaluation examples.

    Each bootstrap sample draws N example indices with replacement and scores *both* arms on
    that same sample, so what the two arms share (hard examples, label noise) cancels.

    Args:
        labels: gold labels ``(N,)``.
        predictions_a, predictions_b: each arm's class ids ``(N,)`` or logits ``(N, C)``
            (or regression scores for ``pearson``/``spearman``), in the order of ``labels``.
        metric: a name from :data:`tlutils.metrics.METRICS` or ``f(labels, predictions)``.
        names: how the two arms are called in the sentence.
        confidence: the interval's level; the verdict's test level is ``1 - confidence``.
        n_resamples: bootstrap samples (2000 gives the 2.5 % quantile to about ±0.003).
        seed: the resampling seed (the interval is reproducible).

    Returns:
        a :class:`Comparison` (percentile interval; two-sided bootstrap p-value).

    Shapes:
        labels (N,), predictions (N,) or (N, C) -> one Comparison.
    """
    y = np.asarray(labels)
    a, b = _as_predictions(predictions_a, metric), _as_predictions(predictions_b, metric)
    if not (len(y) == len(a) == len(b)) or len(y) < 2:
        raise ConfigError(f"compare needs both arms scored on the same examples: got {len(y)} labels, "
                          f"{len(a)} and {len(b)} predictions (score both arms on one split, in one order).")
    if not 0.5 < confidence < 1.0:
        raise ConfigError(f"confidence={confidence}: use a level in (0.5, 1), e.g. 0.95.")
    fn = _metric_fn(metric)
    value_a, value_b = float(fn(y, a)), float(fn(y, b))
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_resamples, len(y)))
    diffs = _resampled(metric, y, a, idx) - _resampled(metric, y, b, idx)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    p = min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    return Comparison(a=names[0], b=names[1], metric=_metric_name(metric), value_a=value_a,
                      value_b=value_b, difference=value_a - value_b, low=float(low), high=float(high),
                      p_value=float(p), n=len(y), method="paired bootstrap", confidence=confidence)


def mcnemar(labels: Sequence, predictions_a: Sequence, predictions_b: Sequence) -> dict[str, float]:
    """McNemar's exact test: do A and B err on the same examples at the same rate?

    Only the discordant examples count: ``b`` = A right and B wrong, ``c`` = A wrong and B
    right; under the null each discordant example is a fair coin, so ``p`` is the two-sided
    binomial probability of a split at least as uneven as ``b : c``.

    Returns:
        ``{"a_only": b, "b_only": c, "p_value": p}`` (``p = 1`` when nothing is discordant).
    """
    from scipy.stats import binomtest

    y = np.asarray(labels)
    right_a = _as_predictions(predictions_a, "accuracy") == y
    right_b = _as_predictions(predictions_b, "accuracy") == y
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"a_only": b, "b_only": c, "p_value": p}


# --------------------------------------------------------------------------- over seeds


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean ± sd of a metric over seeds, with a Student-t interval for the mean.

    With 3 seeds the t quantile is 4.30 (not 1.96): the interval is wide, honestly so.

    Returns:
        ``{"mean", "sd", "low", "high", "n"}`` (sd with ``ddof=1``; one seed: sd 0, interval
        the point itself, and a verdict built on it is never resolved).
    """
    from scipy.stats import t

    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ConfigError("seed_interval needs at least one value (run at least one seed).")
    mean = float(v.mean())
    if v.size == 1:
        return {"mean": mean, "sd": 0.0, "low": mean, "high": mean, "n": 1}
    sd = float(v.std(ddof=1))
    half = float(t.ppf(0.5 + confidence / 2, v.size - 1)) * sd / math.sqrt(v.size)
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "n": int(v.size)}


def compare_seeds(values_a: Sequence[float], values_b: Sequence[float], *,
                  names: tuple[str, str] = ("A", "B"), metric: str = "accuracy",
                  paired: bool = True, confidence: float = 0.95, unit: Optional[str] = None) -> Comparison:
    """Compare two arms run over several seeds: a t-interval of the mean difference.

    Args:
        values_a, values_b: the metric of each seed's run.
        paired: seed ``i`` of A and of B share data order and initial head (``set_seed(i)``),
            so the seed-wise differences are tested (one-sample t); otherwise Welch's t.
        unit: what the runs are, for the sentence, when they are not plain seeds (for
            example ``"runs (2 targets x 5 seeds)"`` when targets and seeds are pooled).

    Returns:
        a :class:`Comparison` whose ``n`` is the number of runs (pairs).
    """
    from scipy.stats import t, ttest_1samp, ttest_ind

    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    if paired and a.size != b.size:
        raise ConfigError(f"paired seeds need as many runs of A as of B (got {a.size} and {b.size}); "
                          "run the same seeds for both or pass paired=False.")
    if min(a.size, b.size) < 2:
        raise ConfigError("compare_seeds needs at least 2 seeds per arm (3 or more for a useful interval).")
    tail = 0.5 + confidence / 2
    if paired:
        d = a - b
        se, dof = float(d.std(ddof=1)) / math.sqrt(d.size), d.size - 1
        p = float(ttest_1samp(d, 0.0).pvalue) if se > 0 else None
    else:
        va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
        se = math.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)) if se > 0 else 1
        p = float(ttest_ind(a, b, equal_var=False).pvalue) if se > 0 else None
    if p is None:  # no spread at all: any nonzero difference is exact, zero is no difference
        p = 1.0 if a.mean() == b.mean() else 0.0
    diff = float(a.mean() - b.mean())
    half = float(t.ppf(tail, dof)) * se
    return Comparison(a=names[0], b=names[1], metric=metric, value_a=float(a.mean()),
                      value_b=float(b.mean()), difference=diff, low=diff - half, high=diff + half,
                      p_value=p, n=int(min(a.size, b.size)),
                      method="paired seed t" if paired else "Welch seed t", confidence=confidence,
                      unit=unit)


# --------------------------------------------------------------------------- many comparisons


def holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Holm's step-down correction of a family of further comparisons (order kept).

    Sort the m p-values ascending; the i-th smallest (0-based) is multiplied by ``m - i`` and
    the running maximum is taken, so adjusted p-values never decrease. The family-wise error
    rate stays at ``alpha`` whatever the dependence between the comparisons. A chapter's one
    main comparison is not part of the family.
    """
    m = len(comparisons)
    order = sorted(range(m), key=lambda i: comparisons[i].p_value)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * comparisons[i].p_value))
        adjusted[i] = running
    return [dataclasses.replace(c, p_adjusted=adjusted[i], family_size=m) for i, c in enumerate(comparisons)]


def verdict(a: Sequence, b: Sequence, labels: Optional[Sequence] = None, **kwargs) -> str:
    """``"A better"``, ``"B better"`` or ``"not resolved"``.

    With ``labels``: ``a`` and ``b`` are the two arms' predictions on the same examples
    (:func:`compare`); without: they are per-seed scores (:func:`compare_seeds`). Keyword
    arguments go to that function.
    """
    if labels is not None:
        return compare(labels, a, b, **kwargs).verdict
    return compare_seeds(a, b, **kwargs).verdict


# --------------------------------------------------------------------------- the floor


def at_majority_class(predictions: Sequence, labels: Optional[Sequence] = None,
                      share: float = 0.98, min_mcc: float = 0.05) -> bool:
    """True when an arm learned nothing usable: (almost) one class predicted, or |MCC| tiny.

    Args:
        predictions: class ids ``(N,)`` or logits ``(N, C)``.
        labels: gold labels; when given, an arm with ``|MCC| < min_mcc`` also counts.
        share: the most frequent predicted class's share at or above which the arm is
            constant in effect.
    """
    p = _as_predictions(predictions, "accuracy")
    top = np.unique(p, return_counts=True)[1].max() / len(p)
    if top >= share:
        return True
    if labels is None:
        return False
    from sklearn.metrics import matthews_corrcoef

    return abs(float(matthews_corrcoef(np.asarray(labels), p))) < min_mcc
