"""Continued masked-LM pretraining on a target domain's unlabelled text (DAPT/TAPT), through ``fit``.

Gururangan et al. (2020) continue RoBERTa's masked-language-model pretraining on text of the
target domain (*domain-adaptive pretraining*, DAPT: 12.5k steps at batch 2,048) or on the
task's own unlabelled training text (*task-adaptive pretraining*, TAPT), then fine-tune. The
pieces here do the same for any encoder of the book, in miniature:

- :func:`masked_lm_from_encoder` -- an ``AutoModelForMaskedLM`` of the encoder's architecture
  with the encoder's weights loaded. The packaged MiniLM ships no MLM head, so the head's
  transform layer (dense + LayerNorm) and the decoder's bias are **new**; the decoder's weight
  is tied to the input embeddings, as in BERT;
- :class:`SelectedMaskedLM` -- puts such a model behind the masked-LM objective of
  :mod:`tlutils.pretraining` (:func:`~tlutils.pretraining.objectives.masked_lm_loss`: the LM
  head runs on the masked positions only, so a batch never materialises ``(B, T, V)`` logits;
  with MiniLM's 30,522-word vocabulary a batch of 16 x 128 tokens would hold 62M of them, and
  the loss needs 15%), returning what that package's ``pretraining_loss`` and ``mlm_eval_fn``
  read;
- :func:`continue_pretraining` -- all of it through :func:`tlutils.train.fit`: Part III's
  ``PretrainingCollator`` (BERT's 80/10/10 masking from :func:`tlutils.masking.mask_tokens`, a
  new mask every epoch) with its ``EpochBatchSampler``, the held-out MLM loss on fixed masks as
  the ``eval_fn``, the encoder and the new head in their own parameter groups;
  :func:`load_adapted_encoder` copies the adapted encoder into a classification model for
  features or fine-tuning.

The chapter *Adapting to an unseen domain* (``book/diversity/single_source.md``) runs it on the
Amazon reviews and says how far its few thousand tokens are from the paper's budget.

Reference: Gururangan et al., *Don't Stop Pretraining: Adapt Language Models to Domains and
Tasks*, ACL 2020, https://arxiv.org/abs/2004.10964.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import nn

from tlutils.core import encoder_of
from tlutils.data import example_lengths
from tlutils.errors import ConfigError
from tlutils.pretraining.batches import EpochBatchSampler, PretrainingCollator
from tlutils.pretraining.objectives import PretrainingOutput, masked_lm_loss, mlm_eval_fn, pretraining_loss

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tlutils.train import History, TrainConfig

Head = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- the model


def masked_lm_from_encoder(model: nn.Module, *, seed: Optional[int] = None) -> tuple["PreTrainedModel", list[str]]:
    """A masked-LM model of ``model``'s architecture, carrying ``model``'s encoder weights.

    ``AutoModelForMaskedLM.from_config`` builds the architecture (BERT, RoBERTa, DistilBERT,
    ALBERT, ...) with random weights; the encoder's weights are then copied in, so only the MLM
    head is new: its transform layer and the decoder's bias. The decoder's weight is the input
    embedding matrix (tied, as in BERT), so it starts from the pretrained vocabulary.

    Args:
        model: a Hugging Face model with an encoder (a classification model from
            :func:`tlutils.models.load_model`, or a bare encoder).
        seed: seed of the new head's random initialisation (None: the global RNG as it is).

    Returns:
        ``(mlm_model, new)``: the model and the names of its newly initialised parameters (the
        head's, never the encoder's).

    Raises:
        ConfigError: the encoder's weights do not fit the masked-LM architecture (a parameter of
            the encoder that the new model lacks, or one the new encoder has and the old lacks).
    """
    from transformers import AutoModelForMaskedLM

    encoder = encoder_of(model)
    config = getattr(encoder, "config", None) or getattr(model, "config", None)
    if config is None:
        raise ConfigError("masked_lm_from_encoder needs a Hugging Face model (with .config); got "
                          f"{type(model).__name__}.")
    if seed is not None:
        torch.manual_seed(seed)
    mlm = AutoModelForMaskedLM.from_config(config)
    result = mlm.base_model.load_state_dict(encoder.state_dict(), strict=False)
    missing = [k for k in result.missing_keys]
    unexpected = [k for k in result.unexpected_keys if not k.startswith("pooler.")]  # MLM models have no pooler
    if missing or unexpected:
        raise ConfigError(f"The encoder's weights do not fit {type(mlm).__name__}: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}; pass the model the encoder came from.")
    mlm.tie_weights()
    base = {id(p) for p in mlm.base_model.parameters()}
    new = [name for name, p in mlm.named_parameters() if id(p) not in base]
    return mlm, new


def mlm_head(model: nn.Module) -> Head:
    """The masked-LM head of a ``...ForMaskedLM`` model as a function ``(M, H) -> (M, V)``.

    Architecture-neutral: the head is the model's one child module with parameters besides the
    encoder (``cls`` in BERT, ``lm_head`` in RoBERTa, ``predictions`` in ALBERT); DistilBERT
    spreads it over four children (``vocab_transform``, ``activation``, ``vocab_layer_norm``,
    ``vocab_projector``), composed here in that order.

    Raises:
        ConfigError: no such head can be found.
    """
    if all(hasattr(model, n) for n in ("vocab_transform", "vocab_layer_norm", "vocab_projector")):
        act = getattr(model, "activation", nn.GELU())
        return lambda h: model.vocab_projector(model.vocab_layer_norm(act(model.vocab_transform(h))))
    base = getattr(model, "base_model", None)
    heads = [m for m in model.children() if m is not base and any(True for _ in m.parameters())]
    if base is None or base is model or len(heads) != 1:
        raise ConfigError(f"Cannot find the masked-LM head of {type(model).__name__}: build the model with "
                          f"masked_lm_from_encoder (an AutoModelForMaskedLM).")
    return heads[0]


class SelectedMaskedLM(nn.Module):
    """A ``...ForMaskedLM`` model behind the masked-LM objective of :mod:`tlutils.pretraining`.

    The encoder runs on the whole batch; only the hidden states of the masked positions
    (``labels != -100``) go through the MLM head
    (:func:`~tlutils.pretraining.objectives.masked_lm_loss`), so the logits are ``(M, V)`` with
    ``M`` the number of masked tokens, never ``(B, T, V)``. The output is a
    :class:`~tlutils.pretraining.objectives.PretrainingOutput`, so ``fit(loss_fn=pretraining_loss)``
    trains it and ``mlm_eval_fn`` scores it, as they do Part III's miniature models; unlike
    :class:`~tlutils.pretraining.objectives.PretrainingModel` it takes any architecture whose head
    :func:`mlm_head` finds.

    Args:
        mlm_model: a ``...ForMaskedLM`` model (:func:`masked_lm_from_encoder`).

    Shapes:
        input_ids, attention_mask, token_type_ids, labels: (B, T). Returns ``loss`` (the mean
        cross-entropy over the M masked tokens) and ``stats``: ``mlm_loss``, ``mlm_tokens`` (M),
        ``tokens`` (real tokens per example).
    """

    def __init__(self, mlm_model: "PreTrainedModel") -> None:
        super().__init__()
        self.mlm = mlm_model
        self.config = mlm_model.config
        mlm_head(mlm_model)  # fail now, not at the first batch, when there is no head to find

    @property
    def encoder(self) -> nn.Module:
        return self.mlm.base_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None, **_: Any) -> PretrainingOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state  # (B, T, H)
        # the head is looked up, not registered a second time under this module
        loss, n = masked_lm_loss(hidden, labels, mlm_head(self.mlm))  # scalar, M
        stats = {"tokens": attention_mask.sum().detach() / input_ids.shape[0], "mlm_loss": loss.detach(), "mlm_tokens": n}
        return PretrainingOutput(loss, stats)


def param_groups(model: SelectedMaskedLM, encoder_learning_rate: float, head_learning_rate: float,
                 weight_decay: float = 0.01) -> list[dict[str, Any]]:
    """AdamW groups: the pretrained encoder at ``encoder_learning_rate``, the new head at
    ``head_learning_rate`` (absolute rates); matrices decayed, biases and LayerNorms not.

    The tied decoder weight *is* the input embedding matrix, so it is in the encoder's group.
    """
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        groups.setdefault((id(p) in encoder_ids, p.ndim >= 2), []).append(p)
    out = []
    for (in_encoder, decay), params in sorted(groups.items(), reverse=True):
        out.append({"params": params, "lr": encoder_learning_rate if in_encoder else head_learning_rate,
                    "weight_decay": weight_decay if decay else 0.0})
    return out


# --------------------------------------------------------------------------- the run


def count_tokens(dataset: Any) -> int:
    """Real tokens of a tokenized split (``[CLS]``/``[SEP]`` included, padding not)."""
    return int(sum(example_lengths(dataset)))


@dataclass
class PretrainingRun:
    """What :func:`continue_pretraining` did: the model, ``fit``'s history, held-out scores
    before and after, and how much text it read."""

    model: SelectedMaskedLM
    history: "History"
    before: dict[str, float]
    after: dict[str, float]
    tokens_seen: int  # real tokens fed to the encoder in training (epochs x tokens of the rows)
    sequences_seen: int
    new_parameters: list[str]


def continue_pretraining(model: nn.Module, tokenizer: "PreTrainedTokenizerBase", train_data: Any,
                         eval_data: Any = None, *, config: "TrainConfig", encoder_learning_rate: float,
                         head_learning_rate: float, mlm_probability: float = 0.15,
                         seed: int = 0) -> PretrainingRun:
    """Continue masked-LM pretraining of ``model``'s encoder on ``train_data``, through ``fit``.

    A fresh MLM head (:func:`masked_lm_from_encoder`) is trained with the encoder; the new head
    learns at ``head_learning_rate``, the pretrained encoder at the (smaller)
    ``encoder_learning_rate``, both under ``fit``'s warmup and linear decay. Batches are masked
    by :class:`~tlutils.pretraining.batches.PretrainingCollator` (dynamic: a new mask every
    epoch, reproducible from ``(seed, epoch, row)``, so a resumed run masks as the uninterrupted
    one). With ``eval_data`` every epoch is scored by the held-out MLM loss on masks fixed by
    ``seed`` (:func:`~tlutils.pretraining.objectives.mlm_eval_fn`) and the epoch with the lowest
    is kept (``config.select_best``).

    Args:
        model: the encoder to adapt (a classification model or a bare encoder); not modified.
        tokenizer: its tokenizer (mask id, vocabulary, specials, pad id).
        train_data, eval_data: tokenized rows of unlabelled text (``input_ids``,
            ``attention_mask``; class labels, if any, are ignored).
        config: ``fit``'s settings (epochs, batch size, warmup, precision, seed, max_steps).
        encoder_learning_rate, head_learning_rate: absolute AdamW rates of the two groups.
        mlm_probability: share of tokens masked.
        seed: seed of the head's initialisation and of the held-out masks.

    Returns:
        a :class:`PretrainingRun` (``before``/``after``: ``mlm_loss``, ``mlm_perplexity``, ``seconds``);
        ``run.model.encoder`` is the adapted encoder
        (:func:`load_adapted_encoder` puts it into a classification model).

    Reference: Gururangan et al., ACL 2020, https://arxiv.org/abs/2004.10964 (sections 3 and 4).
    """
    from tlutils.train import fit

    mlm, new = masked_lm_from_encoder(model, seed=seed)
    wrapped = SelectedMaskedLM(mlm)
    collator = PretrainingCollator(tokenizer, "mlm", masking="dynamic", seed=seed, mlm_probability=mlm_probability)
    sampler = EpochBatchSampler(train_data, config.batch_size, [collator], seed=config.seed,
                                group_by_length=config.group_by_length)
    eval_fn = (mlm_eval_fn(tokenizer, batch_size=config.eval_batch_size, mask_seed=seed, mlm_probability=mlm_probability)
               if eval_data is not None else None)
    wrapped.eval()  # fit evaluates in eval mode; so does the score before training
    before = eval_fn(wrapped, eval_data) if eval_fn is not None else {}
    history = fit(wrapped, train_data, eval_data, config=config, loss_fn=pretraining_loss, eval_fn=eval_fn,
                  batch_sampler=sampler, collate_fn=collator, pad_token_id=tokenizer.pad_token_id,
                  param_groups=param_groups(wrapped, encoder_learning_rate, head_learning_rate, config.weight_decay),
                  select_metric="mlm_loss" if eval_fn is not None else None, greater_is_better=False)
    after = eval_fn(wrapped, eval_data) if eval_fn is not None else {}
    sequences = history.train_samples
    tokens = round(count_tokens(train_data) * sequences / len(train_data))  # full passes: exact; a max_steps cut: pro rata
    return PretrainingRun(wrapped, history, before, after, tokens, sequences, new)


def load_adapted_encoder(target: nn.Module, adapted: SelectedMaskedLM | nn.Module) -> nn.Module:
    """Copy an adapted encoder's weights into ``target``'s encoder (e.g. a fresh
    ``load_model(name, num_labels)``), in place; the target's own head and pooler stay.

    Returns:
        ``target``.

    Raises:
        ConfigError: an encoder weight of ``target`` is missing from ``adapted`` (another
            architecture).
    """
    source = adapted.encoder if isinstance(adapted, SelectedMaskedLM) else encoder_of(adapted)
    result = encoder_of(target).load_state_dict(source.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("pooler.")]
    if missing or result.unexpected_keys:
        raise ConfigError(f"The adapted encoder does not fit {type(target).__name__}: missing {missing[:4]}, "
                          f"unexpected {list(result.unexpected_keys)[:4]}; load the same architecture.")
    return target
