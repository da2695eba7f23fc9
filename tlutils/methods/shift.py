"""Measuring domain shift before adapting to it: transfer drops, proxy A-distances with an
interval, vocabulary overlap, a 2-D view of the features, and which source is closest.

The chapter *Measuring domain shift* (``book/diversity/domain_shift.md``, the first of Part IV)
derives and uses every piece; *Terms II* (section ``term-domain-adaptation``) introduces the
proxy A-distance on one pair of domains.

- :class:`FeatureClassifier` -- a small head over a table of cached frozen features, trained
  by :func:`tlutils.train.fit` (rows from :func:`tlutils.methods.domain_data.feature_items`);
- :func:`transfer_drops` and :func:`in_vs_cross_domain` -- the in-domain minus cross-domain
  accuracy of every (source, target) cell, and one paired verdict for "does crossing a domain
  cost accuracy at all";
- :func:`proxy_a_distance_interval` / :func:`pairwise_proxy_a_distances` -- Ben-David et al.'s
  proxy A-distance from a linear domain classifier's out-of-fold error, with a Wilson interval;
- :func:`word_counts`, :func:`top_k_types`, :func:`vocabulary_overlap` -- pure functions of the
  texts: Jaccard overlap of the most frequent word types, and the share of target tokens whose
  type occurs in the source;
- :func:`rank_correlation` -- Spearman's rho with an exact (or Monte Carlo) permutation p-value,
  for the handful of domain pairs a benchmark has;
- :func:`closest_sources` -- for each target, the source at the smallest distance;
- :func:`pca_2d` -- the features projected on their first two principal components.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlutils.errors import ConfigError, DataError
from tlutils.methods.domain import proxy_a_distance
from tlutils.methods.multitask import CachedFeatureEncoder
from tlutils.stats import Comparison, compare

# --------------------------------------------------------------------------- a head on cached features


class FeatureClassifier(nn.Module):
    """A classifier over frozen features looked up by row id: standardise, ``Linear -> ReLU ->
    Dropout`` (a :class:`~tlutils.methods.multitask.CachedFeatureEncoder`), then a linear head.

    It takes what :func:`tlutils.train.fit` and :func:`tlutils.train.predict` give a Hugging Face
    model (``input_ids`` of shape (B, 1) holding row ids, ``labels``) and returns ``.logits`` and
    ``.loss``, so the one training loop trains it with its default loss and evaluation.

    Args:
        features: the feature table, one row per example (never trained).
        num_labels: classes.
        hidden: width of the hidden layer.
        dropout: dropout after it.
        standardize_rows: the rows whose mean and standard deviation standardise every feature
            (a source's *training* rows: statistics of the data the head may see); None: no
            standardisation.

    Shapes:
        features: (N, D); input_ids: (B, 1) row ids -> logits (B, num_labels).

    Example:
        >>> head = FeatureClassifier(np.random.randn(10, 4), num_labels=2, hidden=8)
        >>> head(torch.tensor([[0], [3]])).logits.shape
        torch.Size([2, 2])
    """

    def __init__(self, features: np.ndarray | torch.Tensor, num_labels: int, *, hidden: int = 128,
                 dropout: float = 0.1, standardize_rows: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        table = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        if num_labels < 2:
            raise ConfigError(f"num_labels={num_labels}: a classifier needs at least 2 classes.")
        if standardize_rows is not None:
            rows = torch.as_tensor(np.asarray(standardize_rows), dtype=torch.long)
            if rows.numel() < 2:
                raise ConfigError("standardize_rows needs at least 2 rows (their mean and spread).")
            mean, std = table[rows].mean(0), table[rows].std(0) + 1e-6  # (D,), (D,)
            table = (table - mean) / std
        self.encoder = CachedFeatureEncoder(table, hidden=hidden, dropout=dropout)
        self.head = nn.Linear(hidden, num_labels)
        self.config = SimpleNamespace(num_labels=num_labels, hidden_size=hidden, pad_token_id=0)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, **_: Any) -> SimpleNamespace:
        hidden = self.encoder(input_ids[:, :1]).last_hidden_state[:, 0]  # (B, hidden): one row per example
        logits = self.head(hidden)  # (B, C)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SimpleNamespace(logits=logits, loss=loss)


# --------------------------------------------------------------------------- accuracy across domains


def transfer_drops(accuracy: np.ndarray) -> np.ndarray:
    """In-domain minus cross-domain accuracy of every (source, target) cell.

    ``drop[s, t] = accuracy[t, t] - accuracy[s, t]``: how much the target loses when its model is
    trained on source ``s`` instead of on the target itself (Blitzer et al.'s *adaptation loss*,
    as accuracy). Both terms are scored on the target's test rows; the diagonal is 0.

    Args:
        accuracy: ``accuracy[s, t]``, a model trained on domain ``s`` scored on domain ``t``.

    Shapes:
        accuracy: (K, K). Returns (K, K).

    Reference: Blitzer, Dredze & Pereira, ACL 2007, https://aclanthology.org/P07-1056/ (section 6).
    """
    a = np.asarray(accuracy, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ConfigError(f"transfer_drops needs a square (K, K) accuracy matrix, got shape {a.shape}.")
    return np.diag(a)[None, :] - a  # (K, K): column t's diagonal minus each row


def in_vs_cross_domain(labels: Sequence[np.ndarray], in_domain: Sequence[np.ndarray],
                       cross_domain: Sequence[Sequence[np.ndarray]], *, names: tuple[str, str] = (
                           "in-domain", "cross-domain"), n_resamples: int = 2000, seed: int = 0) -> Comparison:
    """Does training on another domain cost accuracy? One paired verdict over every target.

    Each test row of each target counts once: A is whether the target's own model gets it right
    (0 or 1), B is the share of the *other* domains' models that get it right (0 to 1). A paired
    bootstrap over the rows (:func:`tlutils.stats.compare`) gives the interval of mean(A - B),
    which is the mean in-domain accuracy minus the mean cross-domain accuracy over the targets
    (weighted by their test rows). Stacking the K - 1 cross-domain predictions of a row as K - 1
    separate examples would count the row K - 1 times and make the interval too narrow.

    Args:
        labels: per target, its test labels ``(N_t,)``.
        in_domain: per target, its own model's predicted classes ``(N_t,)``.
        cross_domain: per target, the predicted classes of every other domain's model on its
            test rows (a list of ``(N_t,)`` arrays).
        names: the two arms' names in the comparison.

    Returns:
        a :class:`tlutils.stats.Comparison` on ``sum(N_t)`` paired rows (metric "accuracy").
    """
    if not (len(labels) == len(in_domain) == len(cross_domain)) or not labels:
        raise ConfigError("in_vs_cross_domain needs one entry per target in labels, in_domain and cross_domain.")
    a, b = [], []
    for y, own, others in zip(labels, in_domain, cross_domain):
        y, own = np.asarray(y), np.asarray(own)
        if not len(others):
            raise ConfigError("Every target needs at least one cross-domain model's predictions.")
        if own.shape != y.shape or any(np.asarray(o).shape != y.shape for o in others):
            raise ConfigError("Predictions and labels of a target must have the same length (its test rows).")
        a.append((own == y).astype(float))  # (N_t,)
        b.append(np.mean([np.asarray(o) == y for o in others], axis=0))  # (N_t,) share right
    right_a, right_b = np.concatenate(a), np.concatenate(b)

    def accuracy(_: np.ndarray, share_right: np.ndarray) -> float:
        return float(np.mean(share_right))

    accuracy.__name__ = "accuracy"
    return compare(np.zeros(len(right_a)), right_a, right_b, metric=accuracy, names=names,
                   n_resamples=n_resamples, seed=seed)


# --------------------------------------------------------------------------- proxy A-distance


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion ``successes / n``.

    Reference: Wilson, *Probable Inference, the Law of Succession, and Statistical Inference*,
    JASA 1927; Brown, Cai & DasGupta, *Interval Estimation for a Binomial Proportion*,
    Statistical Science 2001 (why not the normal interval near 0 or 1).
    """
    from scipy.stats import norm

    if n < 1 or not 0 <= successes <= n:
        raise ConfigError(f"wilson_interval needs 0 <= successes <= n and n >= 1, got {successes} of {n}.")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exactly 0 and 1 at the edges (no rounding)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def proxy_a_distance_interval(source: np.ndarray, target: np.ndarray, *, folds: int = 5, seed: int = 0,
                              C: float = 1.0, max_iter: int = 2000,
                              confidence: float = 0.95) -> dict[str, float]:
    """The proxy A-distance of two domains, with an interval.

    A logistic-regression *domain classifier* (standardised features; label 0 = ``source``,
    1 = ``target``; no task labels) predicts every row once from a model trained on the other
    folds (stratified ``folds``-fold cross-validation). Its out-of-fold error ``e`` gives the proxy
    A-distance ``2 (1 - 2 e)``, and Wilson's interval of ``e`` over the ``N_s + N_t`` held-out
    rows gives the interval of the distance (a larger error is a smaller distance). The interval
    covers the noise of the held-out rows, not that of retraining on another sample of the domains.

    With folds of equal size the distance equals
    :func:`tlutils.methods.domain.domain_shift_score`'s (the mean of the folds' accuracies).

    Args:
        source, target: the two domains' features (unlabelled text is enough).
        folds: cross-validation folds.
        seed: seed of the fold split.
        C: inverse L2 strength of the logistic regression.
        max_iter: iterations of the solver.
        confidence: level of the interval.

    Shapes:
        source: (N_s, D); target: (N_t, D).

    Returns:
        ``{"domain_accuracy", "domain_error", "proxy_a_distance", "low", "high", "n"}``.

    Reference: Ben-David, Blitzer, Crammer & Pereira, *Analysis of Representations for Domain
    Adaptation*, NeurIPS 2006; Ben-David et al., *A theory of learning from different domains*,
    Machine Learning 79, 2010, https://doi.org/10.1007/s10994-009-5152-4 (section 4).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    source, target = np.asarray(source), np.asarray(target)
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise ConfigError(f"proxy_a_distance_interval needs two (N, D) arrays with the same D; got "
                          f"{source.shape} and {target.shape}.")
    if min(len(source), len(target)) < folds:
        raise DataError(f"{len(source)} source and {len(target)} target rows for {folds} folds: each domain "
                        f"needs at least one row per fold; pass more rows or fewer folds.")
    x = np.concatenate([source, target])  # (N, D)
    y = np.concatenate([np.zeros(len(source), dtype=int), np.ones(len(target), dtype=int)])  # (N,)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    predicted = cross_val_predict(clf, x, y, cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    errors = int((predicted != y).sum())
    error = errors / len(y)
    err_low, err_high = wilson_interval(errors, len(y), confidence)
    return {"domain_accuracy": 1.0 - error, "domain_error": error, "proxy_a_distance": proxy_a_distance(error),
            "low": proxy_a_distance(err_high), "high": proxy_a_distance(err_low), "n": int(len(y))}


def pairwise_proxy_a_distances(features: Mapping[str, np.ndarray], **kwargs: Any) -> dict[tuple[str, str], dict[str, float]]:
    """:func:`proxy_a_distance_interval` of every unordered pair of domains, in the order given.

    Args:
        features: ``{domain: (N_d, D) features}``.
        **kwargs: passed on (``folds``, ``seed``, ``C``, ...).

    Returns:
        ``{(a, b): result}`` for every pair with ``a`` before ``b`` in ``features``.
    """
    names = list(features)
    if len(names) < 2:
        raise ConfigError("pairwise_proxy_a_distances needs at least two domains.")
    return {(a, b): proxy_a_distance_interval(features[a], features[b], **kwargs)
            for i, a in enumerate(names) for b in names[i + 1:]}


# --------------------------------------------------------------------------- vocabulary


WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def word_counts(texts: Iterable[str]) -> Counter:
    """How often each lower-cased word type occurs in ``texts`` (letters and digits, with an
    apostrophe suffix kept: ``don't``, ``it's``). Tokenisation is deliberately crude: the same
    rule for every domain is what makes the overlaps comparable."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(WORD.findall(text.lower()))
    return counts


def top_k_types(counts: Mapping[str, int], k: int) -> list[str]:
    """The ``k`` most frequent types, ties broken alphabetically (so the set is deterministic)."""
    if k < 1:
        raise ConfigError(f"k={k}: keep at least one word type.")
    return [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]]


def vocabulary_overlap(source: Mapping[str, int], target: Mapping[str, int], k: int = 1000) -> dict[str, float]:
    """How much of a target's vocabulary a source shares.

    - ``jaccard_top_k``: |S_k ∩ T_k| / |S_k ∪ T_k| of the ``k`` most frequent types of each side
      (1: the same frequent words; 0: none shared). Symmetric.
    - ``target_coverage``: the share of the target's *tokens* whose type occurs in the source at
      all (what a model trained on the source has at least seen). Not symmetric, and it grows
      with the source's size: compare sources of equal size.

    Args:
        source, target: word counts (:func:`word_counts`).
        k: how many frequent types the Jaccard overlap compares.

    Returns:
        ``{"jaccard_top_k", "target_coverage"}`` in [0, 1].

    Reference: the vocabulary-overlap heat maps of Gururangan et al., *Don't Stop Pretraining*,
    ACL 2020, https://arxiv.org/abs/2004.10964 (Figure 2, top 10k unigrams of each domain).
    """
    if not source or not target:
        raise DataError("vocabulary_overlap needs words on both sides: count the texts with word_counts first.")
    s, t = set(top_k_types(source, k)), set(top_k_types(target, k))
    covered = sum(n for w, n in target.items() if source.get(w, 0) > 0)
    return {"jaccard_top_k": len(s & t) / len(s | t), "target_coverage": covered / sum(target.values())}


# --------------------------------------------------------------------------- few pairs, one correlation


def rank_correlation(x: Sequence[float], y: Sequence[float], *, n_resamples: int = 9999,
                     seed: int = 0) -> dict[str, Any]:
    """Spearman's rank correlation with a permutation p-value, for a handful of points.

    The p-value is two-sided and exact (every pairing of ``x`` with ``y``) when ``n!`` is at most
    ``n_resamples``, a Monte Carlo estimate otherwise. With six points (four domains, six pairs)
    only |rho| >= 0.886 reaches p < 0.05: a weak or moderate correlation over so few
    pairs is *not resolved*, whatever its sign.

    Args:
        x, y: paired values (one per domain pair).
        n_resamples: permutations for the Monte Carlo estimate (and the limit of exactness).
        seed: seed of the Monte Carlo permutations.

    Returns:
        ``{"rho", "p_value", "n", "method", "verdict"}``; ``rho`` and ``p_value`` are None when
        either side is constant (no ranking to correlate); ``verdict`` is ``"positive"``,
        ``"negative"`` or ``"not resolved"`` at 5 %.
    """
    from scipy.stats import permutation_test, rankdata, spearmanr

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 3:
        raise ConfigError(f"rank_correlation needs two 1-D sequences of the same length >= 3, got {a.shape} and {b.shape}.")
    exact = math.factorial(len(a)) <= n_resamples
    method = "exact permutation" if exact else f"Monte Carlo permutation ({n_resamples})"
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"rho": None, "p_value": None, "n": int(len(a)), "method": method, "verdict": "not resolved"}

    ra, rb = rankdata(a), rankdata(b)  # Spearman's rho is Pearson's r of the ranks (average ranks for ties)
    rb_centred = (rb - rb.mean()) / np.linalg.norm(rb - rb.mean())

    def statistic(u: np.ndarray, axis: int = -1) -> np.ndarray:  # u: (..., n) permuted ranks of x
        centred = u - u.mean(axis=axis, keepdims=True)
        return (centred * rb_centred).sum(axis=axis) / np.linalg.norm(centred, axis=axis)

    rho = float(spearmanr(a, b).statistic)
    test = permutation_test((ra,), statistic, permutation_type="pairings", n_resamples=n_resamples,
                            alternative="two-sided", vectorized=True, rng=np.random.default_rng(seed))
    p = float(test.pvalue)
    verdict = "not resolved" if p >= 0.05 else ("positive" if rho > 0 else "negative")
    return {"rho": rho, "p_value": p, "n": int(len(a)), "method": method, "verdict": verdict}


def closest_sources(distance: Mapping[tuple[str, str], float], domains: Sequence[str]) -> dict[str, str]:
    """For each target, the other domain at the smallest distance (ties: the first in ``domains``).

    Args:
        distance: a symmetric distance of each unordered pair, keyed ``(a, b)`` in either order.
        domains: the domains, in a fixed order.

    Returns:
        ``{target: closest source}``.
    """
    def d(a: str, b: str) -> float:
        if (a, b) in distance:
            return float(distance[a, b])
        if (b, a) in distance:
            return float(distance[b, a])
        raise ConfigError(f"No distance for the pair ({a!r}, {b!r}): compute every pair of {list(domains)}.")

    if len(domains) < 2:
        raise ConfigError("closest_sources needs at least two domains.")
    return {t: min((s for s in domains if s != t), key=lambda s: (d(s, t), list(domains).index(s))) for t in domains}


# --------------------------------------------------------------------------- a picture


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``x`` on its first two principal components (centred, not scaled).

    Shapes:
        x: (N, D) with N >= 2 -> points (N, 2) and the share of the variance each component
        explains (2,).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2 or x.shape[1] < 2:
        raise ConfigError(f"pca_2d needs an (N, D) array with N, D >= 2, got shape {x.shape}.")
    centred = x - x.mean(0)  # (N, D)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)  # vt: (min(N, D), D)
    signs = np.sign(vt[:2, np.abs(vt[:2]).argmax(1)].diagonal())  # fix each axis's sign: largest loading > 0
    components = vt[:2] * signs[:, None]  # (2, D)
    variance = singular ** 2
    share = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return centred @ components.T, share  # (N, 2), (2,)
