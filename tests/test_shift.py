"""Properties of the domain-shift measures of ``tlutils.methods.shift``."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from tlutils.errors import ConfigError, DataError
from tlutils.methods.domain import domain_shift_score
from tlutils.methods.domain_data import feature_items
from tlutils.methods.shift import (FeatureClassifier, closest_sources, in_vs_cross_domain, pairwise_proxy_a_distances,
                                   pca_2d, proxy_a_distance_interval, rank_correlation, top_k_types, transfer_drops,
                                   vocabulary_overlap, wilson_interval, word_counts)
from tlutils.stats import compare
from tlutils.train import TrainConfig, fit, predict

# --------------------------------------------------------------------------- the head


def test_feature_classifier_looks_up_rows_and_standardises_with_the_given_rows_only():
    rng = np.random.default_rng(0)
    table = rng.normal(5.0, 3.0, size=(20, 6))
    head = FeatureClassifier(table, num_labels=3, hidden=8, standardize_rows=range(10))
    stored = head.encoder.table  # (20, 6) the standardised table
    torch.testing.assert_close(stored[:10].mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    assert not torch.allclose(stored[10:].mean(0), torch.zeros(6), atol=1e-2)  # the other rows were not used
    out = head(torch.tensor([[3], [7]]), labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.ndim == 0
    head.eval()  # no dropout
    with torch.no_grad():
        same = head.head(head.encoder.shared(stored[[3, 7]]))
    torch.testing.assert_close(head(torch.tensor([[3], [7]])).logits, same)
    assert head(torch.tensor([[3]])).loss is None


def test_feature_classifier_rejects_bad_settings():
    with pytest.raises(ConfigError, match="num_labels"):
        FeatureClassifier(np.zeros((4, 3)), num_labels=1)
    with pytest.raises(ConfigError, match="standardize_rows"):
        FeatureClassifier(np.zeros((4, 3)), num_labels=2, standardize_rows=[0])


def test_feature_classifier_learns_a_separable_task_through_fit():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    table = rng.normal(size=(80, 5)) + 6.0 * y[:, None]  # (80, 5) two well-separated clusters
    train = [dict(item, labels=int(label)) for item, label in zip(feature_items(80), y)]
    torch.manual_seed(0)
    head = FeatureClassifier(table, num_labels=2, hidden=16, standardize_rows=range(80))
    history = fit(head, train, train, task="amazon",
                  config=TrainConfig(epochs=10, learning_rate=1e-2, batch_size=16, warmup_fraction=0.0,
                                     mixed_precision="no", progress=False))
    logits, gold = predict(head, train, mixed_precision="no")
    assert np.array_equal(gold, y) and np.mean(logits.argmax(1) == y) == 1.0
    assert history.best_score == 1.0


# --------------------------------------------------------------------------- accuracy across domains


def test_transfer_drops_are_the_column_diagonal_minus_each_cell():
    accuracy = np.array([[0.8, 0.6], [0.7, 0.9]])
    drops = transfer_drops(accuracy)
    np.testing.assert_allclose(drops, [[0.0, 0.3], [0.1, 0.0]])
    assert np.all(np.diag(drops) == 0)
    with pytest.raises(ConfigError, match="square"):
        transfer_drops(np.zeros((2, 3)))


def test_in_vs_cross_domain_counts_each_row_once_and_equals_the_mean_accuracies():
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 2, 50), rng.integers(0, 2, 30)]
    own = [np.where(rng.random(len(y)) < 0.8, y, 1 - y) for y in labels]
    others = [[np.where(rng.random(len(y)) < p, y, 1 - y) for p in (0.6, 0.7)] for y in labels]
    c = in_vs_cross_domain(labels, own, others, seed=0)
    assert c.n == 80 and c.metric == "accuracy"
    in_domain = np.concatenate([o == y for o, y in zip(own, labels)]).mean()
    cross = np.mean(np.concatenate([np.mean([p == y for p in ps], axis=0) for ps, y in zip(others, labels)]))
    assert math.isclose(c.value_a, in_domain) and math.isclose(c.value_b, cross)
    assert c.low <= c.difference <= c.high


def test_in_vs_cross_domain_interval_is_not_narrowed_by_stacking_the_sources():
    """With K - 1 identical cross-domain heads, the pooled comparison is the comparison with one of
    them: the same value and the same interval, not one (K - 1) times narrower."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    own, other = np.where(rng.random(200) < 0.75, y, 1 - y), np.where(rng.random(200) < 0.65, y, 1 - y)
    pooled = in_vs_cross_domain([y], [own], [[other, other, other]], seed=3)
    single = compare(y, own, other, seed=3)
    assert math.isclose(pooled.difference, single.difference)
    assert math.isclose(pooled.low, single.low) and math.isclose(pooled.high, single.high)


def test_in_vs_cross_domain_rejects_mismatched_input():
    y = np.array([0, 1, 1])
    with pytest.raises(ConfigError):
        in_vs_cross_domain([y], [y[:2]], [[y]])
    with pytest.raises(ConfigError):
        in_vs_cross_domain([y], [y], [[]])
    with pytest.raises(ConfigError):
        in_vs_cross_domain([y, y], [y], [[y]])


# --------------------------------------------------------------------------- proxy A-distance


def test_wilson_interval_contains_the_proportion_and_stays_in_the_unit_interval():
    for k, n in ((0, 10), (3, 10), (10, 10), (400, 800)):
        low, high = wilson_interval(k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    wide, narrow = wilson_interval(5, 10), wilson_interval(500, 1000)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
    with pytest.raises(ConfigError):
        wilson_interval(11, 10)


def test_proxy_a_distance_matches_domain_shift_score_and_orders_near_and_far():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(200, 8))
    same = rng.normal(size=(200, 8))
    far = rng.normal(size=(200, 8)) + 2.0
    near_result, far_result = proxy_a_distance_interval(source, same), proxy_a_distance_interval(source, far)
    # equal folds (400 rows, 5 folds): the pooled out-of-fold accuracy is the mean of the folds' accuracies
    assert math.isclose(far_result["proxy_a_distance"], domain_shift_score(source, far)["proxy_a_distance"])
    assert math.isclose(near_result["proxy_a_distance"], domain_shift_score(source, same)["proxy_a_distance"])
    assert far_result["proxy_a_distance"] > 1.8 and abs(near_result["proxy_a_distance"]) < 0.5
    for r in (near_result, far_result):
        assert r["low"] <= r["proxy_a_distance"] <= r["high"] and r["n"] == 400
        assert math.isclose(r["proxy_a_distance"], 2 * (1 - 2 * r["domain_error"]))
    assert near_result["high"] < far_result["low"]  # resolved apart


def test_proxy_a_distance_needs_rows_for_every_fold_and_matching_dimensions():
    with pytest.raises(DataError, match="folds"):
        proxy_a_distance_interval(np.zeros((3, 2)), np.ones((10, 2)), folds=5)
    with pytest.raises(ConfigError):
        proxy_a_distance_interval(np.zeros((10, 2)), np.ones((10, 3)))


def test_pairwise_proxy_a_distances_covers_every_unordered_pair_once():
    rng = np.random.default_rng(0)
    features = {d: rng.normal(size=(20, 3)) + i for i, d in enumerate("abcd")}
    results = pairwise_proxy_a_distances(features, folds=4)
    assert list(results) == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")]
    with pytest.raises(ConfigError):
        pairwise_proxy_a_distances({"a": features["a"]})


# --------------------------------------------------------------------------- vocabulary


def test_word_counts_lowercases_and_keeps_apostrophe_suffixes():
    counts = word_counts(["The cat didn't sit.", "THE dog, the 2 cats!"])
    assert counts == Counter({"the": 3, "cat": 1, "didn't": 1, "sit": 1, "dog": 1, "2": 1, "cats": 1})


def test_top_k_types_breaks_ties_alphabetically():
    assert top_k_types(Counter({"b": 2, "a": 2, "c": 5, "d": 1}), 3) == ["c", "a", "b"]
    with pytest.raises(ConfigError):
        top_k_types(Counter({"a": 1}), 0)


def test_vocabulary_overlap_extremes_symmetry_and_direction():
    a = word_counts(["apple banana cherry"] * 3)
    b = word_counts(["apple banana durian"])
    assert vocabulary_overlap(a, a, k=10) == {"jaccard_top_k": 1.0, "target_coverage": 1.0}
    disjoint = vocabulary_overlap(a, word_counts(["x y z"]), k=10)
    assert disjoint == {"jaccard_top_k": 0.0, "target_coverage": 0.0}
    ab, ba = vocabulary_overlap(a, b, k=10), vocabulary_overlap(b, a, k=10)
    assert ab["jaccard_top_k"] == ba["jaccard_top_k"] == 2 / 4  # symmetric
    assert math.isclose(ab["target_coverage"], 2 / 3)  # durian unseen in a
    assert math.isclose(ba["target_coverage"], 6 / 9)  # cherry (3 tokens) unseen in b
    with pytest.raises(DataError):
        vocabulary_overlap(Counter(), b)


def test_vocabulary_overlap_top_k_compares_only_the_frequent_types():
    source = Counter({"the": 100, "a": 90, "rare": 1})
    target = Counter({"the": 80, "a": 70, "other": 1})
    assert vocabulary_overlap(source, target, k=2)["jaccard_top_k"] == 1.0
    assert vocabulary_overlap(source, target, k=3)["jaccard_top_k"] == 2 / 4


# --------------------------------------------------------------------------- correlation, closest source, picture


def test_rank_correlation_is_exact_on_few_points_and_honest_about_them():
    perfect = rank_correlation([1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60])
    assert perfect["rho"] == pytest.approx(1.0) and perfect["method"] == "exact permutation"
    assert perfect["p_value"] == pytest.approx(2 / 720) and perfect["verdict"] == "positive"
    weak = rank_correlation([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])  # rho 0.83 on six points
    assert weak["rho"] == pytest.approx(0.8286, abs=1e-4) and weak["verdict"] == "not resolved"
    negative = rank_correlation(np.arange(10), -np.arange(10.0), seed=0)
    assert negative["verdict"] == "negative" and negative["method"].startswith("Monte Carlo")
    assert rank_correlation([1, 1, 1], [1, 2, 3]) == {"rho": None, "p_value": None, "n": 3,
                                                     "method": "exact permutation", "verdict": "not resolved"}
    with pytest.raises(ConfigError):
        rank_correlation([1, 2], [1, 2])


def test_rank_correlation_matches_scipy_on_ties():
    from scipy.stats import spearmanr

    x, y = [1, 2, 2, 3, 5, 4, 7], [3, 1, 2, 2, 6, 5, 4]
    assert rank_correlation(x, y)["rho"] == pytest.approx(spearmanr(x, y).statistic)


def test_closest_sources_picks_the_smallest_distance_in_either_key_order():
    distance = {("a", "b"): 0.5, ("c", "a"): 0.2, ("b", "c"): 0.9}
    assert closest_sources(distance, ["a", "b", "c"]) == {"a": "c", "b": "a", "c": "a"}
    tied = {("a", "b"): 1.0, ("a", "c"): 1.0, ("b", "c"): 1.0}
    assert closest_sources(tied, ["a", "b", "c"]) == {"a": "b", "b": "a", "c": "a"}  # ties: the first domain
    with pytest.raises(ConfigError, match="No distance"):
        closest_sources({("a", "b"): 1.0}, ["a", "b", "c"])


def test_pca_2d_finds_the_direction_of_largest_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 5)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1])
    points, share = pca_2d(x)
    assert points.shape == (500, 2) and share[0] > share[1] > 0 and share.sum() <= 1.0
    np.testing.assert_allclose(points.mean(0), 0.0, atol=1e-9)
    assert abs(np.corrcoef(points[:, 0], x[:, 0])[0, 1]) > 0.99
    assert np.corrcoef(points[:, 0], x[:, 0])[0, 1] > 0  # the sign is fixed: largest loading positive
    with pytest.raises(ConfigError):
        pca_2d(np.zeros((1, 3)))
