"""Self-training: keep a model's confident predictions on unlabelled data as pseudo-labels.

A *teacher* trained on the few labelled examples labels an unlabelled pool; the predictions
it is confident about (:func:`pseudo_label`), taken in equal numbers per class or in the
labelled data's class proportions (:func:`balanced_pseudo_labels`), join the labelled data,
and a *student* is trained on both. The student becomes the next round's teacher
(:func:`self_train`). In the *noisy student* variant the student is trained with noise the
teacher did not have when it labelled (dropout, input noise: :class:`GaussianNoise`,
:func:`noisy_head`), so it has to do more than copy the teacher.

The book explains it in *Terms II: learning across tasks and domains* (section
``term-self-training``) and in the chapter *Self-training* (``self-training``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from tlutils.config import quiet_progress
from tlutils.errors import ConfigError

if TYPE_CHECKING:
    from datasets import Dataset

Model = TypeVar("Model")
EMPTY_POOL = ("The unlabelled pool is empty: pass at least one unlabelled example (load one with "
              "load_task(..., unlabelled=('train',)) or hide the labels of part of the training split).")


def _check_probs(probs: np.ndarray, threshold: float, caller: str) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ConfigError(f"{caller} needs (N, C) probabilities; got shape {probs.shape}.")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold={threshold}: use a probability in [0, 1].")
    if probs.shape[0] == 0:
        raise ConfigError(EMPTY_POOL)
    return probs


def pseudo_label(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows whose top class probability is at least ``threshold``, with that class.

    Args:
        probs: class probabilities of unlabelled examples (rows sum to 1).
        threshold: the confidence a prediction needs to be kept, in [0, 1] (0 keeps every
            row; 1 keeps only predictions made with certainty).

    Shapes:
        probs: (N, C). Returns two arrays of shape (K,), K <= N.

    Returns:
        ``(indices, labels)``: the kept rows (ascending) and their predicted classes.

    Raises:
        ConfigError: a threshold outside [0, 1], an empty pool, or not an (N, C) array.

    Reference: Yarowsky, *Unsupervised word sense disambiguation rivaling supervised methods*,
    ACL 1995, https://aclanthology.org/P95-1026; Lee, *Pseudo-Label*, ICML 2013 workshop.
    """
    probs = _check_probs(probs, threshold, "pseudo_label")
    confidence = probs.max(axis=1)  # (N,)
    indices = np.flatnonzero(confidence >= threshold)  # (K,)
    return indices, probs[indices].argmax(axis=1)


def balanced_pseudo_labels(probs: np.ndarray, threshold: float, *,
                           proportions: Optional[Sequence[float]] = None,
                           max_total: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Confident pseudo-labels, class-balanced: the same number per class, or set proportions.

    A teacher trained on few labels is usually more confident about some classes than
    others; kept as they come, its pseudo-labels tilt the student further towards those
    classes every round. This keeps, for each predicted class ``c``, the ``n_c`` most
    confident rows among those at or above ``threshold``, with ``n_c = floor(k * p_c)`` and
    ``k`` as large as the candidates of every class allow (and at most ``max_total``).
    A class with no confident candidate and ``p_c > 0`` therefore empties the selection:
    balance is not traded for size.

    Args:
        probs: class probabilities of the unlabelled pool (rows sum to 1).
        threshold: the confidence a prediction needs to be a candidate, in [0, 1].
        proportions: the share each class should have (e.g. the labelled data's class
            frequencies); ``None``: equal numbers per class. Normalised to sum to 1.
        max_total: keep at most about this many rows in all (``None``: as many as possible).

    Shapes:
        probs: (N, C); proportions: (C,). Returns two arrays of shape (K,), K <= N.

    Returns:
        ``(indices, labels)``: the kept rows (ascending) and their pseudo-labels.

    Raises:
        ConfigError: a threshold outside [0, 1], an empty pool, or proportions that are not
        C non-negative numbers with a positive sum.

    Reference: class-balanced selection as in Zou et al., *Unsupervised Domain Adaptation for
    Semantic Segmentation via Class-Balanced Self-Training*, ECCV 2018,
    https://arxiv.org/abs/1810.07911, and Xie et al., *Self-training with Noisy Student*,
    CVPR 2020, https://arxiv.org/abs/1911.04252 (section 2, "data balancing").
    """
    probs = _check_probs(probs, threshold, "balanced_pseudo_labels")
    n_classes = probs.shape[1]
    if proportions is None:
        share = np.full(n_classes, 1.0 / n_classes)
    else:
        share = np.asarray(proportions, dtype=float)
        if share.shape != (n_classes,) or (share < 0).any() or share.sum() <= 0 or not np.isfinite(share).all():
            raise ConfigError(f"proportions={list(np.atleast_1d(proportions))}: give {n_classes} non-negative "
                              "shares with a positive sum (e.g. the labelled data's class frequencies).")
        share = share / share.sum()
    candidates, labels = pseudo_label(probs, threshold)  # (M,), (M,)
    confidence = probs[candidates, labels]  # (M,)
    available = np.bincount(labels, minlength=n_classes)  # (C,)
    wanted = share > 0
    k = float(np.min(available[wanted] / share[wanted]))  # the largest total every class can fill
    if max_total is not None:
        k = min(k, float(max_total))
    counts = np.where(wanted, np.floor(k * share + 1e-9), 0).astype(int)  # (C,)
    counts = np.minimum(counts, available)
    kept = []
    for c in range(n_classes):
        rows = np.flatnonzero(labels == c)
        order = rows[np.lexsort((candidates[rows], -confidence[rows]))]  # most confident first; ties: lower index
        kept.append(order[:counts[c]])
    keep = np.sort(np.concatenate(kept)).astype(int)
    return candidates[keep], labels[keep]


@dataclass
class Round:
    """What one round of self-training did (round 0: the teacher trained on labels only)."""

    round: int
    pseudo_labels: int  # rows of the pool used as training data in this round
    per_class: list[int]  # pseudo-labels per class
    pseudo_label_accuracy: Optional[float]  # against the hidden gold labels, when given
    score: Optional[float]  # eval_fn(model) after the round, when given


def self_train(train: Callable[[np.ndarray, np.ndarray, int], Model],
               predict_proba: Callable[[Model, np.ndarray], np.ndarray],
               x_labelled: np.ndarray, y_labelled: np.ndarray, x_pool: np.ndarray, *,
               rounds: int = 3, threshold: float = 0.9, balance: Optional[str] = "labelled",
               max_total: Optional[int] = None, pool_gold: Optional[np.ndarray] = None,
               eval_fn: Optional[Callable[[Model], float]] = None,
               teacher: Optional[Model] = None) -> tuple[Model, list[Round]]:
    """Rounds of teacher → confident pseudo-labels → student; the student teaches the next round.

    Each round the current teacher labels the *whole* pool again (eval mode, no noise), the
    confident predictions are selected, and a fresh student is trained on the labelled rows
    plus the selected pool rows with their pseudo-labels.

    Args:
        train: ``train(x, y, round) -> model``, training a fresh model (round 0: the teacher,
            on the labelled rows; round r >= 1: the student). A noisy student is a ``train``
            that adds noise for r >= 1.
        predict_proba: ``predict_proba(model, x) -> (N, C)`` class probabilities.
        x_labelled, y_labelled: the labelled rows and their labels.
        x_pool: the unlabelled rows.
        rounds: student rounds after the teacher (0: the teacher alone).
        threshold: the confidence a pseudo-label needs, in [0, 1].
        balance: ``"labelled"`` (the labelled data's class proportions), ``"equal"`` (the same
            number per class) or ``None`` (every confident prediction, as it comes).
        max_total: at most about this many pseudo-labels per round (balanced selection only).
        pool_gold: the pool's hidden gold labels, only to *measure* the pseudo-labels'
            accuracy; no model ever sees them.
        eval_fn: ``eval_fn(model) -> float``, scored after every round (e.g. accuracy on an
            evaluation split).
        teacher: an already trained round-0 model (then ``train`` is not called for round 0).

    Shapes:
        x_labelled: (L, ...); y_labelled: (L,); x_pool: (N, ...); pool_gold: (N,).

    Returns:
        ``(model, history)``: the last student (or the teacher when ``rounds == 0``) and one
        :class:`Round` per round, round 0 first.

    Raises:
        ConfigError: an empty pool, a threshold outside [0, 1], an unknown ``balance``, or
        ``rounds < 0``.

    Reference: Yarowsky 1995, https://aclanthology.org/P95-1026; Xie et al., *Self-training
    with Noisy Student*, CVPR 2020, https://arxiv.org/abs/1911.04252; He et al., *Revisiting
    Self-Training for Neural Sequence Generation*, ICLR 2020, https://arxiv.org/abs/1909.13788.
    """
    if len(x_pool) == 0:
        raise ConfigError(EMPTY_POOL)
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold={threshold}: use a probability in [0, 1].")
    if balance not in ("labelled", "equal", None):
        raise ConfigError(f"balance={balance!r}: use 'labelled', 'equal' or None.")
    if rounds < 0:
        raise ConfigError(f"rounds={rounds}: use 0 (the teacher only) or more.")
    y_labelled = np.asarray(y_labelled)
    model = teacher if teacher is not None else train(x_labelled, y_labelled, 0)
    history = [Round(0, 0, [], None, eval_fn(model) if eval_fn else None)]
    for r in range(1, rounds + 1):
        probs = np.asarray(predict_proba(model, x_pool))  # (N, C)
        if balance is None:
            idx, pseudo = pseudo_label(probs, threshold)
        else:
            share = (np.bincount(y_labelled, minlength=probs.shape[1]) if balance == "labelled" else None)
            idx, pseudo = balanced_pseudo_labels(probs, threshold, proportions=share, max_total=max_total)
        accuracy = (float(np.mean(pseudo == np.asarray(pool_gold)[idx]))
                    if pool_gold is not None and len(idx) else None)
        x = np.concatenate([x_labelled, x_pool[idx]])
        y = np.concatenate([y_labelled, pseudo]).astype(y_labelled.dtype)
        model = train(x, y, r)
        history.append(Round(r, int(len(idx)), np.bincount(pseudo, minlength=probs.shape[1]).tolist(),
                             accuracy, eval_fn(model) if eval_fn else None))
    return model, history


def rounds_as_dicts(history: Sequence[Round]) -> list[dict[str, Any]]:
    """The rounds of :func:`self_train` as JSON-ready dictionaries."""
    return [asdict(r) for r in history]


class GaussianNoise(nn.Module):
    """Add ``N(0, std²)`` noise to the input in training mode; the identity in eval mode.

    Args:
        std: the noise's standard deviation (in the units of the input; standardise
            features first so that one number suits every dimension).

    Shapes:
        x: (B, ...). Returns the same shape.

    Reference: the input noise of the noisy student (Xie et al., CVPR 2020,
    https://arxiv.org/abs/1911.04252), here on features instead of images.
    """

    def __init__(self, std: float) -> None:
        super().__init__()
        if std < 0:
            raise ConfigError(f"std={std}: use a non-negative noise level (0 switches the noise off).")
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.std == 0:
            return x
        return x + torch.randn_like(x) * self.std


class NoisyHead(nn.Module):
    """A classifier on fixed features that is noised while it trains: input noise, dropout, then
    a linear layer (``hidden=0``, logistic regression) or a one-hidden-layer MLP.

    With ``dropout=0`` and ``noise_std=0`` it is a plain head (the teacher's); the noise only
    acts in training mode, so a noisy student predicts like a plain one.

    Args:
        in_dim: feature size. num_labels: classes. hidden: hidden units (0: linear).
        dropout: dropout on the input (and the hidden layer; 0: none).
        noise_std: Gaussian input noise (0: none).

    Shapes:
        features: (B, in_dim). Returns logits (B, C).
    """

    def __init__(self, in_dim: int, num_labels: int, *, hidden: int = 0, dropout: float = 0.0,
                 noise_std: float = 0.0) -> None:
        super().__init__()
        from tlutils.methods.features import MLPProbe

        if hidden < 0 or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"hidden={hidden}, dropout={dropout}: use hidden >= 0 and a dropout in [0, 1).")
        self.noise = GaussianNoise(noise_std)
        self.classifier = (nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_labels)) if hidden == 0
                           else MLPProbe(in_dim, hidden=hidden, dropout=dropout, num_labels=num_labels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.noise(features))  # (B, C)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block, then restore the previous setting.

    A head on cached features multiplies matrices of a few hundred rows: more threads do not
    make that faster, and on a busy machine their spinning while they wait can double the CPU
    time of hundreds of small training runs.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_head(x: np.ndarray, y: np.ndarray, *, num_labels: int, steps: int = 300, batch_size: int = 32,
               learning_rate: float = 1e-3, weight_decay: float = 1e-2, hidden: int = 0,
               dropout: float = 0.0, noise_std: float = 0.0, seed: int = 0) -> NoisyHead:
    """A fresh :class:`NoisyHead` trained for about ``steps`` optimizer steps, whatever the data size.

    Training the same number of steps on 50 or on 3,000 rows keeps the arms of a label-budget
    curve comparable (an epoch of 50 rows is two steps). Uses
    :func:`tlutils.methods.features.train_classifier` (AdamW, cross-entropy, in-memory tensors),
    on one thread (:func:`one_thread`).

    Args:
        x, y: features and labels. num_labels: classes. steps: optimizer steps (rounded up
            to whole epochs). batch_size, learning_rate, weight_decay: AdamW's settings.
        hidden, dropout, noise_std: the head (:class:`NoisyHead`). seed: initial weights,
        shuffling and noise.

    Shapes:
        x: (N, D); y: (N,).

    Returns:
        the trained head, in eval mode.
    """
    from tlutils.methods.features import train_classifier

    if steps < 1:
        raise ConfigError(f"steps={steps}: train for at least one optimizer step.")
    torch.manual_seed(seed)
    head = NoisyHead(x.shape[1], num_labels, hidden=hidden, dropout=dropout, noise_std=noise_std)
    epochs = max(1, math.ceil(steps / math.ceil(len(x) / batch_size)))
    with one_thread():
        train_classifier(head, {"features": torch.as_tensor(x, dtype=torch.float32)}, torch.as_tensor(y),
                         epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         weight_decay=weight_decay, seed=seed, score_every_epoch=False)
    return head.eval()


@torch.inference_mode()
def head_probs(head: nn.Module, x: np.ndarray) -> np.ndarray:
    """Class probabilities of a head on features, in eval mode (no noise, no dropout).

    Shapes:
        x: (N, D). Returns (N, C).
    """
    head.eval()
    with one_thread():
        return torch.softmax(head(torch.as_tensor(x, dtype=torch.float32)), dim=-1).numpy()


def with_pseudo_labels(dataset: "Dataset", indices: np.ndarray, labels: np.ndarray) -> "Dataset":
    """The rows ``indices`` of a tokenized dataset, their ``labels`` column replaced by pseudo-labels.

    The rows' own labels (gold ones, when a split's labels were only hidden) are dropped, so a
    student trained on the result can never see them.

    Args:
        dataset: a tokenized split (a Hugging Face ``Dataset``), with or without ``labels``.
        indices: the kept rows (from :func:`pseudo_label` or :func:`balanced_pseudo_labels`).
        labels: their pseudo-labels.

    Shapes:
        indices, labels: (K,). Returns a dataset of K rows.
    """
    indices, labels = np.asarray(indices), np.asarray(labels)
    if indices.shape != labels.shape or indices.ndim != 1:
        raise ConfigError(f"with_pseudo_labels needs as many labels as indices; got {indices.shape} and "
                          f"{labels.shape} (pass the two arrays a selection function returned).")
    if len(dataset) == 0:
        raise ConfigError(EMPTY_POOL)
    with quiet_progress():  # "Flattening the indices" is noise in a chapter
        rows = dataset.select(indices.tolist())
        if "labels" in rows.column_names:
            rows = rows.remove_columns("labels")
        return rows.add_column("labels", labels.astype(int).tolist())
