"""Self-training: keep a model's confident predictions on unlabelled data as pseudo-labels.

The book explains it in *Terms II: learning across tasks and domains* (section
``term-self-training``).
"""

from __future__ import annotations

import numpy as np

from tlutils.errors import ConfigError


def pseudo_label(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows whose top class probability is at least ``threshold``, with that class.

    Args:
        probs: class probabilities of unlabelled examples (rows sum to 1).
        threshold: the confidence a prediction needs to be kept, in [0, 1].

    Shapes:
        probs: (N, C). Returns two arrays of shape (K,), K <= N.

    Returns:
        ``(indices, labels)``: the kept rows (ascending) and their predicted classes.

    Reference: Yarowsky, *Unsupervised word sense disambiguation rivaling supervised methods*,
    ACL 1995; Lee, *Pseudo-Label*, ICML 2013 workshop.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ConfigError(f"pseudo_label needs (N, C) probabilities; got shape {probs.shape}.")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold={threshold}: use a probability in [0, 1].")
    confidence = probs.max(axis=1)  # (N,)
    indices = np.flatnonzero(confidence >= threshold)  # (K,)
    return indices, probs[indices].argmax(axis=1)
