"""Looking inside an encoder: sentence embeddings, layer groups and how far fine-tuning moves them.

Three questions a transfer experiment keeps asking, each a small pure function:

- *What does the encoder say about a sentence?* :func:`embed_sentences` pools its last hidden
  states into one vector per text (mean over real tokens, or the state of the tokenizer's
  first special token: BERT's ``[CLS]``, RoBERTa's ``<s>``), and :func:`pair_similarity`
  compares two lists of texts by cosine similarity.
- *Which part of the network is this weight in?* :func:`layer_of` maps a parameter name to its
  group (``embeddings``, ``layer 0`` ... ``layer N-1`` or ALBERT's ``shared layers``,
  ``pooler``, ``head``), so a chapter can freeze or count by layer. It and
  :func:`layer_groups` come from :mod:`tlutils.core`, which holds the name patterns of BERT,
  DistilBERT, RoBERTa, ALBERT and ELECTRA.
- *How much did training change each part?* :func:`layer_weight_change` compares two snapshots
  (:func:`snapshot`) layer by layer, and :func:`plot_layer_change` draws the result.

The chapter *Pretrained models and transfer learning* (``book/concepts/pretrained_and_transfer.md``)
uses all of them and explains what the numbers mean.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import torch

from tlutils.core import encoder_of, group_sort_key, layer_groups, layer_of, model_type_of
from tlutils.errors import ConfigError
from tlutils.methods.features import mean_pool

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from transformers import PreTrainedTokenizerBase

__all__ = ["POOLINGS", "embed_sentences", "first_token_id", "group_sort_key", "layer_groups",
           "layer_of", "layer_weight_change", "pair_similarity", "plot_layer_change", "snapshot"]
# layer_of, group_sort_key and layer_groups live in tlutils.core (the per-architecture layer
# maps); they are re-exported here, where the chapters have always imported them from.

POOLINGS = ("mean", "cls")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached fp32 CPU copy of every parameter (not the buffers), to compare later."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()}


def layer_weight_change(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
                        model: Optional[torch.nn.Module] = None) -> dict[str, float]:
    """Relative change of each layer group: ``‖W_after − W_before‖ / ‖W_before‖``.

    The norms are Frobenius norms over all parameters of a group taken together (one long
    vector per group), so a group's number does not depend on how it is split into tensors.

    Args:
        before, after: parameter name -> tensor (e.g. two :func:`snapshot` s, or state dicts).
        model: when given, only its parameters are compared (buffers such as ``position_ids``
            in a state dict are skipped) and grouped with its architecture's layer map;
            otherwise every floating-point entry of ``before``, grouped by name alone.

    Returns:
        group -> relative change (>= 0; exactly 0 for a group whose weights did not move), in
        network order (embeddings, layer 0 ... layer N-1 or shared layers, pooler, head).

    Raises:
        KeyError: a compared name is missing from ``after``.
        ValueError: a tensor changed shape.
    """
    names = ([n for n, _ in model.named_parameters()] if model is not None
             else [n for n, t in before.items() if torch.is_floating_point(t)])
    model_type = model_type_of(model) if model is not None else None
    diff_sq: dict[str, float] = {}
    base_sq: dict[str, float] = {}
    for name in names:
        w0 = before[name].detach().double().cpu()
        w1 = after[name].detach().double().cpu()
        if w0.shape != w1.shape:
            raise ValueError(f"{name}: shape {tuple(w0.shape)} before, {tuple(w1.shape)} after.")
        group = layer_of(name, model_type)
        diff_sq[group] = diff_sq.get(group, 0.0) + float(((w1 - w0) ** 2).sum())
        base_sq[group] = base_sq.get(group, 0.0) + float((w0 ** 2).sum())
    return {g: math.sqrt(diff_sq[g]) / math.sqrt(base_sq[g]) if base_sq[g] > 0 else
            (0.0 if diff_sq[g] == 0 else math.inf)
            for g in sorted(diff_sq, key=group_sort_key)}


def first_token_id(tokenizer: "PreTrainedTokenizerBase") -> int:
    """The id of the special token the tokenizer puts first, whose state ``"cls"`` pooling
    reads: ``cls_token`` (BERT's ``[CLS]``, RoBERTa's ``<s>``), else ``bos_token``.

    Raises:
        ConfigError: the tokenizer has neither.
    """
    for token_id in (tokenizer.cls_token_id, tokenizer.bos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ConfigError(f"{type(tokenizer).__name__} has no cls_token or bos_token for pooling='cls' "
                      "to read; use pooling='mean'.")


@torch.no_grad()
def embed_sentences(model: torch.nn.Module, tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str],
                    pooling: str = "mean", *, batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
    """One vector per text from the encoder's last hidden states.

    Args:
        model: an encoder, or a model with a task head (its ``base_model`` is used, also
            through a ``peft`` wrapper; the head is ignored).
        tokenizer: the model's tokenizer; its own special tokens frame each text
            (``[CLS] text [SEP]`` for BERT, ``<s> text </s>`` for RoBERTa), and whatever it
            returns (with or without ``token_type_ids``) goes to the encoder.
        texts: the sentences, each encoded on its own.
        pooling: ``"mean"``: the average of the real tokens' states (padding masked out), as
            sentence-transformers models such as all-MiniLM-L6-v2 are trained to be used;
            ``"cls"``: the state at position 0, which must hold the tokenizer's first special
            token (:func:`first_token_id`).
        batch_size, max_length: batching and truncation.

    Shapes:
        returns ``(N, H)`` float32 on the CPU, N = ``len(texts)``, H = hidden size.

    The model is put in eval mode (no dropout) and given back in the mode it was in.

    Raises:
        ValueError: an unknown ``pooling``.
        ConfigError: ``pooling="cls"`` with a tokenizer that does not put its ``cls_token``
            (or ``bos_token``) at position 0 (left padding, or no such token).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}: use one of {', '.join(POOLINGS)}.")
    first = first_token_id(tokenizer) if pooling == "cls" else None
    encoder = encoder_of(model)
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            if first is not None and not bool((batch["input_ids"][:, 0] == first).all()):
                raise ConfigError(f"pooling='cls' reads position 0, but the tokenizer does not put "
                                  f"{tokenizer.convert_ids_to_tokens(first)!r} there (left padding?); "
                                  "use pooling='mean' or padding_side='right'.")
            states = encoder(**batch).last_hidden_state.float()  # (B, T, H)
            if pooling == "cls":
                out.append(states[:, 0].cpu())  # (B, H)
                continue
            out.append(mean_pool(states, batch["attention_mask"]).cpu())  # (B, H)
    finally:
        encoder.train(was_training)
    if not out:
        return torch.zeros((0, encoder.config.hidden_size))
    return torch.cat(out)


def pair_similarity(model: torch.nn.Module, tokenizer: "PreTrainedTokenizerBase", texts_a: Sequence[str],
                    texts_b: Sequence[str], pooling: str = "mean", **kwargs) -> torch.Tensor:
    """Cosine similarity of each pair's two sentence embeddings, ``(N,)`` in ``[-1, 1]``.

    Each sentence is embedded *on its own* with :func:`embed_sentences` (a bi-encoder view);
    ``kwargs`` go to it.
    """
    if len(texts_a) != len(texts_b):
        raise ValueError(f"{len(texts_a)} first sentences but {len(texts_b)} second ones.")
    a = embed_sentences(model, tokenizer, texts_a, pooling, **kwargs)  # (N, H)
    b = embed_sentences(model, tokenizer, texts_b, pooling, **kwargs)  # (N, H)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)  # (N,)


def plot_layer_change(changes: Mapping[str, Mapping[str, float]] | Mapping[str, float], *,
                      ax: Optional["Axes"] = None, log: bool = False,
                      title: str = "How much fine-tuning moved each layer") -> "Axes":
    """Bars of :func:`layer_weight_change`, one group per layer; several runs side by side.

    Args:
        changes: one run (group -> change) or several (run name -> group -> change).
        log: a logarithmic y axis (a randomly initialised head can move far more than the rest).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    runs = changes if all(isinstance(v, Mapping) for v in changes.values()) else {"": changes}
    groups = sorted({g for run in runs.values() for g in run}, key=group_sort_key)
    ax = ax or plt.subplots(figsize=(max(5.0, 0.7 * len(groups) + 2), 3.6))[1]
    width = 0.8 / len(runs)
    x = np.arange(len(groups))
    for i, (name, run) in enumerate(runs.items()):
        values = [run.get(g, float("nan")) for g in groups]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=name or None,
               color=plt.cm.tab10.colors[i % 10])
    ax.set_xticks(x, groups, rotation=45, ha="right")
    ax.set(ylabel="‖W_after − W_before‖ / ‖W_before‖", title=title)
    if log:
        ax.set_yscale("log")
    if len(runs) > 1:
        ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return ax
