"""Per-architecture layer maps: which part of an encoder each parameter belongs to.

Freezing, layer-wise learning rates, gradual unfreezing, LoRA and the layer-by-layer plots all
need to know the same few facts about an architecture, and those facts differ from one model
family to the next:

- ``bert``: blocks ``bert.encoder.layer.i.``; embeddings ``bert.embeddings.``; above the
  encoder ``bert.pooler`` and ``classifier``; LoRA on ``query``, ``value``.
- ``roberta``: blocks ``roberta.encoder.layer.i.``; embeddings ``roberta.embeddings.``; no
  pooler, the head ``classifier`` is two layers (``dense``, ``out_proj``); LoRA on ``query``,
  ``value``.
- ``electra``: as RoBERTa, plus ``electra.embeddings_project`` (embedding size to hidden size)
  on the embedding side.
- ``distilbert``: blocks ``distilbert.transformer.layer.i.``; embeddings
  ``distilbert.embeddings.``; the head is ``pre_classifier`` and ``classifier``; LoRA on
  ``q_lin``, ``v_lin`` (its attention has no ``query``/``value``).
- ``albert``: *one* block ``albert.encoder.albert_layer_groups.0.`` reused by every layer;
  embeddings ``albert.embeddings.`` and ``albert.encoder.embedding_hidden_mapping_in``;
  ``albert.pooler`` and ``classifier`` above; LoRA on ``query``, ``value``.

Each entry is a :class:`LayerMap` in :data:`LAYER_MAPS`, keyed by ``model.config.model_type``;
:func:`layer_of` turns a parameter name into its group (``embeddings``, ``layer 0`` ...
``layer L-1``, ``shared layers``, ``pooler``, ``head``). A model type that is not in
:data:`LAYER_MAPS` gets :data:`GENERIC`, the union of the patterns, which fits most BERT-like
encoders; only :func:`lora_targets` refuses to guess.

ALBERT applies *one* set of transformer weights ``L`` times, so its blocks are not ``layer 0``
... ``layer L-1`` but a single ``shared layers`` group: per-layer freezing or learning rates
have no meaning there, and :mod:`tlutils.methods.finetune` says so instead of pretending.
(A configuration with ``num_hidden_groups > 1``, which no released ALBERT uses, has several
such blocks; they all land in ``shared layers``.)

This module knows names and module layout, nothing else: :mod:`tlutils.inspection` and
:mod:`tlutils.methods.finetune` build on it, and it imports nothing from them. The chapter
*Fine-tuning strategies* (``book/traditional/fine_tuning.md``) shows the groups of a real model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch

from tlutils.errors import ConfigError

EMBEDDINGS = "embeddings"
POOLER = "pooler"
HEAD = "head"
SHARED_LAYERS = "shared layers"


@dataclass(frozen=True)
class LayerMap:
    """Where one architecture keeps its parts, by parameter name.

    Attributes:
        model_type: ``config.model_type`` (``"bert"``, ``"distilbert"``, ...).
        layer: a pattern whose first group is the index of the transformer block (0-based);
            None when the blocks have no weights of their own (ALBERT).
        embeddings: module names (one dotted component each) on the input side of the
            blocks: the embedding tables and any projection to the hidden size.
        pooler: module names of a pretrained layer between the blocks and the task head.
        shared: a pattern for a block whose weights every layer reuses (ALBERT), or None.
        lora_targets: the attention projections LoRA adapts by default (query and value, as
            in Hu et al. 2022).
        head_modules: the task head's top-level modules, randomly initialised for a new task
            (they train in full under LoRA).
    """

    model_type: str
    layer: Optional[re.Pattern[str]]
    embeddings: tuple[str, ...] = (EMBEDDINGS,)
    pooler: tuple[str, ...] = (POOLER,)
    shared: Optional[re.Pattern[str]] = None
    lora_targets: tuple[str, ...] = ("query", "value")
    head_modules: tuple[str, ...] = ("classifier",)


# ``...encoder.layer.<i>...``: BERT, RoBERTa, ELECTRA (and MiniLM); group 1 is the layer index
ENCODER_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")
_ALBERT_SHARED = re.compile(r"(?:^|\.)albert_layer_groups\.\d+\.")

LAYER_MAPS: dict[str, LayerMap] = {m.model_type: m for m in (
    LayerMap("bert", ENCODER_LAYER),
    LayerMap("roberta", ENCODER_LAYER),
    LayerMap("electra", ENCODER_LAYER, embeddings=(EMBEDDINGS, "embeddings_project")),
    LayerMap("distilbert", re.compile(r"(?:^|\.)transformer\.layer\.(\d+)\."),
             lora_targets=("q_lin", "v_lin"), head_modules=("pre_classifier", "classifier")),
    LayerMap("albert", None,  # no per-layer weights: the one block is `shared`
             embeddings=(EMBEDDINGS, "embedding_hidden_mapping_in"), shared=_ALBERT_SHARED),
)}

GENERIC = LayerMap("generic", re.compile(r"(?:^|\.)(?:layer|layers)\.(\d+)\."),
                   embeddings=(EMBEDDINGS, "embeddings_project", "embedding_hidden_mapping_in"),
                   shared=_ALBERT_SHARED, lora_targets=())
"""The map for a model type not in :data:`LAYER_MAPS`: every pattern of the table at once."""


def model_type_of(model: torch.nn.Module) -> Optional[str]:
    """``model.config.model_type`` (also through a ``peft`` wrapper), or None without a config."""
    return getattr(getattr(model, "config", None), "model_type", None)


def layer_map(model_type: Optional[str]) -> LayerMap:
    """The :class:`LayerMap` of ``model_type``; :data:`GENERIC` for None or an unknown type."""
    return LAYER_MAPS.get(model_type or "", GENERIC)


def layer_of(name: str, model_type: Optional[str] = None) -> str:
    """The group a parameter belongs to, from its name.

    Args:
        name: a parameter name as ``named_parameters()`` gives it (a ``peft`` prefix such as
            ``base_model.model.`` is fine).
        model_type: the model's ``config.model_type``; None (or an unknown type) reads the
            name with the patterns of every known architecture (:data:`GENERIC`).

    Returns:
        ``"embeddings"`` (token, position and segment embeddings, their LayerNorm and any
        projection to the hidden size), ``"layer i"`` (the i-th transformer block from the
        input, 0-based), ``"shared layers"`` (ALBERT's one block that every layer reuses),
        ``"pooler"`` (a pretrained dense layer on the first token: BERT, ALBERT) or ``"head"``
        (everything else: the task's classifier, DistilBERT's ``pre_classifier`` included).

    Example:
        >>> layer_of("bert.encoder.layer.3.attention.self.query.weight")
        'layer 3'
        >>> layer_of("electra.embeddings_project.weight", "electra")
        'embeddings'
        >>> layer_of("albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight")
        'shared layers'
    """
    arch = layer_map(model_type)
    parts = name.split(".")
    if any(p in arch.embeddings for p in parts):
        return EMBEDDINGS
    if arch.shared is not None and arch.shared.search(name):
        return SHARED_LAYERS
    match = arch.layer.search(name) if arch.layer is not None else None
    if match:
        return f"layer {int(match.group(1))}"
    if any(p in arch.pooler for p in parts):
        return POOLER
    return HEAD


def group_sort_key(group: str) -> tuple[int, int]:
    """Sort key putting groups in network order: embeddings, layer 0, layer 1, ... (or shared
    layers), pooler, head."""
    if group == EMBEDDINGS:
        return (0, 0)
    if group == SHARED_LAYERS:
        return (1, -1)
    if group.startswith("layer "):
        return (1, int(group.split()[1]))
    return (2, 0) if group == POOLER else (3, 0)


def layer_groups(model: torch.nn.Module) -> list[str]:
    """The model's parameter groups in network order, e.g. ``["embeddings", "layer 0", ...,
    "layer L-1", "pooler", "head"]`` (BERT) or ``["embeddings", "shared layers", "pooler",
    "head"]`` (ALBERT)."""
    model_type = model_type_of(model)
    return sorted({layer_of(n, model_type) for n, _ in model.named_parameters()}, key=group_sort_key)


def has_shared_layers(model: torch.nn.Module) -> bool:
    """Whether the model reuses one block's weights across its layers (ALBERT)."""
    return SHARED_LAYERS in layer_groups(model)


def shared_layers_error(model: torch.nn.Module, what: str) -> ConfigError:
    """The one-line error for a per-layer operation ``what`` on a model with shared layers."""
    return ConfigError(f"{what} needs one set of weights per layer, but model_type="
                       f"{model_type_of(model)!r} shares one set across all its layers, so per-layer "
                       "rates and freezing are undefined: fine-tune in full or use lora_model.")


def lora_targets(model: torch.nn.Module) -> tuple[str, ...]:
    """The module names LoRA adapts by default for this architecture (its attention's query
    and value projections).

    Raises:
        ConfigError: a model type without an entry in :data:`LAYER_MAPS`.
    """
    model_type = model_type_of(model)
    if model_type not in LAYER_MAPS:
        raise ConfigError(f"No default LoRA targets for model_type={model_type!r} (known: "
                          f"{', '.join(sorted(LAYER_MAPS))}); pass target_modules=[...] with the "
                          "names of its attention projections.")
    return LAYER_MAPS[model_type].lora_targets


def head_modules(model: torch.nn.Module) -> tuple[str, ...]:
    """The top-level modules of the task head (``("classifier",)``, DistilBERT:
    ``("pre_classifier", "classifier")``); :data:`GENERIC`'s for an unknown type."""
    return layer_map(model_type_of(model)).head_modules


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The bare encoder of a model with a task head: ``model.base_model`` (``model.bert``,
    ``model.distilbert``, ``model.roberta``, ...), through a ``peft`` wrapper if there is one;
    the model itself when it has no head."""
    if callable(getattr(model, "get_base_model", None)):  # a peft wrapper: its base_model is the tuner
        model = model.get_base_model()
    return getattr(model, "base_model", model)
