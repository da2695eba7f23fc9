"""Fine-tuning strategies: which weights train, at which learning rate, and when.

The book explains them in *Fine-tuning strategies* (``book/traditional/fine_tuning.md``):

- **Freezing**: :func:`freeze_all_but` keeps some layer groups trainable and fixes the rest;
  :func:`train_head_only` (the source article's description of fine-tuning) and
  :func:`train_top_k` are the two common cases. Each returns the number of trainable
  parameters.
- **Gradual unfreezing** (ULMFiT): :class:`GradualUnfreezing` is a ``fit`` callback that makes
  one more layer group trainable, from the top down, every ``every`` optimizer steps; the
  schedule itself is the pure function :func:`groups_unfrozen_at`.
- **Discriminative (layer-wise) learning rates**: :func:`layerwise_lr_groups` builds AdamW
  parameter groups whose *absolute* rates shrink by ``decay`` per layer below the head.
- **LoRA**: :func:`lora_model` wraps a classifier with ``peft`` low-rank adapters on the
  architecture's attention projections; only the adapters and the task head train.

Layer groups are those of :func:`tlutils.core.layer_of`: ``embeddings``, ``layer 0`` ...
``layer L-1`` (counted from the input), ``pooler`` and ``head``, read with the layer map of
the model's architecture (BERT, DistilBERT, RoBERTa, ALBERT, ELECTRA; see :mod:`tlutils.core`).
ALBERT has one ``shared layers`` group instead of ``layer i``: every layer reuses the same
weights, so :func:`train_top_k`, :func:`unfreezing_order` (and :class:`GradualUnfreezing`) and
decayed :func:`layerwise_lr_groups` raise a :class:`~tlutils.errors.ConfigError` for it rather
than return something meaningless; full fine-tuning, :func:`freeze_all_but` with whole groups
and :func:`lora_model` work. Nothing here keeps state between calls: the unfreezing callback
computes the trainable set from the step it is given.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

import torch

from tlutils.core import (group_sort_key, has_shared_layers, head_modules, layer_groups, layer_of,
                          lora_targets, model_type_of, shared_layers_error)
from tlutils.errors import ConfigError

if TYPE_CHECKING:
    from peft import PeftModel

HEAD_GROUPS = ("pooler", "head")  # what sits above the last transformer layer


def transformer_layers(model: torch.nn.Module) -> list[str]:
    """The model's transformer-block groups in network order: ``["layer 0", ..., "layer L-1"]``."""
    return [g for g in layer_groups(model) if g.startswith("layer ")]


def freeze_all_but(model: torch.nn.Module, trainable_groups: Iterable[str]) -> int:
    """Make exactly the parameters of ``trainable_groups`` trainable; freeze every other one.

    Args:
        model: an encoder with a task head (groups as :func:`tlutils.core.layer_groups` gives them).
        trainable_groups: group names such as ``"head"``, ``"pooler"``, ``"layer 5"``,
            ``"embeddings"`` (ALBERT: ``"shared layers"``).

    Returns:
        the number of trainable parameters afterwards.

    Raises:
        ConfigError: a group the model does not have (the message lists the ones it has).

    Example:
        >>> n = freeze_all_but(model, ["head"])  # only the classifier trains
    """
    wanted = set(trainable_groups)
    known = layer_groups(model)
    unknown = sorted(wanted - set(known), key=group_sort_key)
    if unknown:
        raise ConfigError(f"The model has no group {', '.join(map(repr, unknown))}; "
                          f"choose from {', '.join(known)}.")
    total = 0
    model_type = model_type_of(model)
    for name, param in model.named_parameters():
        param.requires_grad_(layer_of(name, model_type) in wanted)
        total += param.numel() if param.requires_grad else 0
    return total


def train_head_only(model: torch.nn.Module, include_pooler: bool = False) -> int:
    """Freeze the encoder, train the task head only ("we fix all weights except those of the
    last fully connected layer"); optionally the pooler too (BERT's and ALBERT's pretrained
    dense layer on the first token; RoBERTa, ELECTRA and DistilBERT have none).

    The head is everything above the encoder: BERT's ``classifier``, RoBERTa's and ELECTRA's
    two-layer ``classifier``, DistilBERT's ``pre_classifier`` and ``classifier``.

    Returns:
        the number of trainable parameters.
    """
    groups = [g for g in HEAD_GROUPS if include_pooler or g == "head"]
    return freeze_all_but(model, [g for g in groups if g in layer_groups(model)])


def train_top_k(model: torch.nn.Module, k: int, include_pooler: bool = True) -> int:
    """Train the top ``k`` transformer layers and everything above them (pooler, head).

    Args:
        model: an encoder with ``L`` transformer layers and a task head.
        k: how many layers, counted from the top, to train (0 <= k <= L; k = L leaves only
            the embeddings frozen).
        include_pooler: train the pooler (where there is one) with the head.

    Returns:
        the number of trainable parameters.

    Raises:
        ConfigError: ``k`` outside ``[0, L]``, or a model whose layers share their weights
            (ALBERT: there is no "top k" of one shared block).
    """
    if has_shared_layers(model):
        raise shared_layers_error(model, f"train_top_k(k={k})")
    layers = transformer_layers(model)
    if not 0 <= k <= len(layers):
        raise ConfigError(f"k={k}: the model has {len(layers)} transformer layers; use 0 <= k <= {len(layers)}.")
    above = [g for g in HEAD_GROUPS if (include_pooler or g == "head") and g in layer_groups(model)]
    return freeze_all_but(model, layers[len(layers) - k:] + above)


# --------------------------------------------------------------------------- gradual unfreezing


def unfreezing_order(model: torch.nn.Module) -> list[list[str]]:
    """The blocks gradual unfreezing makes trainable, top first: ``[["pooler", "head"],
    ["layer L-1"], ..., ["layer 0"], ["embeddings"]]`` (groups the model lacks are left out).

    Raises:
        ConfigError: a model whose layers share their weights (ALBERT).
    """
    if has_shared_layers(model):
        raise shared_layers_error(model, "Gradual unfreezing")
    groups = layer_groups(model)
    top = [g for g in groups if g in HEAD_GROUPS]
    return [top] + [[g] for g in reversed(groups) if g not in HEAD_GROUPS]


def groups_unfrozen_at(step: int, num_blocks: int, every: int, start: int = 1) -> int:
    """How many blocks (counted from the top) are trainable after ``step`` optimizer steps.

    ``start`` blocks train from the beginning, one more joins every ``every`` steps, and the
    count stops at ``num_blocks``: ``min(num_blocks, start + step // every)``.

    Args:
        step: optimizer steps done so far (0 before training).
        num_blocks: the number of blocks (``len(unfreezing_order(model))``).
        every: steps between two unfreezings (ULMFiT: one epoch).
        start: blocks trainable at step 0 (1: the head).

    Reference: Howard & Ruder, *Universal Language Model Fine-tuning for Text
    Classification*, ACL 2018, https://arxiv.org/abs/1801.06146 (section 3.3).
    """
    if step < 0 or num_blocks < 1 or every < 1 or not 1 <= start <= num_blocks:
        raise ConfigError(f"step={step}, num_blocks={num_blocks}, every={every}, start={start}: need "
                          "step >= 0, num_blocks >= 1, every >= 1 and 1 <= start <= num_blocks.")
    return min(num_blocks, start + step // every)


class GradualUnfreezing:
    """A ``fit`` callback that unfreezes one more layer group from the top every ``every`` steps.

    On construction the model is frozen to its step-0 state (only the top ``start`` blocks of
    :func:`unfreezing_order` train); after each optimizer step ``fit`` calls the object with
    ``state["global_step"]`` and it sets ``requires_grad`` to match
    :func:`groups_unfrozen_at`. The trainable set is a function of the step alone, so calling
    it twice, or after a resume, gives the same result.

    ``fit`` builds its optimizer once, from the parameters that are trainable at the start:
    pass ``param_groups=unfreezer.param_groups(lr, weight_decay)``, which holds *every*
    parameter. AdamW skips a parameter whose ``.grad`` is None, so frozen ones are left
    untouched (not even weight decay) until they are unfrozen.

    Args:
        model: the model being trained (the same object passed to ``fit``).
        every: optimizer steps between two unfreezings.
        start: blocks trainable from step 0.
        order: the blocks, top first (default :func:`unfreezing_order`, which refuses a model
            with shared layers such as ALBERT; an explicit order of whole groups, e.g.
            ``[["pooler", "head"], ["shared layers"], ["embeddings"]]``, is taken as given).

    Example:
        >>> unfreezer = GradualUnfreezing(model, every=10)
        >>> fit(model, train, task="mrpc", param_groups=unfreezer.param_groups(2e-4, 0.01),
        ...     callbacks=[unfreezer])

    Reference: Howard & Ruder 2018, https://arxiv.org/abs/1801.06146. Under ``accelerate
    launch`` ``fit`` wraps the model with every parameter of ``param_groups`` trainable and
    ``find_unused_parameters=True``, so layers unfrozen later are averaged across ranks too.
    """

    def __init__(self, model: torch.nn.Module, every: int, start: int = 1,
                 order: Optional[Sequence[Sequence[str]]] = None) -> None:
        self.model = model
        self.order = [list(block) for block in (order if order is not None else unfreezing_order(model))]
        self.every = every
        self.start = start
        groups_unfrozen_at(0, len(self.order), every, start)  # validates the arguments
        self.apply(0)

    def trainable_groups(self, step: int) -> list[str]:
        """The groups trainable after ``step`` optimizer steps."""
        n = groups_unfrozen_at(step, len(self.order), self.every, self.start)
        return [g for block in self.order[:n] for g in block]

    def apply(self, step: int) -> int:
        """Set ``requires_grad`` for ``step``; return the number of trainable parameters."""
        return freeze_all_but(self.model, self.trainable_groups(step))

    def __call__(self, state: dict[str, Any]) -> None:
        self.apply(int(state["global_step"]))

    def on_train_begin(self, state: dict[str, Any]) -> None:
        """``fit`` calls this before the first step: a resumed run trains the layers of its step."""
        self.apply(int(state["global_step"]))

    def param_groups(self, lr: float, weight_decay: float, decay: float = 1.0) -> list[dict[str, Any]]:
        """AdamW groups over *all* parameters, frozen ones included (see the class docstring)."""
        return layerwise_lr_groups(self.model, lr, decay, weight_decay, include_frozen=True)


# --------------------------------------------------------------------------- layer-wise rates


def layer_depths(model: torch.nn.Module) -> dict[str, int]:
    """Distance of each group from the top: pooler and head 0, ``layer L-1`` 1, ...,
    ``layer 0`` L, embeddings L+1.

    Raises:
        ConfigError: a model whose layers share their weights (ALBERT).
    """
    if has_shared_layers(model):
        raise shared_layers_error(model, "Layer depths")
    layers = transformer_layers(model)
    depths = {g: 0 for g in layer_groups(model) if g in HEAD_GROUPS}
    depths.update({g: len(layers) - i for i, g in enumerate(layers)})
    if "embeddings" in layer_groups(model):
        depths["embeddings"] = len(layers) + 1
    return dict(sorted(depths.items(), key=lambda kv: group_sort_key(kv[0])))


def layerwise_lr_groups(model: torch.nn.Module, lr: float, decay: float, weight_decay: float,
                        include_frozen: bool = False) -> list[dict[str, Any]]:
    """AdamW parameter groups with discriminative (layer-wise decayed) learning rates.

    Layer ``l`` of ``L`` (0-based from the input) gets ``lr * decay ** (L - l)``; the head and
    pooler get ``lr``, the embeddings ``lr * decay ** (L + 1)``. The rates are absolute
    numbers (``fit``'s warmup/decay schedule then scales every group alike). As in
    :func:`tlutils.train.weight_decay_groups`, matrices decay and 1-D tensors (biases,
    LayerNorm weights) do not.

    Args:
        model: an encoder with a task head.
        lr: the head's learning rate.
        decay: the factor per layer, in (0, 1] (1: one rate for all, plain fine-tuning).
        weight_decay: AdamW's decoupled weight decay for matrices.
        include_frozen: also list parameters with ``requires_grad=False`` (for
            :class:`GradualUnfreezing`, whose optimizer must know them from the start).

    Returns:
        groups ``{"params", "lr", "weight_decay", "name"}``, one per (layer group, decay or
        not), in network order; every (selected) parameter is in exactly one group.

    Raises:
        ConfigError: ``decay`` outside (0, 1], a negative rate, or ``decay < 1`` for a model
            whose layers share their weights (ALBERT; ``decay=1`` is well defined there).

    Reference: Sun, Qiu, Xu & Huang, *How to Fine-Tune BERT for Text Classification?*, CCL
    2019, https://arxiv.org/abs/1905.05583 (section 5.3); Howard & Ruder 2018 (2.6 per layer).
    """
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"decay={decay}: use a factor in (0, 1] (0.95 for BERT-base in Sun et al. 2019).")
    if lr < 0 or weight_decay < 0:
        raise ConfigError(f"lr={lr}, weight_decay={weight_decay}: both must be >= 0.")
    if has_shared_layers(model):
        if decay < 1.0:
            raise shared_layers_error(model, f"layerwise_lr_groups(decay={decay})")
        depths = {g: 0 for g in layer_groups(model)}  # one rate for all: plain fine-tuning
    else:
        depths = layer_depths(model)
    model_type = model_type_of(model)
    buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad or include_frozen:
            buckets.setdefault((layer_of(name, model_type), param.ndim >= 2), []).append(param)
    groups = []
    in_order = sorted(buckets.items(), key=lambda kv: (group_sort_key(kv[0][0]), not kv[0][1]))
    for (group, decays), params in in_order:
        groups.append({"params": params, "lr": lr * decay ** depths[group],
                       "weight_decay": weight_decay if decays else 0.0,
                       "name": f"{group}/{'decay' if decays else 'no_decay'}"})
    return groups


# --------------------------------------------------------------------------- LoRA


def lora_model(model: torch.nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.1,
               target_modules: Optional[Sequence[str]] = None,
               modules_to_save: Optional[Sequence[str]] = None) -> "PeftModel":
    """Wrap a sequence classifier with LoRA adapters (``peft``): ``W x + (alpha / r) B A x``.

    The pretrained weights are frozen; the low-rank matrices ``A (r, d_in)`` (random) and
    ``B (d_out, r)`` (zeros, so the wrapped model starts as the original) train, and so does
    the task head (its modules, :func:`tlutils.core.head_modules`, go to ``modules_to_save``:
    ``classifier``, and DistilBERT's ``pre_classifier`` too). ``fit``, ``evaluate`` and
    ``predict`` accept the result as they are; ``merge_and_unload()`` folds the adapters back
    into plain weights. On ALBERT the adapted projections are the one shared block's, so one
    adapter serves every layer.

    Args:
        model: e.g. :func:`tlutils.models.load_model`'s output.
        r: the rank of each update.
        alpha: the scale numerator (the update is multiplied by ``alpha / r``).
        dropout: dropout on the adapter's input.
        target_modules: names of the linear layers that get adapters; None: the attention's
            query and value projections of the model's architecture
            (:func:`tlutils.core.lora_targets`: ``query``/``value`` for BERT, RoBERTa, ALBERT
            and ELECTRA, ``q_lin``/``v_lin`` for DistilBERT).
        modules_to_save: further modules to train in full (e.g. ``["pooler"]``).

    Returns:
        a ``peft.PeftModelForSequenceClassification`` (the input model is modified in place).

    Raises:
        ConfigError: bad ``r``/``alpha``/``dropout``, or ``target_modules=None`` for a model
            type without default targets.

    Reference: Hu et al., *LoRA: Low-Rank Adaptation of Large Language Models*, ICLR 2022,
    https://arxiv.org/abs/2106.09685.
    """
    from peft import LoraConfig, get_peft_model

    if r < 1 or alpha <= 0 or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"r={r}, alpha={alpha}, dropout={dropout}: need r >= 1, alpha > 0, 0 <= dropout < 1.")
    targets = list(target_modules) if target_modules is not None else list(lora_targets(model))
    to_save = list(dict.fromkeys([*head_modules(model), *(modules_to_save or ())]))
    config = LoraConfig(task_type="SEQ_CLS", r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=targets, modules_to_save=to_save)
    with warnings.catch_warnings():  # peft 0.21 calls a transformers method deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
