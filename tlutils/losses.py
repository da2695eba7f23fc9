"""Cross-entropy, done stably, and label smoothing as a ``fit`` loss.

The chapter *Terms I: from text to a trained classifier* derives each function (sections
*Label smoothing* and *Cross-entropy*): the log-sum-exp trick, ``CE(p, q) = H(p) + KL(p‖q)``,
and what smoothing the targets does to a classifier's confidence.

References: label smoothing, Szegedy et al., "Rethinking the Inception Architecture for
Computer Vision" (2016), https://arxiv.org/abs/1512.00567, section 7; soft targets and
distillation, Hinton et al. (2015), https://arxiv.org/abs/1503.02531.
"""

from __future__ import annotations

from typing import Callable

import torch

LossFn = Callable[[torch.nn.Module, dict], "tuple[torch.Tensor, dict[str, float]]"]


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``z - logsumexp(z)`` with the maximum subtracted first, so ``exp`` never overflows.

    Shapes:
        logits ``(..., C)``; the result ``(..., C)``.
    """
    top = logits.amax(dim=-1, keepdim=True).detach()  # (..., 1); a constant for the gradient
    shifted = logits - top  # (..., C), every entry <= 0
    return shifted - shifted.exp().sum(dim=-1, keepdim=True).log()


def stable_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy ``-log softmax(logits)[label]`` through :func:`log_softmax`; finite
    for any finite logits (``±1e4`` included). Equals ``F.cross_entropy(logits, labels)``.

    Shapes:
        logits ``(N, C)``, labels ``(N,)`` (int); a scalar result.
    """
    return -log_softmax(logits).gather(-1, labels[:, None]).mean()


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy ``-Σ_c p_c log q_c`` between target distributions ``p`` and the
    model's ``q = softmax(logits)``: the loss of label smoothing and of distillation.

    Shapes:
        logits ``(N, C)``, target_probs ``(N, C)`` (rows sum to 1); a scalar result.
    """
    return -(target_probs * log_softmax(logits)).sum(dim=-1).mean()


def entropy(p: torch.Tensor) -> torch.Tensor:
    """``H(p) = -Σ p log p`` (nats) over the last dimension, with ``0 log 0 = 0``."""
    return -torch.special.xlogy(p, p).sum(dim=-1)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``KL(p‖q) = Σ p (log p - log q)`` (nats) over the last dimension; not symmetric."""
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(dim=-1)


def smooth_labels(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Smoothed one-hot targets: ``(1 - ε)`` on the gold class plus ``ε / C`` on every class.

    Shapes:
        labels ``(N,)``; the result ``(N, C)``, rows summing to 1, the gold entry
        ``1 - ε + ε / C``.
    """
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing={smoothing}: use a value in [0, 1] (0.1 is usual).")
    one_hot = torch.nn.functional.one_hot(labels, num_classes).float()  # (N, C)
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def label_smoothing_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy against :func:`smooth_labels` targets. ``smoothing=0`` is plain
    cross-entropy; the loss is minimal when the predicted probability of the gold class is
    ``1 - ε + ε / C`` (and ``ε / C`` elsewhere), so it no longer pushes logits to infinity.
    Equals ``F.cross_entropy(logits, labels, label_smoothing=smoothing)``.

    Args:
        logits: the model's scores.
        labels: gold class ids.
        smoothing: ε in [0, 1].

    Shapes:
        logits ``(N, C)``, labels ``(N,)``; a scalar result.

    Reference: Szegedy et al. (2016), https://arxiv.org/abs/1512.00567, section 7.
    """
    return soft_cross_entropy(logits.float(), smooth_labels(labels, logits.shape[-1], smoothing))


def label_smoothing_loss_fn(smoothing: float) -> LossFn:
    """A ``loss_fn(model, batch) -> (loss, stats)`` for :func:`tlutils.train.fit` that trains
    a classifier with :func:`label_smoothing_loss`.

    The stats hold ``confidence``, the mean predicted probability of the predicted class on
    the training batch (``fit`` averages it per epoch into its history).

    Example:
        >>> history = fit(model, train, validation, task=mrpc, loss_fn=label_smoothing_loss_fn(0.1))
    """

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float()  # (B, C)
        loss = label_smoothing_loss(logits, batch["labels"], smoothing)
        confidence = logits.detach().softmax(-1).amax(-1).mean().item()
        return loss, {"confidence": confidence}

    return loss_fn
