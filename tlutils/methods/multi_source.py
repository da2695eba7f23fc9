"""Many sources, one target: multi-source domain adaptation for :func:`tlutils.train.fit`.

Several labelled source domains and one target domain with unlabelled text only (the
protocol of :mod:`tlutils.methods.domain_data`). The pieces, each trained through ``fit``
with the paired source/target batches of ``domain_data``:

- :class:`SourceClassifier` with :func:`make_source_loss_fn` -- one head on the pooled sources
  (the baseline), or on a weighted mix of them (:func:`similarity_weights`: each source's share
  of the loss grows with how often a domain classifier mistakes it for the target);
- :class:`MDAN` with :func:`make_mdan_loss_fn` -- one domain discriminator *per source*, each
  shown only its source's rows and the target's, behind the gradient reversal layer; the
  sources' losses are combined by a smoothed maximum (Zhao et al. 2018);
- :class:`MixtureOfExperts` with :func:`make_moe_loss_fn` -- one expert head per source plus a
  shared head, and a gate that weights them per example: uniform (MoE-Avg) or attention over
  the experts (MoE-Att). The gate learns on the sources only, by leave-one-source-out
  meta-training (Guo et al. 2018): on a source row, the row's own expert is masked out of the
  mixture, so the gate learns to combine the *other* experts for a domain none of them saw --
  the situation it meets on the target;
- :class:`tlutils.methods.domain.TrainingProgress` (DANN's, shared) -- ``fit``'s callback that
  tells the MDAN loss how far training is, for the reversal schedule ``grl_coeff``;
- :func:`source_subsets` and :func:`equal_share_rows` -- the source sets of the diversity
  experiments (every subset of a size, or a seeded sample; equal rows per source).

Models take a batch's ``input_ids``/``attention_mask`` and pool the encoder's states by their
mask, so the same classes run on a Hugging Face encoder (end to end) and on a
:class:`tlutils.methods.multitask.CachedFeatureEncoder` over frozen features (``input_ids``
``[[i]]`` is row ``i`` of the table).

The chapter *Many sources, one target* (``book/diversity/multi_source.md``) derives and
measures them.

References: Zhao, Zhang, Wu, Moura, Costeira & Gordon, *Adversarial Multiple Source Domain
Adaptation*, NeurIPS 2018, https://arxiv.org/abs/1805.09198; Guo, Shah & Barzilay,
*Multi-Source Domain Adaptation with Mixture of Experts*, EMNLP 2018,
https://arxiv.org/abs/1809.02256; Wright & Augenstein, *Transformer Based Multi-Source Domain
Adaptation*, EMNLP 2020, https://arxiv.org/abs/2009.07806; Ben-David et al., *A theory of
learning from different domains*, Machine Learning 2010 (the proxy A-distance).
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlutils.data import MODEL_INPUTS, make_loader
from tlutils.errors import ConfigError, DataError
from tlutils.methods.domain import DomainDiscriminator, TrainingProgress, domain_shift_score, encode, grad_reverse

LossFn = Callable[[nn.Module, dict], "tuple[torch.Tensor, dict[str, float]]"]
GATES = ("average", "attention")
AGGREGATIONS = ("soft", "hard")
IGNORE_INDEX = -100  # the collator's label of a target row


# --------------------------------------------------------------------------- checks and source sets


def check_source_weights(weights: Union[Mapping[str, float], Sequence[float]],
                         sources: Sequence[str]) -> np.ndarray:
    """One non-negative weight per source, normalised to sum to 1, in the order of ``sources``.

    Args:
        weights: ``{source: weight}`` naming every source once, or a sequence in the order of
            ``sources``.
        sources: the source domains.

    Raises:
        ConfigError: weights that do not match the sources (a missing or extra name, a wrong
            count), a negative or non-finite weight, or all weights zero (one line with the fix).
    """
    sources = list(sources)
    if isinstance(weights, Mapping):
        missing = [s for s in sources if s not in weights]
        extra = [k for k in weights if k not in sources]
        if missing or extra:
            raise ConfigError(f"weights name {sorted(weights)} but the sources are {sources}: give one weight "
                              f"per source (similarity_weights(...) returns them keyed by source).")
        values = np.array([float(weights[s]) for s in sources])
    else:
        values = np.asarray(list(weights), dtype=float)
        if values.shape != (len(sources),):
            raise ConfigError(f"{values.size} weights for {len(sources)} sources {sources}: pass one weight "
                              f"per source, in the order of the sources.")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ConfigError(f"weights {values.tolist()}: use finite, non-negative weights (one per source).")
    if values.sum() <= 0:
        raise ConfigError("All source weights are zero: give at least one source a positive weight.")
    return values / values.sum()


def similarity_weights(source_features: Mapping[str, np.ndarray], target_features: np.ndarray, *,
                       floor: float = 1e-3, seed: int = 0, folds: int = 5
                       ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Weights of the sources by their measured closeness to the target (unlabelled features only).

    For each source a domain classifier tells its rows from the target's
    (:func:`tlutils.methods.domain.domain_shift_score`); its cross-validated error ``e`` gives the
    proxy A-distance ``d = 2 (1 - 2 e)``. The closeness ``2 - d = 4 e`` is how often the
    classifier mistakes the source for the target (0 when it never does, 2 when the two are
    indistinguishable); the weights are the closenesses (at least ``floor``), normalised to sum to 1.

    Args:
        source_features: ``{source: (N_s, D) features}``.
        target_features: (N_t, D) features of the target's unlabelled text.
        floor: the smallest closeness a source keeps (so no source gets weight 0).
        seed, folds: of the domain classifier's cross-validation.

    Returns:
        ``(weights, scores)``: ``{source: weight}`` summing to 1, and each source's
        ``domain_shift_score`` (``domain_accuracy``, ``domain_error``, ``proxy_a_distance``).

    Reference: Ben-David et al., *Analysis of Representations for Domain Adaptation*, NeurIPS
    2006 (the proxy A-distance); weighting sources by a domain similarity follows the
    multi-source literature, e.g. Guo et al. 2018 (https://arxiv.org/abs/1809.02256).
    """
    if not source_features:
        raise ConfigError("similarity_weights needs at least one source: {'books': features, ...}.")
    scores = {s: domain_shift_score(np.asarray(x), np.asarray(target_features), folds=folds, seed=seed)
              for s, x in source_features.items()}
    closeness = {s: max(2.0 - v["proxy_a_distance"], floor) for s, v in scores.items()}
    total = sum(closeness.values())
    return {s: c / total for s, c in closeness.items()}, scores


def source_subsets(sources: Sequence[str], size: int, *, max_subsets: Optional[int] = None,
                   seed: int = 0) -> list[tuple[str, ...]]:
    """The source sets of one size: every combination (in order), or a seeded sample of them.

    Args:
        sources: the available source domains (the target is not among them).
        size: sources per set, ``1 <= size <= len(sources)``.
        max_subsets: keep at most this many sets (a seeded sample, in combination order).
        seed: the seed of the sample.
    """
    sources = tuple(sources)
    if len(set(sources)) != len(sources):
        raise ConfigError(f"sources {list(sources)} names a domain twice: list each source once.")
    if not 1 <= size <= len(sources):
        raise ConfigError(f"size={size}: choose between 1 and the number of sources ({len(sources)}).")
    subsets = list(itertools.combinations(sources, size))
    if max_subsets is not None and max_subsets < len(subsets):
        if max_subsets < 1:
            raise ConfigError(f"max_subsets={max_subsets}: keep at least one subset, or None for all.")
        keep = np.sort(np.random.default_rng(seed).permutation(len(subsets))[:max_subsets])
        subsets = [subsets[i] for i in keep]
    return subsets


def equal_share_rows(domain_ids: np.ndarray, chosen: Sequence[int], total: int, *, seed: int = 0) -> np.ndarray:
    """Row indices of ``total`` rows split as evenly as possible between the ``chosen`` domains.

    Each chosen domain gives ``total // k`` rows (the first ``total % k`` domains one more), a
    seeded random subset of its rows; the result is sorted. A set of one source and a set of
    three then train on the same number of rows, so a difference between them is one of
    diversity, not of data size.

    Raises:
        DataError: a chosen domain has fewer rows than its share (use a smaller ``total``).
    """
    domain_ids = np.asarray(domain_ids)
    chosen = list(chosen)
    if not chosen:
        raise ConfigError("equal_share_rows needs at least one chosen domain.")
    if total < len(chosen):
        raise ConfigError(f"total={total} rows cannot be split between {len(chosen)} domains: use total >= {len(chosen)}.")
    rng = np.random.default_rng(seed)
    picked = []
    for position, domain in enumerate(chosen):
        share = total // len(chosen) + (1 if position < total % len(chosen) else 0)
        rows = np.flatnonzero(domain_ids == domain)
        if len(rows) < share:
            raise DataError(f"Domain {domain} has {len(rows)} rows, fewer than its share {share}: "
                            f"use total <= {len(rows) * len(chosen)}.")
        picked.append(rng.choice(rows, size=share, replace=False))
    return np.sort(np.concatenate(picked))


# --------------------------------------------------------------------------- models


def _model_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch and batch[k] is not None}


def _subset(batch: Mapping[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """The batch restricted to ``rows`` (a (B,) bool mask) in every per-example tensor."""
    n = len(rows)
    return {k: (v[rows] if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n else v) for k, v in batch.items()}


class SourceClassifier(nn.Module):
    """An encoder and one linear head: the pooled-sources baseline, a weighted mix, one source, the oracle.

    Args:
        encoder: returns ``last_hidden_state`` (a Hugging Face encoder such as
            ``load_model(...).base_model``, or a ``CachedFeatureEncoder``).
        num_labels: classes.
        dropout: before the head.

    Shapes:
        input_ids (B, T) -> logits (B, C).
    """

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def representation(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                       token_type_ids: Optional[torch.Tensor] = None, **_: Any) -> torch.Tensor:
        return encode(self.encoder, input_ids, attention_mask, token_type_ids)  # (B, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, **_: Any) -> SimpleNamespace:
        z = self.representation(input_ids, attention_mask, token_type_ids)  # (B, H)
        return SimpleNamespace(logits=self.head(self.dropout(z)))  # (B, C)


class MDAN(nn.Module):
    """Multi-source domain-adversarial network: a shared encoder, one label classifier, and one
    binary domain discriminator per source (its source vs the target).

    Each discriminator is DANN's :class:`tlutils.methods.domain.DomainDiscriminator` and returns
    logits (BCE-with-logits is safe under autocast). Train it with
    :func:`make_mdan_loss_fn`, which shows discriminator ``k`` only the rows of source ``k`` and
    the target's, behind the gradient reversal layer.

    Args:
        encoder: as in :class:`SourceClassifier`.
        num_labels: classes.
        num_sources: sources (= discriminators).
        hidden: width of each discriminator's hidden layer.
        dropout: before the label classifier.

    Shapes:
        input_ids (B, T) -> logits (B, C); ``discriminate(z, k)``: (N, H) -> (N,).

    Reference: Zhao et al., *Adversarial Multiple Source Domain Adaptation*, NeurIPS 2018,
    https://arxiv.org/abs/1805.09198 (MDAN, Figure 1 and Algorithm 1).
    """

    def __init__(self, encoder: nn.Module, num_labels: int, num_sources: int, hidden: int = 128,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if num_sources < 1:
            raise ConfigError(f"num_sources={num_sources}: MDAN needs at least one source.")
        self.encoder = encoder
        width = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_labels)
        self.discriminators = nn.ModuleList(  # DANN's discriminator (tlutils.methods.domain), one per source
            DomainDiscriminator(width, hidden, dropout=0.0) for _ in range(num_sources))
        self.num_sources = num_sources

    def representation(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                       token_type_ids: Optional[torch.Tensor] = None, **_: Any) -> torch.Tensor:
        return encode(self.encoder, input_ids, attention_mask, token_type_ids)  # (B, H)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(z))  # (B, C)

    def discriminate(self, z: torch.Tensor, source: int) -> torch.Tensor:
        """Discriminator ``source``'s logit that each row of ``z`` is the target's: (N, H) -> (N,)."""
        return self.discriminators[source](z)  # (N,)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=self.classify(self.representation(input_ids, attention_mask, token_type_ids)))


def gate_weights(scores: torch.Tensor, allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A softmax over the experts of each example, with the masked-out experts at exactly 0.

    Args:
        scores: the gate's score of every expert for every example (zeros: a uniform average).
        allowed: which experts may take part (True) for each example; None: all.

    Shapes:
        scores, allowed: (B, E) -> weights (B, E), each row non-negative and summing to 1.

    Raises:
        ConfigError: an example with no allowed expert.
    """
    if allowed is None:
        return torch.softmax(scores.float(), dim=-1)
    if allowed.shape != scores.shape:
        raise ConfigError(f"allowed has shape {tuple(allowed.shape)}, the scores {tuple(scores.shape)}: one flag per "
                          f"example and expert.")
    if bool((~allowed).all(-1).any()):
        raise ConfigError("An example has no allowed expert: leave at least one expert in every row's mixture.")
    masked = scores.float().masked_fill(~allowed, float("-inf"))
    return torch.softmax(masked, dim=-1)  # (B, E); exp(-inf) = 0


def leave_own_out(domain_id: torch.Tensor, num_sources: int, num_experts: int) -> torch.Tensor:
    """Which experts a row's mixture may use: all but its own source's expert.

    Rows of source ``k`` (``domain_id == k < num_sources``) lose expert ``k``; target rows
    (``domain_id == num_sources``) keep every expert. Experts ``num_sources..`` (the shared
    head) are never masked.

    Shapes:
        domain_id (B,) -> allowed (B, E) bool.
    """
    allowed = torch.ones(len(domain_id), num_experts, dtype=torch.bool, device=domain_id.device)
    own = domain_id < num_sources
    allowed[own.nonzero().squeeze(-1), domain_id[own]] = False
    return allowed


class MixtureOfExperts(nn.Module):
    """One expert head per source, a shared head, and a gate that mixes their predictions per example.

    The encoder's pooled state ``z`` feeds every expert ``e``: a hidden layer ``h_e = relu(W_e z)``
    and an output layer, giving class probabilities ``p_e``. The prediction is
    ``p = sum_e g_e p_e`` with gate weights ``g`` (non-negative, summing to 1 per example):

    - ``gate="average"`` (MoE-Avg): ``g_e = 1 / E`` over the allowed experts;
    - ``gate="attention"`` (MoE-Att): scaled dot-product attention, query from ``z``, one key
      per expert from ``h_e``: ``g = softmax(q . k_e / sqrt(d))``.

    ``forward(..., allowed=mask)`` leaves experts out per example (leave-one-source-out
    meta-training, :func:`make_moe_loss_fn`); at prediction time every expert takes part.

    Args:
        encoder: as in :class:`SourceClassifier` (shared by the experts: the heads differ).
        num_labels: classes.
        num_sources: source experts; with ``shared=True`` one more expert learns every source.
        gate: ``"average"`` or ``"attention"``.
        hidden: width of each expert's hidden layer (and of the attention's queries and keys).
        dropout: inside each expert.
        shared: add a shared expert trained on every source (Wright & Augenstein 2020 have
            one). Off by default: under leave-one-source-out meta-training the shared expert has
            seen every row's own domain, so the gate learns to trust it and the meta-training
            no longer imitates an unseen domain (the chapter measures this).

    Shapes:
        input_ids (B, T) -> logits (B, C) (log of the mixture's probabilities), gate (B, E),
        expert_logits (B, E, C), with ``E = num_sources + shared``.

    Reference: Guo, Shah & Barzilay, EMNLP 2018, https://arxiv.org/abs/1809.02256 (mixture of
    experts, meta-training); Wright & Augenstein, EMNLP 2020, https://arxiv.org/abs/2009.07806
    (MoE-Avg, MoE-Att with pretrained transformers).
    """

    def __init__(self, encoder: nn.Module, num_labels: int, num_sources: int, *, gate: str = "attention",
                 hidden: int = 128, dropout: float = 0.1, shared: bool = False) -> None:
        super().__init__()
        if gate not in GATES:
            raise ConfigError(f"gate={gate!r}: use one of {', '.join(GATES)}.")
        if num_sources < 1:
            raise ConfigError(f"num_sources={num_sources}: a mixture needs at least one source expert.")
        self.encoder = encoder
        width = encoder.config.hidden_size
        self.num_sources, self.gate, self.hidden = num_sources, gate, hidden
        self.num_experts = num_sources + int(shared)
        self.expert_hidden = nn.ModuleList(
            nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)) for _ in range(self.num_experts))
        self.expert_out = nn.ModuleList(nn.Linear(hidden, num_labels) for _ in range(self.num_experts))
        if gate == "attention":
            self.query = nn.Linear(width, hidden, bias=False)
            self.key = nn.Linear(hidden, hidden, bias=False)

    def experts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every expert's hidden states and logits: (B, H) -> (B, E, h), (B, E, C)."""
        hidden = torch.stack([layer(z) for layer in self.expert_hidden], dim=1)  # (B, E, h)
        logits = torch.stack([out(hidden[:, e]) for e, out in enumerate(self.expert_out)], dim=1)  # (B, E, C)
        return hidden, logits

    def gate_scores(self, z: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The gate's scores before the softmax: (B, H), (B, E, h) -> (B, E)."""
        if self.gate == "average":
            return torch.zeros(hidden.shape[:2], device=z.device)
        q = self.query(z)  # (B, h)
        k = self.key(hidden)  # (B, E, h)
        return (k * q.unsqueeze(1)).sum(-1) / math.sqrt(self.hidden)  # (B, E)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, allowed: Optional[torch.Tensor] = None,
                **_: Any) -> SimpleNamespace:
        z = encode(self.encoder, input_ids, attention_mask, token_type_ids)  # (B, H)
        hidden, expert_logits = self.experts(z)  # (B, E, h), (B, E, C)
        gate = gate_weights(self.gate_scores(z, hidden), allowed)  # (B, E)
        probs = (gate.unsqueeze(-1) * torch.softmax(expert_logits.float(), -1)).sum(1)  # (B, C)
        return SimpleNamespace(logits=torch.log(probs.clamp_min(1e-12)), gate=gate, expert_logits=expert_logits)


# --------------------------------------------------------------------------- fit's loss functions


def source_rows(batch: Mapping[str, Any]) -> torch.Tensor:
    """Which rows of a batch are labelled source rows: (B,) bool (``~is_target``, else labels != -100)."""
    if "is_target" in batch:
        return ~batch["is_target"]
    return batch["labels"] != IGNORE_INDEX


def _per_source_mean(values: torch.Tensor, domain_id: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k mean(values of source k) / sum_k w_k`` over the sources present in the batch."""
    present = torch.zeros_like(weights, dtype=torch.bool)
    present[domain_id] = True
    sums = torch.zeros_like(weights).index_add(0, domain_id, values)  # (K,)
    counts = torch.zeros_like(weights).index_add(0, domain_id, torch.ones_like(values))
    means = sums / counts.clamp_min(1)
    w = weights * present
    return (w * means).sum() / w.sum()


def make_source_loss_fn(weights: Optional[Sequence[float]] = None) -> LossFn:
    """``fit``'s loss for a :class:`SourceClassifier`: cross-entropy on the source rows only.

    Target rows (unlabelled) are dropped before the forward pass, so their text costs nothing
    and no label of theirs can reach the loss. With ``weights`` (one per source, e.g. from
    :func:`similarity_weights` through :func:`check_source_weights`), the loss is the weighted
    mean of each source's mean loss in the batch, ``sum_k w_k L_k / sum_k w_k``; without, the
    plain mean over the pooled rows.

    Returns:
        ``loss_fn(model, batch) -> (loss, {"source_rows": n})``.
    """
    w = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float32))
    if w is not None and (w.ndim != 1 or not bool((w >= 0).all()) or float(w.sum()) <= 0):
        raise ConfigError(f"weights {np.asarray(weights).tolist()}: one non-negative weight per source "
                          f"(use check_source_weights).")

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        rows = source_rows(batch)
        src = _subset(batch, rows)
        logits = model(**_model_inputs(src)).logits  # (S, C)
        per_row = F.cross_entropy(logits.float(), src["labels"], reduction="none")  # (S,)
        if w is None:
            loss = per_row.mean()
        else:
            if int(src["domain_id"].max()) >= len(w):
                raise ConfigError(f"A batch has source {int(src['domain_id'].max())} but {len(w)} weights were "
                                  f"given: pass one weight per source.")
            loss = _per_source_mean(per_row, src["domain_id"], w.to(per_row.device))
        return loss, {"source_rows": float(rows.sum())}

    return loss_fn


def make_mdan_loss_fn(progress: TrainingProgress, *, mu: float = 1.0, gamma: float = 10.0,
                      aggregation: str = "soft", max_coeff: float = 1.0) -> LossFn:
    """``fit``'s loss for :class:`MDAN` on paired source/target batches.

    For each source ``k`` present in the batch: the label loss ``L_k`` on its rows, and the
    domain loss ``D_k`` of discriminator ``k`` on its rows (label 0) and the target rows
    (label 1) only, computed on ``grad_reverse(z, lambda)`` with ``lambda = grl_coeff(progress)``:
    the discriminators learn to tell each source from the target, and the encoder, through the
    reversed gradient, learns to make that impossible. The per-source totals
    ``T_k = L_k + mu D_k`` are combined by

    - ``"soft"``: ``(1 / gamma) log sum_k exp(gamma T_k)``, a smoothed maximum that puts most
      weight on the worst source (MDAN's "soft version", used by its code with gamma = 10);
    - ``"hard"``: ``max_k T_k`` (the paper's "hard version").

    Args:
        progress: the :class:`TrainingProgress` passed to ``fit(callbacks=[progress])``.
        mu: weight of the domain losses.
        gamma: sharpness of the soft maximum.
        aggregation: ``"soft"`` or ``"hard"``.
        max_coeff: the limit of the reversal strength lambda.

    Returns:
        ``loss_fn(model, batch) -> (loss, stats)`` with ``lambda``, ``label_loss``,
        ``domain_loss`` (means over the sources) and ``domain_accuracy``.

    Reference: Zhao et al., NeurIPS 2018, https://arxiv.org/abs/1805.09198 (section 4, Algorithm 1).
    """
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"aggregation={aggregation!r}: use 'soft' (MDAN's smoothed maximum) or 'hard' (the maximum).")
    if mu < 0 or gamma <= 0:
        raise ConfigError(f"mu={mu}, gamma={gamma}: use mu >= 0 and gamma > 0.")

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "is_target" not in batch or not bool(batch["is_target"].any()):
            raise DataError("MDAN needs target rows in every batch: train on a SourceTargetDataset with "
                            "SourceTargetBatchSampler and SourceTargetCollator.")
        target, domain = batch["is_target"], batch["domain_id"]
        coeff = progress.coeff(high=max_coeff)
        z = model.representation(**_model_inputs(batch))  # (B, H)
        logits = model.classify(z).float()  # (B, C)
        reversed_z = grad_reverse(z, coeff)  # (B, H) identity forward, -coeff * gradient backward
        totals, label_losses, domain_losses, right, seen = [], [], [], 0.0, 0
        for k in range(model.num_sources):
            own = (domain == k) & ~target  # (B,)
            if not bool(own.any()):
                continue
            label_loss = F.cross_entropy(logits[own], batch["labels"][own])
            shown = own | target  # discriminator k sees its source's rows and the target's, nothing else
            d_logits = model.discriminate(reversed_z[shown], k).float()  # (N_k,)
            d_labels = target[shown].float()  # 0 = source k, 1 = target
            domain_loss = F.binary_cross_entropy_with_logits(d_logits, d_labels)
            totals.append(label_loss + mu * domain_loss)
            label_losses.append(label_loss.detach())
            domain_losses.append(domain_loss.detach())
            right += float(((d_logits > 0).float() == d_labels).sum())
            seen += int(shown.sum())
        stacked = torch.stack(totals)  # (K_present,)
        loss = (torch.logsumexp(gamma * stacked, 0) / gamma if aggregation == "soft" else stacked.max())
        return loss, {"lambda": coeff, "label_loss": float(torch.stack(label_losses).mean()),
                      "domain_loss": float(torch.stack(domain_losses).mean()),
                      "domain_accuracy": right / max(seen, 1)}

    return loss_fn


def make_moe_loss_fn(*, mixture_weight: float = 0.5) -> LossFn:
    """``fit``'s loss for a :class:`MixtureOfExperts`: leave-one-source-out meta-training.

    On the source rows of a batch (target rows are dropped: the mixture learns from the
    sources only):

    - every source expert learns its own source's rows, the shared expert every row
      (cross-entropy, averaged over the experts that have rows);
    - the mixture with each row's *own* expert masked out (:func:`leave_own_out`) learns the
      row's label (negative log-likelihood of the mixed probabilities): the gate is trained
      to combine the other sources' experts for a domain they did not see.

    ``loss = mixture_weight * NLL(mixture) + (1 - mixture_weight) * CE(experts)`` (Wright &
    Augenstein's code weights the two halves 0.5 / 0.5).

    Returns:
        ``loss_fn(model, batch) -> (loss, stats)`` with ``mixture_loss``, ``expert_loss`` and
        ``gate_entropy`` (mean entropy of the gate, in nats).

    Reference: Guo et al. 2018, https://arxiv.org/abs/1809.02256 (meta-training, section 3.2);
    Wright & Augenstein 2020, https://arxiv.org/abs/2009.07806 (section 3).
    """
    if not 0.0 <= mixture_weight <= 1.0:
        raise ConfigError(f"mixture_weight={mixture_weight}: use a weight in [0, 1].")

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        src = _subset(batch, source_rows(batch))
        if "domain_id" not in src:
            raise DataError("The mixture of experts needs each row's domain_id: batch with SourceTargetCollator.")
        domain, labels = src["domain_id"], src["labels"]
        allowed = leave_own_out(domain, model.num_sources, model.num_experts)  # (S, E)
        out = model(**_model_inputs(src), allowed=allowed)
        mixture_loss = F.nll_loss(out.logits, labels)
        expert_losses = []
        for e in range(model.num_experts):
            rows = domain == e if e < model.num_sources else torch.ones_like(domain, dtype=torch.bool)
            if bool(rows.any()):
                expert_losses.append(F.cross_entropy(out.expert_logits[rows, e].float(), labels[rows]))
        expert_loss = torch.stack(expert_losses).mean()
        loss = mixture_weight * mixture_loss + (1 - mixture_weight) * expert_loss
        gate = out.gate.detach()
        entropy = float(-(gate * gate.clamp_min(1e-12).log()).sum(-1).mean())
        return loss, {"mixture_loss": float(mixture_loss.detach()), "expert_loss": float(expert_loss.detach()),
                      "gate_entropy": entropy}

    return loss_fn


# --------------------------------------------------------------------------- prediction and model selection


@torch.inference_mode()
def predict_rows(model: nn.Module, dataset: Any, *, batch_size: int = 256, domain_ids: Optional[np.ndarray] = None,
                 num_sources: Optional[int] = None, pad_token_id: int = 0) -> dict[str, np.ndarray]:
    """A model's outputs on every row of a split, in the split's order (fp32, eval mode).

    Args:
        dataset: items with ``input_ids`` (tokenized rows or feature items).
        domain_ids: with a :class:`MixtureOfExperts` and ``num_sources``: each row's source, so
            its own expert is left out (leave-one-source-out accuracy on the sources'
            validation rows, the same situation as the target's); None: every expert.

    Returns:
        ``{"logits": (N, C)}``, plus ``"gate": (N, E)`` for a mixture of experts.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs: dict[str, Optional[torch.Tensor]] = {"logits": None, "gate": None}
    try:
        for batch in make_loader(dataset, batch_size, shuffle=False, pad_token_id=pad_token_id):
            idx = batch.pop("idx")
            inputs = {k: v.to(device) for k, v in _model_inputs(batch).items()}
            if domain_ids is not None:
                if num_sources is None or not isinstance(model, MixtureOfExperts):
                    raise ConfigError("domain_ids leaves each row's own expert out: use it with a MixtureOfExperts "
                                      "and pass num_sources.")
                own = torch.as_tensor(np.asarray(domain_ids)[idx.numpy()], device=device)
                inputs["allowed"] = leave_own_out(own, num_sources, model.num_experts)
            out = model(**inputs)
            for key in outputs:
                value = getattr(out, key, None)
                if value is None:
                    continue
                if outputs[key] is None:
                    outputs[key] = torch.zeros((len(dataset), value.shape[-1]))
                outputs[key][idx] = value.float().cpu()
    finally:
        model.train(was_training)
    return {k: v.numpy() for k, v in outputs.items() if v is not None}


def make_accuracy_eval_fn(labels: np.ndarray, *, batch_size: int = 256, domain_ids: Optional[np.ndarray] = None,
                          num_sources: Optional[int] = None) -> Callable[[nn.Module, Any], dict[str, float]]:
    """``fit``'s ``eval_fn``: accuracy on labelled rows (the sources' validation rows).

    With ``domain_ids`` and ``num_sources`` (a mixture of experts), each row is scored without
    its own source's expert (see :func:`predict_rows`). Also returns the worst source's
    accuracy when ``domain_ids`` is given.
    """
    labels = np.asarray(labels)

    def eval_fn(model: nn.Module, data: Any) -> dict[str, float]:
        moe = isinstance(model, MixtureOfExperts) and domain_ids is not None
        logits = predict_rows(model, data, batch_size=batch_size, domain_ids=domain_ids if moe else None,
                              num_sources=num_sources)["logits"]
        right = logits.argmax(1) == labels
        scores = {"accuracy": float(right.mean())}
        if domain_ids is not None:
            scores["worst_source_accuracy"] = float(min(right[np.asarray(domain_ids) == d].mean()
                                                        for d in np.unique(domain_ids)))
        return scores

    return eval_fn
