"""Properties of pseudo-labelling, class-balanced selection and rounds of self-training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tlutils.errors import ConfigError
from tlutils.methods.self_training import (GaussianNoise, NoisyHead, balanced_pseudo_labels, head_probs,
                                           pseudo_label, self_train, train_head, with_pseudo_labels)


def random_probs(n: int, c: int, seed: int, scale: float = 2.0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(n, c)) * scale
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_pseudo_label_keeps_exactly_the_rows_at_or_above_the_threshold():
    probs = np.array([[0.95, 0.05], [0.40, 0.60], [0.10, 0.90], [0.50, 0.50], [0.20, 0.80]])
    indices, labels = pseudo_label(probs, 0.8)
    assert indices.tolist() == [0, 2, 4] and labels.tolist() == [0, 1, 1]
    indices, labels = pseudo_label(probs, 0.5)
    assert indices.tolist() == [0, 1, 2, 3, 4]
    assert pseudo_label(probs, 0.99)[0].tolist() == []


def test_pseudo_label_matches_a_brute_force_count_and_shrinks_with_the_threshold():
    probs = random_probs(200, 3, 0)
    counts = []
    for threshold in np.linspace(0.34, 1.0, 12):
        indices, labels = pseudo_label(probs, threshold)
        expected = [i for i in range(200) if probs[i].max() >= threshold]
        assert indices.tolist() == expected
        assert (labels == probs[indices].argmax(1)).all()
        counts.append(len(indices))
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def test_threshold_zero_keeps_every_row_and_one_keeps_only_certain_predictions():
    probs = random_probs(50, 3, 1)
    probs[[3, 17]] = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]  # two predictions made with certainty
    assert pseudo_label(probs, 0.0)[0].tolist() == list(range(50))
    indices, labels = pseudo_label(probs, 1.0)
    assert indices.tolist() == [3, 17] and labels.tolist() == [1, 0]
    # the balanced selection: threshold 0 sees every row as a candidate, 1 only the certain ones
    kept, _ = balanced_pseudo_labels(probs, 1.0, proportions=[1, 1, 0])
    assert kept.tolist() == [3, 17]
    kept, kept_labels = balanced_pseudo_labels(probs, 0.0)
    per_class = np.bincount(probs.argmax(1), minlength=3)
    assert len(kept) == 3 * per_class.min()


@pytest.mark.parametrize("seed", range(5))
def test_balanced_selection_keeps_the_same_number_per_class_and_the_most_confident(seed):
    probs = random_probs(300, 3, seed)
    threshold = 0.6
    kept, labels = balanced_pseudo_labels(probs, threshold)
    candidates = probs.max(1) >= threshold
    available = np.bincount(probs[candidates].argmax(1), minlength=3)
    counts = np.bincount(labels, minlength=3)
    assert (counts == available.min()).all() and len(kept) == 3 * available.min() > 0
    assert kept.tolist() == sorted(kept.tolist()) and (labels == probs[kept].argmax(1)).all()
    assert (probs[kept].max(1) >= threshold).all()
    for c in range(3):  # nothing left out of class c is more confident than what was kept of it
        kept_c = kept[labels == c]
        left = np.setdiff1d(np.flatnonzero(candidates & (probs.argmax(1) == c)), kept_c)
        if len(left) and len(kept_c):
            assert probs[left, c].max() <= probs[kept_c, c].min()


@pytest.mark.parametrize("proportions", [(0.5, 0.3, 0.2), (2, 1, 1), (1, 0, 3), (0.2, 0.2, 0.6)])
def test_balanced_selection_follows_given_proportions(proportions):
    probs = random_probs(600, 3, 7)
    kept, labels = balanced_pseudo_labels(probs, 0.5, proportions=proportions)
    share = np.asarray(proportions, dtype=float) / np.sum(proportions)
    counts = np.bincount(labels, minlength=3)
    available = np.bincount(pseudo_label(probs, 0.5)[1], minlength=3)
    assert (counts <= available).all() and counts[share == 0].sum() == 0
    k = min(available[c] / share[c] for c in range(3) if share[c] > 0)
    assert counts.tolist() == [math.floor(k * s + 1e-9) for s in share]
    assert any(counts[c] == available[c] for c in range(3) if share[c] > 0)  # the scarcest class is used up
    capped, capped_labels = balanced_pseudo_labels(probs, 0.5, proportions=proportions, max_total=20)
    assert len(capped) <= 20 and set(capped.tolist()) <= set(kept.tolist())


def test_balanced_selection_keeps_nothing_when_a_wanted_class_has_no_confident_row():
    probs = np.array([[0.9, 0.05, 0.05], [0.95, 0.03, 0.02], [0.1, 0.85, 0.05], [0.3, 0.3, 0.4]])
    assert balanced_pseudo_labels(probs, 0.8)[0].tolist() == []  # class 2 has no candidate
    kept, labels = balanced_pseudo_labels(probs, 0.8, proportions=[1, 1, 0])
    assert kept.tolist() == [1, 2] and labels.tolist() == [0, 1]  # the more confident class-0 row


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_thresholds_outside_the_unit_interval_are_one_line_errors_naming_the_fix(threshold):
    probs = np.full((4, 2), 0.5)
    for call in (lambda: pseudo_label(probs, threshold), lambda: balanced_pseudo_labels(probs, threshold),
                 lambda: self_train(lambda x, y, r: None, lambda m, x: probs, np.zeros((2, 1)), np.array([0, 1]),
                                    np.zeros((4, 1)), threshold=threshold)):
        with pytest.raises(ConfigError, match=r"use a probability in \[0, 1\]") as error:
            call()
        assert "\n" not in str(error.value)


def test_an_empty_unlabelled_pool_is_a_one_line_error_naming_the_fix():
    empty = np.zeros((0, 3))
    calls = (lambda: pseudo_label(empty, 0.9), lambda: balanced_pseudo_labels(empty, 0.9),
             lambda: self_train(lambda x, y, r: None, lambda m, x: x, np.zeros((2, 1)), np.array([0, 1]),
                                np.zeros((0, 1))))
    for call in calls:
        with pytest.raises(ConfigError, match="unlabelled pool is empty.*unlabelled=") as error:
            call()
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("bad", [np.ones(3), np.ones((2, 2, 2))])
def test_pseudo_label_rejects_non_matrix_input(bad):
    with pytest.raises(ConfigError):
        pseudo_label(bad, 0.5)


def test_bad_proportions_and_settings_are_errors():
    probs = random_probs(10, 3, 0)
    for proportions in ([1, 1], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(ConfigError, match="proportions"):
            balanced_pseudo_labels(probs, 0.5, proportions=proportions)
    with pytest.raises(ConfigError, match="balance"):
        self_train(lambda x, y, r: None, lambda m, x: probs, np.zeros((2, 1)), np.array([0, 1]),
                   np.zeros((10, 1)), balance="uniform")
    with pytest.raises(ConfigError, match="std"):
        GaussianNoise(-1.0)


# --------------------------------------------------------------------------- rounds


def toy_problem(seed: int = 0):
    """Two well-separated 1-D clusters (at -2 and +2) with a second, uninformative dimension,
    and two atypical labelled points, so that the first teacher's boundary is badly placed."""
    rng = np.random.default_rng(seed)
    n = 400
    y = np.repeat([0, 1], n // 2)
    x = np.stack([np.where(y == 0, -2.0, 2.0) + rng.normal(0, 0.5, n), rng.normal(0, 0.5, n)], 1)  # (N, 2)
    x_lab, y_lab = np.array([[-0.5, 0.0], [4.5, 0.0]]), np.array([0, 1])  # boundary at x = 2: a weak teacher
    return x_lab, y_lab, x, y


def centroid_train(x: np.ndarray, y: np.ndarray, r: int) -> np.ndarray:
    return np.stack([x[y == c].mean(0) for c in (0, 1)])  # (C, D)


def centroid_probs(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    logits = -((x[:, None, :] - centroids[None]) ** 2).sum(-1)  # (N, C)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_one_round_raises_accuracy_from_a_weak_teacher_on_a_separable_toy_problem():
    x_lab, y_lab, x_pool, y_pool = toy_problem()
    accuracy = lambda model: float(np.mean(centroid_probs(model, x_pool).argmax(1) == y_pool))  # noqa: E731
    teacher = centroid_train(x_lab, y_lab, 0)
    student, history = self_train(centroid_train, centroid_probs, x_lab, y_lab, x_pool, rounds=1,
                                  threshold=0.9, pool_gold=y_pool, eval_fn=accuracy)
    assert [r.round for r in history] == [0, 1]
    assert history[0].score == accuracy(teacher) < 0.85  # the weak teacher
    assert history[1].score > 0.97 and history[1].score > history[0].score + 0.1
    assert history[1].pseudo_labels > 0 and history[1].pseudo_label_accuracy > 0.95
    assert history[1].per_class[0] == history[1].per_class[1]  # labelled proportions: 1 : 1


def test_one_round_with_the_library_heads_raises_accuracy_too():
    x_lab, y_lab, x_pool, y_pool = toy_problem(1)
    train = lambda x, y, r: train_head(x, y, num_labels=2, steps=200, learning_rate=0.05, seed=r)  # noqa: E731
    accuracy = lambda model: float(np.mean(head_probs(model, x_pool).argmax(1) == y_pool))  # noqa: E731
    _, history = self_train(train, head_probs, x_lab, y_lab, x_pool, rounds=1, threshold=0.9,
                            pool_gold=y_pool, eval_fn=accuracy)
    assert history[1].score > history[0].score + 0.05


def test_self_train_measures_pseudo_labels_against_the_hidden_gold_without_training_on_it():
    x_lab, y_lab, x_pool, y_pool = toy_problem(2)
    seen = []

    def train(x, y, r):
        seen.append((x.copy(), y.copy()))
        return centroid_train(x, y, r)

    _, history = self_train(train, centroid_probs, x_lab, y_lab, x_pool, rounds=2, threshold=0.0, balance=None,
                            pool_gold=y_pool)
    for r in (1, 2):
        x, y = seen[r]
        assert len(y) == len(y_lab) + history[r].pseudo_labels == len(y_lab) + len(y_pool)  # threshold 0: all
        teacher = centroid_train(*seen[r - 1], 0)
        expected = centroid_probs(teacher, x_pool).argmax(1)
        assert np.array_equal(y[len(y_lab):], expected)  # the teacher's labels, not the gold ones
        assert math.isclose(history[r].pseudo_label_accuracy, float(np.mean(expected == y_pool)))


# --------------------------------------------------------------------------- noise and data


def test_noise_acts_only_while_training():
    x = torch.randn(8, 5)
    noise = GaussianNoise(0.5)
    assert not torch.equal(noise.train()(x), x)
    assert torch.equal(noise.eval()(x), x)
    head = NoisyHead(5, 3, dropout=0.5, noise_std=1.0).eval()
    assert torch.equal(head(x), head(x))  # eval: deterministic
    head.train()
    assert not torch.equal(head(x), head(x))


def test_train_head_restores_the_thread_setting_and_is_reproducible():
    x, y = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2
    threads = torch.get_num_threads()
    a = head_probs(train_head(x, y, num_labels=2, steps=10, seed=3, noise_std=0.1, dropout=0.2), x)
    b = head_probs(train_head(x, y, num_labels=2, steps=10, seed=3, noise_std=0.1, dropout=0.2), x)
    assert np.array_equal(a, b) and a.shape == (40, 2) and np.allclose(a.sum(1), 1, atol=1e-5)
    assert torch.get_num_threads() == threads


def test_with_pseudo_labels_replaces_the_gold_labels():
    from datasets import Dataset

    data = Dataset.from_dict({"input_ids": [[1, 2], [3], [4, 5, 6]], "labels": [0, 1, 2]})
    out = with_pseudo_labels(data, np.array([0, 2]), np.array([2, 2]))
    assert out["labels"] == [2, 2] and out["input_ids"] == [[1, 2], [4, 5, 6]]
    with pytest.raises(ConfigError, match="as many labels"):
        with_pseudo_labels(data, np.array([0, 1]), np.array([1]))
