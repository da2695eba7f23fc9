"""Domain adaptation pieces: the gradient reversal layer, its schedule, and a domain-shift score.

The book explains them in *Terms II: learning across tasks and domains* (sections
``term-gradient-reversal-layer`` and ``term-domain-adaptation``).

Unlike TLlib's ``GradientReverseLayer``, nothing here keeps state: the reversal coefficient is
computed by the pure function :func:`grl_coeff` from the training progress you pass in, so
evaluation calls cannot advance a hidden schedule.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from tlutils.errors import ConfigError


class GradReverse(torch.autograd.Function):
    """Identity in the forward pass, gradient times ``-coeff`` in the backward pass.

    Reference: Ganin & Lempitsky, *Unsupervised Domain Adaptation by Backpropagation*, ICML
    2015, https://arxiv.org/abs/1409.7495 (section 3.2). Use :func:`grad_reverse`.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)  # a new tensor (not x itself), so autograd records this node

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coeff * grad_output, None  # no gradient for coeff


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Gradient reversal: returns ``x`` unchanged; gradients flowing back through it are
    multiplied by ``-coeff``.

    Put it between a feature extractor and a domain classifier: the classifier learns to tell
    the domains apart while the features are pushed to make that impossible (DANN).

    Args:
        x: any tensor, e.g. pooled features.
        coeff: the reversal strength lambda >= 0 (see :func:`grl_coeff` for the schedule).

    Shapes:
        x: any shape; the output has the same shape.

    Returns:
        a tensor equal to ``x``.

    Reference: Ganin & Lempitsky 2015, https://arxiv.org/abs/1409.7495.

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> grad_reverse(x, 0.5).sum().backward()
        >>> x.grad
        tensor([-0.5000, -0.5000])
    """
    if coeff < 0:
        raise ConfigError(f"coeff={coeff}: the reversal strength must be >= 0 (the sign is built in).")
    return GradReverse.apply(x, coeff)


def grl_coeff(progress: float, gamma: float = 10.0, high: float = 1.0) -> float:
    """The reversal strength lambda as a function of training progress:
    ``high * (2 / (1 + exp(-gamma * progress)) - 1)``.

    It starts at 0 (the domain classifier's noisy early gradients do not disturb the features)
    and rises smoothly towards ``high``.

    Args:
        progress: fraction of training done, in [0, 1] (e.g. ``step / total_steps``).
        gamma: how fast lambda rises (10 in the paper).
        high: the limit of lambda (1 in the paper).

    Returns:
        lambda in ``[0, high)``.

    Reference: Ganin & Lempitsky 2015, https://arxiv.org/abs/1409.7495 (section 5.2.2).
    """
    if not 0.0 <= progress <= 1.0:
        raise ConfigError(f"progress={progress}: pass the fraction of training done, in [0, 1].")
    return float(high * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0))


def proxy_a_distance(error: float) -> float:
    """The proxy A-distance ``2 (1 - 2 error)`` of a domain classifier with test ``error``.

    0 when the classifier cannot tell the domains apart (error 0.5), 2 when it never errs.

    Reference: Ben-David, Blitzer, Crammer & Pereira, *Analysis of Representations for Domain
    Adaptation*, NeurIPS 2006; Ben-David et al., *A theory of learning from different
    domains*, Machine Learning 2010.
    """
    return float(2.0 * (1.0 - 2.0 * error))


def domain_shift_score(source: np.ndarray, target: np.ndarray, *, folds: int = 5,
                       seed: int = 0, max_iter: int = 2000, C: Optional[float] = 1.0) -> dict[str, float]:
    """How well a linear classifier tells two domains apart from their features.

    Trains a logistic-regression *domain classifier* (label 0 = source, 1 = target) with
    stratified ``folds``-fold cross-validation and reports its held-out accuracy and the proxy
    A-distance (:func:`proxy_a_distance`) of its error.

    Args:
        source: features of source-domain examples.
        target: features of target-domain examples.
        folds: cross-validation folds.
        seed: seed of the fold split.
        max_iter: iterations of the solver.
        C: inverse regularisation strength of the logistic regression.

    Shapes:
        source: (N_s, D); target: (N_t, D).

    Returns:
        ``{"domain_accuracy", "domain_error", "proxy_a_distance"}`` (plain floats).

    Reference: Ben-David et al. 2006/2010 (see :func:`proxy_a_distance`).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise ConfigError(f"domain_shift_score needs two (N, D) arrays with the same D; got "
                          f"{source.shape} and {target.shape}.")
    x = np.concatenate([source, target])  # (N_s + N_t, D)
    y = np.concatenate([np.zeros(len(source), dtype=int), np.ones(len(target), dtype=int)])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    accuracy = float(cross_val_score(clf, x, y, cv=cv, scoring="accuracy").mean())
    return {"domain_accuracy": accuracy, "domain_error": 1.0 - accuracy,
            "proxy_a_distance": proxy_a_distance(1.0 - accuracy)}
