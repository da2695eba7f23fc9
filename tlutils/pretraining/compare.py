"""Comparing pretraining recipes at equal compute: paired held-out losses and FLOP bookkeeping.

Two recipes pretrained for the same budget are compared first on the held-out masked-LM loss,
scored on the *same* masked positions: :func:`masked_losses` re-scores a run's held-out
examples on the fixed masks of :func:`~tlutils.pretraining.objectives.mlm_eval_fn` (same
collator, same ``mask_seed``) and returns each example's summed loss and its number of masked
tokens, so :func:`compare_losses` can bootstrap the difference over examples (the masked
positions of one sequence are not independent; the sequence is the resampled unit, and the
mean loss is the ratio of the resampled sums). The Comparison's metric is the held-out
*log-likelihood per masked token* (minus the loss, higher is better), so its verdict reads the
way every other verdict of the book reads ("A better" = A predicts the masked tokens better).

Equal compute is counted in training FLOPs (:func:`training_flops_per_token`: forward and
backward = 3x the forward's multiply-adds x 2), the accounting of Clark et al. (2020),
ELECTRA, https://arxiv.org/abs/2003.10555, appendix D: ALBERT's sharing saves parameters, not
FLOPs; ELECTRA's generator and its per-token head cost extra, so at equal compute ELECTRA takes
fewer steps (:func:`steps_at_equal_compute`). Held-out MLM losses are comparable only between
runs with the same tokenizer (the same masked tokens); ELECTRA's discriminator has no MLM head
at all: compare it downstream.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tlutils.errors import ConfigError
from tlutils.masking import IGNORE_INDEX

__all__ = ["masked_losses", "heldout_examples", "compare_losses", "training_flops_per_token",
           "steps_at_equal_compute", "loss_ratio", "pair_logits"]


def heldout_examples(run: Any, corpus: Any) -> list[dict[str, Any]]:
    """The held-out MLM examples of a :class:`~tlutils.pretraining.runs.PretrainedRun`, rebuilt
    exactly as :func:`~tlutils.pretraining.runs.pretrain` built them (documents, tokenizer,
    packing, cap)."""
    from tlutils.pretraining.batches import make_examples, tokenize_documents
    from tlutils.pretraining.runs import HELDOUT_SEED

    recipe = run.recipe
    _, heldout_docs = corpus.split(recipe.heldout_fraction, seed=HELDOUT_SEED)
    tokenizer = run.tokenizer
    docs = tokenize_documents(heldout_docs, tokenizer)
    return make_examples(heldout_docs, tokenizer, "mlm", recipe.max_length, token_docs=docs)[:recipe.max_heldout_examples]


def masked_losses(model: torch.nn.Module, tokenizer: Any, examples: Sequence[dict[str, Any]], *,
                  mask_seed: int = 0, mlm_probability: float = 0.15, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Each held-out example's summed masked-LM loss and its masked-token count, on the fixed
    masks of :func:`~tlutils.pretraining.objectives.mlm_eval_fn` (same seed, same 80/10/10).

    Args:
        model: a pretraining model with an MLM head (``BertForPreTraining``,
            ``AlbertForPreTraining``, ``RobertaForMaskedLM``; ``PretrainedRun.load()``).
        tokenizer: the run's tokenizer. examples: :func:`heldout_examples`.

    Returns:
        ``(sums, counts)``, each ``(N,)``: ``sums.sum() / counts.sum()`` is the run's held-out
        ``mlm_loss``.
    """
    from tlutils.pretraining.batches import PretrainingCollator
    from tlutils.pretraining.objectives import PretrainingModel, fixed_batches

    collator = PretrainingCollator(tokenizer, "mlm", masking="static", seed=mask_seed, mlm_probability=mlm_probability,
                                   mask_fraction=0.8, random_fraction=0.1)
    wrapper = PretrainingModel(model, "mlm")
    encoder, head, _ = wrapper._parts
    was_training = model.training
    model.eval()
    sums, counts = np.zeros(len(examples)), np.zeros(len(examples))
    try:
        with torch.inference_mode():
            for batch in fixed_batches(examples, collator, batch_size):
                inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
                hidden, _ = encoder(**inputs)  # (B, T, H)
                chosen = batch["labels"] != IGNORE_INDEX  # (B, T)
                rows = batch["idx"].unsqueeze(1).expand_as(chosen)[chosen]  # (M,)
                loss = F.cross_entropy(head(hidden[chosen]).float(), batch["labels"][chosen], reduction="none")
                np.add.at(sums, rows.numpy(), loss.numpy())
                np.add.at(counts, rows.numpy(), 1.0)
    finally:
        model.train(was_training)
    return sums, counts


def loss_ratio(counts: np.ndarray, sums: np.ndarray) -> float:
    """Minus the mean loss per masked token of some examples (the metric :func:`compare_losses`
    bootstraps; ``counts`` play the labels' part, ``sums`` the predictions')."""
    return -float(np.sum(sums) / max(np.sum(counts), 1e-12))


def compare_losses(counts: np.ndarray, sums_a: np.ndarray, sums_b: np.ndarray, *, names: tuple[str, str] = ("A", "B"),
                   n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95):
    """Paired bootstrap over held-out examples of the log-likelihood per masked token, A vs B.

    Both runs must be scored on the same examples with the same masks (same tokenizer,
    :func:`masked_losses`), hence one ``counts``.

    Returns:
        a :class:`tlutils.stats.Comparison` with metric ``"held-out log-likelihood per masked
        token"`` (= minus the MLM loss; higher is better, so "A better" means A's loss is lower).
    """
    import dataclasses

    from tlutils.stats import compare

    counts, a, b = (np.asarray(x, dtype=float) for x in (counts, sums_a, sums_b))
    if not (counts.shape == a.shape == b.shape):
        raise ConfigError(f"compare_losses needs both runs scored on the same examples: got {counts.shape}, "
                          f"{a.shape} and {b.shape} (score both with masked_losses on one heldout_examples list).")
    out = compare(counts, a, b, metric=loss_ratio, names=names, n_resamples=n_resamples, seed=seed,
                  confidence=confidence)
    return dataclasses.replace(out, metric="held-out log-likelihood per masked token")


def training_flops_per_token(config: Any, *, seq_len: int = 128, mlm_probability: float = 0.15,
                             generator: Optional[Any] = None) -> float:
    """Training FLOPs per input token (forward + backward ~ 3 x forward; a multiply-add = 2 FLOPs).

    Per layer and token: the Q, K, V, output projections (4H^2), the feed-forward (2HI), the
    attention scores and weighted sum (2TH); embeddings are lookups (free) except ALBERT's and
    ELECTRA's E x H projection. The MLM head runs at the masked fraction only (a dense H x E
    transform plus the E x V decoder, E = H without factorisation); ELECTRA's discriminator head
    (H x H + H) runs at every token, and its ``generator`` (a config) adds its own layers and MLM head.
    Sharing layers (ALBERT) changes nothing here: the same work is done L times.
    """
    def encoder(c: Any) -> float:
        h, i, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
        e = getattr(c, "embedding_size", h) or h
        per_layer = 4 * h * h + 2 * h * i + 2 * seq_len * h
        return layers * per_layer + (e * h if e != h or c.model_type in ("albert", "electra") else 0), e

    body, e = encoder(config)
    if config.model_type == "electra":
        gen_body, ge = encoder(generator) if generator is not None else (0.0, e)
        gh = generator.hidden_size if generator is not None else config.hidden_size
        macs = body + config.hidden_size * config.hidden_size + config.hidden_size  # discriminator + RTD head
        macs += gen_body + mlm_probability * (gh * ge + ge * config.vocab_size)  # generator + its MLM head
    else:
        macs = body + mlm_probability * (config.hidden_size * e + e * config.vocab_size)
    return 6.0 * macs


def steps_at_equal_compute(steps: int, flops_per_token: float, baseline_flops_per_token: float) -> int:
    """The steps a recipe gets for the FLOPs ``steps`` baseline steps cost (same tokens per step),
    rounded down, at least 1."""
    if flops_per_token <= 0 or baseline_flops_per_token <= 0:
        raise ConfigError("FLOPs per token must be positive: pass training_flops_per_token(config).")
    return max(1, math.floor(round(steps * baseline_flops_per_token / flops_per_token, 9)))


def pair_logits(model: torch.nn.Module, tokenizer: Any, examples: Sequence[dict[str, Any]], *,
                batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A pretraining model's sentence-pair head (NSP or SOP) on two-segment examples.

    Args:
        model: ``BertForPreTraining`` or ``AlbertForPreTraining`` (``PretrainedRun.load()``).
        tokenizer: the run's tokenizer. examples: from ``make_examples(..., "mlm+nsp" or "mlm+sop")``
            (their ``labels`` are the pair labels).

    Returns:
        ``(logits (N, 2), labels (N,))``, unmasked inputs: what the head says about clean text.
    """
    from tlutils.pretraining.batches import PretrainingCollator
    from tlutils.pretraining.objectives import PretrainingModel

    collator = PretrainingCollator(tokenizer, "none")
    encoder, _, head = PretrainingModel(model, "mlm+nsp")._parts
    was_training = model.training
    model.eval()
    out, gold = [], []
    try:
        with torch.inference_mode():
            for i in range(0, len(examples), batch_size):
                batch = collator(list(examples[i:i + batch_size]))
                inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
                _, pooled = encoder(**inputs)  # (B, H)
                out.append(head(pooled).float())
                gold.append(batch["pair_labels"])
    finally:
        model.train(was_training)
    return torch.cat(out).numpy(), torch.cat(gold).numpy()
