"""Pretraining losses and held-out evaluation for ``fit``, without (N, T, V) logits.

A masked LM predicts only the ~15% masked positions, yet ``BertForMaskedLM(...).logits`` is a
``(B, T, V)`` tensor: for a miniature model with an 8k vocabulary that output layer costs more
than the whole encoder. Here the encoder runs once, the hidden states of the masked positions
are gathered (``(M, H)``, M = masked tokens in the batch), and only those pass through the LM
head -- in training and in evaluation. The same trick serves ELECTRA's generator.

:class:`PretrainingModel` wraps a model of :func:`~tlutils.pretraining.architectures.build_pretraining_model`
and computes its objective in ``forward`` -- so ``fit``'s mixed precision (``accelerate`` wraps
the top-level ``forward`` in autocast) and data parallelism (DDP hooks on ``forward``) apply --
and :func:`pretraining_loss` is the ``loss_fn`` that hands the result to ``fit``:

=================  ======================================================================
objective          loss
=================  ======================================================================
``mlm``            cross-entropy at masked positions (Devlin et al., 2019, s. 3.1, task #1)
``mlm+nsp``        + next-sentence cross-entropy on the pooled ``[CLS]`` (s. 3.1, task #2)
``mlm+sop``        + sentence-order cross-entropy (Lan et al., 2020, s. 3.1)
``clm``            next-token cross-entropy over real tokens (Radford et al., 2019, s. 2)
``electra``        generator MLM + lambda * discriminator BCE over real tokens, lambda = 50
                   (Clark et al., 2020, https://arxiv.org/abs/2003.10555, s. 2 and 3.1)
=================  ======================================================================

Held-out evaluation (:func:`mlm_eval_fn`, :func:`clm_eval_fn`): a fixed set of examples, masks
fixed by ``mask_seed`` (not the run's seed, so every run is scored on the same masks), loss
summed over predicted tokens batch by batch and divided once; perplexity = exp(loss) (RoBERTa
reports held-out MLM perplexity this way, Liu et al., 2019, table 3). Use them with
``fit(..., eval_fn=mlm_eval_fn(...), select_metric="mlm_loss", greater_is_better=False)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from tlutils.errors import ConfigError
from tlutils.masking import IGNORE_INDEX
from tlutils.pretraining.architectures import ElectraPair
from tlutils.pretraining.batches import PretrainingCollator, replace_tokens, sample_tokens

OBJECTIVES = ("mlm", "mlm+nsp", "mlm+sop", "clm", "electra")
RTD_WEIGHT = 50.0  # lambda of Clark et al. (2020), section 3.1


# --------------------------------------------------------------------------- pure losses


def masked_lm_loss(hidden: torch.Tensor, labels: torch.Tensor,
                   head: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy at the masked positions only, the LM head applied to those alone.

    Shapes:
        hidden ``(B, T, H)``; labels ``(B, T)`` (-100 = not predicted); the head maps ``(M, H)``
        to ``(M, V)``.

    Returns:
        ``(loss, n)``: the mean over the ``n`` masked tokens (0 when there are none) and ``n``.
    """
    chosen = labels != IGNORE_INDEX  # (B, T)
    n = chosen.sum()
    if int(n) == 0:
        return hidden.sum() * 0.0, n
    logits = head(hidden[chosen])  # (M, V)
    return F.cross_entropy(logits.float(), labels[chosen]), n


def causal_lm_loss(hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   head: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy: position t predicts token t+1, for real (non-padding) targets.

    Shapes:
        hidden ``(B, T, H)``; input_ids, attention_mask ``(B, T)``.

    Returns:
        ``(loss, n)``: the mean over the ``n`` predicted tokens and ``n``.
    """
    target_real = attention_mask[:, 1:].bool()  # (B, T-1)
    logits = head(hidden[:, :-1][target_real])  # (M, V)
    n = target_real.sum()
    return F.cross_entropy(logits.float(), input_ids[:, 1:][target_real]), n


def pair_loss(pooled: torch.Tensor, pair_labels: torch.Tensor,
              head: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """NSP or SOP: two-way cross-entropy on the pooled first token.

    Shapes:
        pooled ``(B, H)``; pair_labels ``(B,)``.

    Returns:
        ``(loss, accuracy)``.
    """
    logits = head(pooled).float()  # (B, 2)
    return F.cross_entropy(logits, pair_labels), (logits.argmax(-1) == pair_labels).float().mean()


def rtd_loss(logits: torch.Tensor, replaced: torch.Tensor,
             attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ELECTRA's discriminator loss: binary cross-entropy with logits (safe under autocast) over
    every real token, "replaced" = 1.

    Shapes:
        logits, replaced, attention_mask ``(B, T)``.

    Returns:
        ``(loss, accuracy)`` over real tokens.
    """
    real = attention_mask.bool()
    z, y = logits[real].float(), replaced[real].float()
    return F.binary_cross_entropy_with_logits(z, y), ((z > 0).float() == y).float().mean()


# --------------------------------------------------------------------------- the wrapper


@dataclass
class PretrainingOutput:
    """What :class:`PretrainingModel` returns: the loss and its parts as detached tensors."""

    loss: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


def _parts(model: torch.nn.Module) -> tuple[Callable, Callable, Optional[Callable]]:
    """``(encoder, lm_head, pair_head)`` of a pretraining model: the encoder returns
    ``(hidden (B, T, H), pooled (B, H) or None)``."""
    kind = type(model).__name__
    if kind == "BertForPreTraining":
        enc = model.bert
        return (lambda **kw: _hidden_pooled(enc(**kw))), model.cls.predictions, model.cls.seq_relationship
    if kind == "AlbertForPreTraining":
        enc = model.albert
        return (lambda **kw: _hidden_pooled(enc(**kw))), model.predictions, model.sop_classifier
    if kind == "RobertaForMaskedLM":
        enc = model.roberta
        return (lambda **kw: _hidden_pooled(enc(**kw))), model.lm_head, None
    if kind == "ElectraForMaskedLM":
        enc = model.electra
        return ((lambda **kw: _hidden_pooled(enc(**kw))),
                (lambda h: model.generator_lm_head(model.generator_predictions(h))), None)
    if kind == "GPT2LMHeadModel":
        enc = model.transformer
        return (lambda **kw: (enc(**{k: v for k, v in kw.items() if k != "token_type_ids"}).last_hidden_state, None)), \
            model.lm_head, None
    raise ConfigError(f"No pretraining objective for {kind}: build the model with build_pretraining_model().")


def _hidden_pooled(out: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    return out.last_hidden_state, getattr(out, "pooler_output", None)


class PretrainingModel(torch.nn.Module):
    """A pretraining model and its objective: ``forward(**batch)`` returns the loss and stats.

    Args:
        model: from :func:`~tlutils.pretraining.architectures.build_pretraining_model`.
        objective: one of :data:`OBJECTIVES` (see the module docstring).
        rtd_weight: ELECTRA's lambda (50).

    Inputs (a :class:`~tlutils.pretraining.batches.PretrainingCollator` batch):
        ``input_ids``, ``attention_mask`` ``(B, T)``, optional ``token_type_ids``; ``labels``
        ``(B, T)`` (MLM: -100 where not masked; CLM: the inputs); ``pair_labels`` ``(B,)`` for
        NSP/SOP (without them the pair loss is skipped, e.g. on held-out MLM batches).

    Returns:
        :class:`PretrainingOutput` with ``stats``: ``mlm_loss``/``mlm_tokens``, ``pair_loss``/
        ``pair_accuracy``, ``clm_loss``/``clm_tokens``, ``rtd_loss``/``rtd_accuracy``/
        ``replaced_fraction`` as they apply, and ``tokens`` (non-padding tokens per example).

    Example:
        >>> # model = PretrainingModel(build_pretraining_model(mini_config("bert", tok)), "mlm+nsp")
        >>> # fit(model, train, held_out, loss_fn=pretraining_loss, collate_fn=..., eval_fn=mlm_eval_fn(...))
    """

    def __init__(self, model: torch.nn.Module, objective: str = "mlm", rtd_weight: float = RTD_WEIGHT) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective={objective!r}: use one of {', '.join(OBJECTIVES)}.")
        electra = isinstance(model, ElectraPair)
        if electra != (objective == "electra"):
            raise ConfigError(f"objective={objective!r} does not fit {type(model).__name__}: ELECTRA models train "
                              f"with objective='electra' and only they do.")
        kind = type(model).__name__
        if objective == "clm" and kind != "GPT2LMHeadModel" or objective != "clm" and kind == "GPT2LMHeadModel":
            raise ConfigError(f"objective={objective!r} does not fit {kind}: causal models (gpt2) train with "
                              f"'clm', encoders with a masked objective.")
        self.model = model
        self.objective = objective
        self.rtd_weight = rtd_weight
        self.config = model.config
        # A tuple of callables, not module attributes: the heads stay registered once, under model.
        self._parts = _parts(model.generator if electra else model)
        if objective in ("mlm+nsp", "mlm+sop") and self._parts[2] is None:
            raise ConfigError(f"{kind} has no sentence-pair head: use family 'bert' (NSP) or 'albert' (SOP) "
                              f"for objective={objective!r}.")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None, pair_labels: Optional[torch.Tensor] = None,
                **_: Any) -> PretrainingOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        stats = {"tokens": attention_mask.sum().detach() / input_ids.shape[0]}
        encoder, lm_head, pair_head = self._parts
        hidden, pooled = encoder(**inputs)  # (B, T, H), (B, H) or None
        if self.objective == "clm":
            loss, n = causal_lm_loss(hidden, input_ids, attention_mask, lm_head)
            stats.update(clm_loss=loss.detach(), clm_tokens=n)
            return PretrainingOutput(loss, stats)
        chosen = labels != IGNORE_INDEX  # (B, T)
        if self.objective == "electra" and int(chosen.sum()):
            logits = lm_head(hidden[chosen])  # (M, V): the generator, at masked positions only
            loss, n = F.cross_entropy(logits.float(), labels[chosen]), chosen.sum()
            sampled = sample_tokens(logits)  # detached: no gradient through the sampling (section 2)
        else:
            loss, n = masked_lm_loss(hidden, labels, lm_head)
            sampled = torch.zeros(0, dtype=torch.long, device=input_ids.device)
        stats.update(mlm_loss=loss.detach(), mlm_tokens=n)
        if self.objective in ("mlm+nsp", "mlm+sop") and pair_labels is not None:
            p_loss, p_acc = pair_loss(pooled, pair_labels, pair_head)
            stats.update(pair_loss=p_loss.detach(), pair_accuracy=p_acc)
            loss = loss + p_loss
        if self.objective == "electra":
            corrupted, replaced = replace_tokens(input_ids, labels, sampled)  # (B, T) each
            disc = self.model.discriminator
            d_hidden = disc.electra(**{**inputs, "input_ids": corrupted}).last_hidden_state  # (B, T, H)
            d_loss, d_acc = rtd_loss(disc.discriminator_predictions(d_hidden), replaced, attention_mask)
            stats.update(rtd_loss=d_loss.detach(), rtd_accuracy=d_acc,
                         replaced_fraction=replaced[attention_mask.bool()].float().mean())
            loss = loss + self.rtd_weight * d_loss
        return PretrainingOutput(loss, stats)

    def pretrained(self) -> torch.nn.Module:
        """The network kept after pretraining: the model itself, or ELECTRA's discriminator."""
        return self.model.discriminator if isinstance(self.model, ElectraPair) else self.model


def pretraining_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """``fit``'s ``loss_fn`` for :class:`PretrainingModel`: its loss and its stats as floats
    (``fit`` averages them per epoch, weighted by examples, into the history)."""
    out = model(**{k: v for k, v in batch.items() if k != "idx"})
    return out.loss, {k: float(v) for k, v in out.stats.items() if not k.endswith("_tokens")}


# --------------------------------------------------------------------------- held-out evaluation


def fixed_batches(examples: Sequence[dict[str, Any]], collator: PretrainingCollator,
                  batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The held-out set as batches with fixed masks (the collator should be ``static``)."""
    indexed = [{**e, "idx": i} for i, e in enumerate(examples)]
    return [collator(indexed[i:i + batch_size]) for i in range(0, len(indexed), batch_size)]


def _evaluate(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], seed: int) -> dict[str, float]:
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    began = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
        torch.manual_seed(seed)  # ELECTRA's samples: the same on every evaluation, training RNG untouched
        for batch in batches:
            out = model(**{k: v.to(device) for k, v in batch.items() if k != "idx"})
            stats = out.stats
            for name in ("mlm", "clm"):
                if f"{name}_loss" in stats:
                    n = float(stats[f"{name}_tokens"])
                    sums[f"{name}_sum"] = sums.get(f"{name}_sum", 0.0) + float(stats[f"{name}_loss"]) * n
                    sums[f"{name}_n"] = sums.get(f"{name}_n", 0.0) + n
            if "rtd_loss" in stats:
                n = float(batch["attention_mask"].sum())
                for key in ("rtd_loss", "rtd_accuracy", "replaced_fraction"):
                    sums[key] = sums.get(key, 0.0) + float(stats[key]) * n
                sums["rtd_n"] = sums.get("rtd_n", 0.0) + n
    metrics: dict[str, float] = {}
    for name in ("mlm", "clm"):
        if sums.get(f"{name}_n"):
            loss = sums[f"{name}_sum"] / sums[f"{name}_n"]
            metrics.update({f"{name}_loss": loss, f"{name}_perplexity": math.exp(min(loss, 50.0))})
    if sums.get("rtd_n"):
        metrics.update({k: sums[k] / sums["rtd_n"] for k in ("rtd_loss", "rtd_accuracy", "replaced_fraction")})
    metrics["seconds"] = time.perf_counter() - began
    return metrics


def mlm_eval_fn(tokenizer: Any, *, batch_size: int = 64, mask_seed: int = 0, mlm_probability: float = 0.15,
                mask_fraction: float = 0.8, random_fraction: float = 0.1) -> Callable[[torch.nn.Module, Any], dict[str, float]]:
    """An ``eval_fn`` for ``fit``: held-out MLM loss and perplexity on fixed masks.

    The masks depend on ``mask_seed`` and each example's position only, so two runs (two
    recipes, two seeds) evaluated on the same examples see the same masks. Batches are built
    once per evaluation set and reused; logits exist only for the masked positions of one batch
    at a time. For ELECTRA it also reports the discriminator's ``rtd_loss``, ``rtd_accuracy``
    and ``replaced_fraction`` (generator samples drawn from a generator seeded with
    ``mask_seed``; the training RNG is left untouched).

    Returns:
        ``eval_fn(model, examples) -> {"mlm_loss", "mlm_perplexity", ..., "seconds"}``; select
        with ``select_metric="mlm_loss", greater_is_better=False``.
    """
    collator = PretrainingCollator(tokenizer, "mlm", masking="static", seed=mask_seed, mlm_probability=mlm_probability,
                                   mask_fraction=mask_fraction, random_fraction=random_fraction)
    cache: dict[int, list] = {}

    def evaluate(model: torch.nn.Module, examples: Any) -> dict[str, float]:
        key = id(examples)
        if key not in cache:
            cache[key] = fixed_batches(examples, collator, batch_size)
        return _evaluate(model, cache[key], mask_seed)

    return evaluate


def clm_eval_fn(tokenizer: Any, *, batch_size: int = 64) -> Callable[[torch.nn.Module, Any], dict[str, float]]:
    """An ``eval_fn`` for ``fit``: held-out causal-LM loss and perplexity (``clm_loss``,
    ``clm_perplexity``, ``seconds``); select with ``select_metric="clm_loss", greater_is_better=False``."""
    collator = PretrainingCollator(tokenizer, "clm")
    cache: dict[int, list] = {}

    def evaluate(model: torch.nn.Module, examples: Any) -> dict[str, float]:
        key = id(examples)
        if key not in cache:
            cache[key] = fixed_batches(examples, collator, batch_size)
        return _evaluate(model, cache[key], 0)

    return evaluate
