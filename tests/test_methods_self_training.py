"""Properties of pseudo-labelling."""

from __future__ import annotations

import numpy as np
import pytest

from tlutils.errors import ConfigError
from tlutils.methods.self_training import pseudo_label


def test_pseudo_label_keeps_exactly_the_rows_at_or_above_the_threshold():
    probs = np.array([[0.95, 0.05], [0.40, 0.60], [0.10, 0.90], [0.50, 0.50], [0.20, 0.80]])
    indices, labels = pseudo_label(probs, 0.8)
    assert indices.tolist() == [0, 2, 4] and labels.tolist() == [0, 1, 1]
    indices, labels = pseudo_label(probs, 0.5)
    assert indices.tolist() == [0, 1, 2, 3, 4]
    assert pseudo_label(probs, 0.99)[0].tolist() == []


def test_pseudo_label_matches_a_brute_force_count_and_shrinks_with_the_threshold():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    counts = []
    for threshold in np.linspace(0.34, 1.0, 12):
        indices, labels = pseudo_label(probs, threshold)
        expected = [i for i in range(200) if probs[i].max() >= threshold]
        assert indices.tolist() == expected
        assert (labels == probs[indices].argmax(1)).all()
        counts.append(len(indices))
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


@pytest.mark.parametrize("bad", [np.ones(3), np.ones((2, 2, 2))])
def test_pseudo_label_rejects_non_matrix_input(bad):
    with pytest.raises(ConfigError):
        pseudo_label(bad, 0.5)


def test_pseudo_label_rejects_thresholds_outside_unit_interval():
    with pytest.raises(ConfigError, match="threshold"):
        pseudo_label(np.full((2, 2), 0.5), 1.5)
