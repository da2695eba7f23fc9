"""Domain adaptation pieces: the gradient reversal layer, its schedule, a domain-shift score, and DANN.

The book explains the first three in *Terms II: learning across tasks and domains* (sections
``term-gradient-reversal-layer`` and ``term-domain-adaptation``). DANN (Ganin et al., JMLR 2016,
https://arxiv.org/abs/1505.07818) is built and measured in Part IV's *Adapting to an unseen
domain* (``book/diversity/single_source.md``): :class:`DANNModel` (features, a label classifier
and a :class:`DomainDiscriminator` behind :func:`grad_reverse`), :func:`make_dann_loss_fn` (``fit``'s
loss on the paired batches of :mod:`tlutils.methods.domain_data`) and :class:`TrainingProgress`
(the step count ``fit`` reports, from which the loss computes ``lambda = grl_coeff(p)``).

Unlike TLlib's ``GradientReverseLayer``, nothing here keeps state: the reversal coefficient is
computed by the pure function :func:`grl_coeff` from the training progress you pass in, so
evaluation calls cannot advance a hidden schedule.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from tlutils.data import MODEL_INPUTS
from tlutils.errors import ConfigError, DataError
from tlutils.methods.features import mean_pool


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


# --------------------------------------------------------------------------- DANN (Part IV)
#
# Domain-adversarial training: a feature extractor, a label classifier on the source rows, and a
# domain discriminator behind the gradient reversal layer on every row. The chapter
# *Adapting to an unseen domain* (book/diversity/single_source.md) derives and measures it.


class TrainingProgress:
    """How far a ``fit`` run is: optimizer steps done over ``total_steps``, for the reversal schedule.

    Give the same object to ``fit(callbacks=[progress])`` and to the loss function. ``fit``
    calls it after every optimizer step with its ``global_step`` (and ``on_train_begin`` with
    the step a resumed run continues from); the loss reads :attr:`fraction` and computes
    ``lambda = grl_coeff(fraction)``. The count is ``fit``'s, so a forward pass, an evaluation or
    a second loss call never advances it (TLlib's ``GradientReverseLayer`` counts its own
    forward calls, evaluation included).

    Args:
        total_steps: the optimizer steps of the run (:func:`total_optimizer_steps`).
    """

    def __init__(self, total_steps: int) -> None:
        if total_steps < 1:
            raise ConfigError(f"total_steps={total_steps}: pass the run's number of optimizer steps (>= 1).")
        self.total_steps = int(total_steps)
        self.step = 0

    def on_train_begin(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("global_step", 0))

    def __call__(self, state: dict[str, Any]) -> None:
        self.step = int(state["global_step"])

    @property
    def fraction(self) -> float:
        """Steps done over total steps, clipped to [0, 1]."""
        return min(1.0, max(0.0, self.step / self.total_steps))

    def coeff(self, high: float = 1.0, gamma: float = 10.0) -> float:
        """The reversal strength now: :func:`grl_coeff` of :attr:`fraction`."""
        return grl_coeff(self.fraction, gamma=gamma, high=high)


def total_optimizer_steps(batches_per_epoch: int, epochs: int, grad_accum_steps: int = 1,
                          max_steps: Optional[int] = None) -> int:
    """The optimizer steps ``fit`` will take: ``epochs * ceil(batches / accumulation)``, capped by
    ``max_steps`` (what :class:`TrainingProgress` divides by)."""
    steps = epochs * math.ceil(batches_per_epoch / grad_accum_steps)
    return min(steps, max_steps) if max_steps is not None else steps


def encode(encoder: torch.nn.Module, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
           token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean-pooled last states of ``encoder`` (a Hugging Face encoder or a ``CachedFeatureEncoder``).

    Shapes:
        input_ids (B, T) -> (B, H).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
    states = encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state  # (B, T, H)
    return mean_pool(states, attention_mask)  # (B, H)


class DomainDiscriminator(torch.nn.Module):
    """A small MLP that tells the target's rows from the sources': one logit per row.

    It returns logits, not probabilities: ``binary_cross_entropy_with_logits`` is safe under
    autocast, a sigmoid followed by ``binary_cross_entropy`` is not.

    Args:
        in_features: width of the features it reads.
        hidden: width of its hidden layer.
        dropout: dropout after the hidden layer.

    Shapes:
        features (B, H) -> logits (B,) (positive: "target").

    Reference: Ganin et al., *Domain-Adversarial Training of Neural Networks*, JMLR 17, 2016,
    https://arxiv.org/abs/1505.07818 (section 4, the domain regressor).
    """

    def __init__(self, in_features: int, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(in_features, hidden), torch.nn.ReLU(),
                                       torch.nn.Dropout(dropout), torch.nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)  # (B,)


class DANNModel(torch.nn.Module):
    """DANN: an encoder, a label classifier, and a domain discriminator behind gradient reversal.

    ``forward`` mean-pools the encoder's states into features ``z``, classifies them, and, when
    ``grl_coeff`` is given, also returns the discriminator's logits on ``grad_reverse(z,
    grl_coeff)``: the discriminator descends its loss, the layers below the reversal ascend it.
    Prediction (``model(**inputs).logits``) never touches the discriminator.

    Args:
        encoder: returns ``last_hidden_state``: a Hugging Face encoder (``load_model(...).base_model``,
            trained end to end) or a :class:`tlutils.methods.multitask.CachedFeatureEncoder`
            (frozen features and a trainable adapter layer).
        num_labels: classes of the task.
        discriminator_hidden: width of the discriminator's hidden layer.
        dropout: before the label classifier and inside the discriminator.

    Shapes:
        input_ids, attention_mask: (B, T) -> ``logits`` (B, C), ``features`` (B, H),
        ``domain_logits`` (B,) (with ``grl_coeff``), ``loss`` (with ``labels``, -100 ignored).

    Reference: Ganin et al., JMLR 2016, https://arxiv.org/abs/1505.07818 (Figure 1, Algorithm 1).
    """

    def __init__(self, encoder: torch.nn.Module, num_labels: int, *, discriminator_hidden: int = 128,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        width = encoder.config.hidden_size
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(width, num_labels)
        self.discriminator = DomainDiscriminator(width, discriminator_hidden, dropout)
        self.config = SimpleNamespace(hidden_size=width, num_labels=num_labels,
                                      pad_token_id=getattr(encoder.config, "pad_token_id", 0) or 0,
                                      model_type=getattr(encoder.config, "model_type", None))

    def representation(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                       token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The features ``z``: mean-pooled last states. (B, T) -> (B, H)."""
        return encode(self.encoder, input_ids, attention_mask, token_type_ids)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                grl_coeff: Optional[float] = None, **_: Any) -> SimpleNamespace:
        z = self.representation(input_ids, attention_mask, token_type_ids)  # (B, H)
        logits = self.classifier(self.dropout(z))  # (B, C)
        out = SimpleNamespace(logits=logits, features=z, domain_logits=None, loss=None)
        if grl_coeff is not None:
            out.domain_logits = self.discriminator(grad_reverse(z, grl_coeff))  # (B,)
        if labels is not None:
            out.loss = label_loss(logits, labels)
        return out


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the rows with a label (``-100`` rows ignored), in float32; exactly 0
    (with a gradient path) when no row has one.

    Shapes:
        logits (B, C), labels (B,) -> scalar.
    """
    if not bool((labels != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=-100)


def make_dann_loss_fn(progress: TrainingProgress, *, max_coeff: float = 1.0, gamma: float = 10.0,
                      domain_weight: float = 1.0, num_sources: Optional[int] = None
                      ) -> Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]:
    """``fit``'s loss for :class:`DANNModel` on :class:`~tlutils.methods.domain_data.SourceTargetCollator` batches.

    ``loss = CE(labels | source rows) + domain_weight * BCE(discriminator(GRL(z, lambda)), is_target)``
    with ``lambda = grl_coeff(progress.fraction, gamma, max_coeff)``: the task loss sees the
    source rows only (target rows are masked to -100 here as well as in the collator, so a
    target label can never reach it), the domain loss every row. ``domain_weight=0`` is the
    source-only arm on the very same batches: the discriminator is not run, and the target rows
    reach no loss.

    Args:
        progress: the :class:`TrainingProgress` that is also in ``fit(callbacks=[...])``.
        max_coeff: the limit of lambda (1 in the paper; chosen on the sources' validation data here).
        gamma: how fast lambda rises (10 in the paper).
        domain_weight: weight of the domain loss (0: source-only).
        num_sources: when given, rows with ``domain_id == num_sources`` are target rows too,
            whatever ``is_target`` says.

    Returns:
        ``loss_fn(model, batch) -> (loss, stats)``; stats: ``task_loss``, ``lambda`` and, with a
        domain loss, ``domain_loss`` and ``domain_accuracy`` (the discriminator's, on the batch).

    Reference: Ganin et al., JMLR 2016, https://arxiv.org/abs/1505.07818 (equations 9-10, Algorithm 1;
    the schedule in section 5.2.2).
    """
    if domain_weight < 0 or max_coeff < 0:
        raise ConfigError(f"domain_weight={domain_weight}, max_coeff={max_coeff}: use values >= 0.")

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "is_target" not in batch:
            raise DataError("DANN batches need is_target: train on a SourceTargetDataset with "
                            "SourceTargetBatchSampler and SourceTargetCollator.")
        target = batch["is_target"].bool()  # (B,)
        if num_sources is not None:
            target = target | (batch["domain_id"] == num_sources)
        labels = batch["labels"].masked_fill(target, -100)  # (B,) the target's labels never reach the loss
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        adversarial = domain_weight > 0
        coeff = progress.coeff(high=max_coeff, gamma=gamma) if adversarial else 0.0
        out = model(**inputs, grl_coeff=coeff if adversarial else None)
        task = label_loss(out.logits, labels)
        stats = {"task_loss": float(task.detach()), "lambda": coeff}
        if not adversarial:
            return task, stats
        d_logits = out.domain_logits.float()  # (B,)
        domain = F.binary_cross_entropy_with_logits(d_logits, target.float())
        stats.update(domain_loss=float(domain.detach()),
                     domain_accuracy=float(((d_logits > 0) == target).float().mean()))
        return task + domain_weight * domain, stats

    return loss_fn
