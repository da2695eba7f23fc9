"""Contrastive objectives on sentence embeddings: in-batch InfoNCE and the triplet loss
(mean pooling, re-exported here, is defined in :mod:`tlutils.methods.features`).

The book explains them in *Terms II: learning across tasks and domains* (sections
``term-contrastive-learning`` and ``term-triplet-loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tlutils.errors import ConfigError
from tlutils.methods.features import mean_pool

__all__ = ["info_nce", "mean_pool", "triplet_loss"]  # mean_pool lives in tlutils.methods.features


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """In-batch InfoNCE: ``a[i]`` must pick its partner ``b[i]`` among all rows of ``b``.

    The logits are cosine similarities divided by ``temperature``; the loss is the
    cross-entropy of row ``i`` against class ``i`` (the diagonal), averaged over the batch.
    The other ``B - 1`` rows of ``b`` are the negatives.

    Args:
        a: embeddings of the anchors (one view).
        b: embeddings of their positives (the other view), row-aligned with ``a``.
        temperature: the softmax temperature (SimCSE uses 0.05).

    Shapes:
        a, b: (B, H). Returns a scalar.

    References: van den Oord, Li & Vinyals, *Representation Learning with Contrastive
    Predictive Coding*, 2018, https://arxiv.org/abs/1807.03748; Gao, Yao & Chen, *SimCSE*,
    EMNLP 2021, https://arxiv.org/abs/2104.08821 (equation 1).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ConfigError(f"info_nce needs two (B, H) tensors of the same shape; got "
                          f"{tuple(a.shape)} and {tuple(b.shape)}.")
    if temperature <= 0:
        raise ConfigError(f"temperature={temperature}: use a positive number.")
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature  # (B, B)
    targets = torch.arange(a.shape[0], device=a.device)  # (B,): the partner is on the diagonal
    return F.cross_entropy(logits, targets)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = 0.5, reduction: str = "mean") -> torch.Tensor:
    """``max(0, d(a, p) - d(a, n) + margin)`` with Euclidean distances ``d``.

    Zero once the negative is farther from the anchor than the positive by at least
    ``margin``; only the triplets that violate the margin produce gradients.

    Args:
        anchor, positive, negative: embeddings (L2-normalise them first for distances in [0, 2]).
        margin: the required gap between the two distances, >= 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (one loss per triplet).

    Shapes:
        anchor, positive, negative: (N, H). Returns a scalar, or (N,) with ``"none"``.

    Reference: Schroff, Kalenichenko & Philbin, *FaceNet*, CVPR 2015,
    https://arxiv.org/abs/1503.03832 (equation 1, with squared distances there).
    """
    if not anchor.shape == positive.shape == negative.shape:
        raise ConfigError(f"triplet_loss needs three tensors of the same shape; got "
                          f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}.")
    if margin < 0:
        raise ConfigError(f"margin={margin}: use a margin >= 0.")
    d_pos = torch.linalg.vector_norm(anchor - positive, dim=-1)  # (N,)
    d_neg = torch.linalg.vector_norm(anchor - negative, dim=-1)  # (N,)
    losses = F.relu(d_pos - d_neg + margin)  # (N,)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    raise ConfigError(f"reduction={reduction!r}: use 'mean', 'sum' or 'none'.")
