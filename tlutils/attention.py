"""Scaled dot-product attention from scratch, and the attention maps of a Transformer encoder.

The chapter *Terms I: from text to a trained classifier* (section *Attention*) derives the
formula, checks :func:`scaled_dot_product_attention` against PyTorch's fused kernel and draws
the maps of the book's encoder with :func:`plot_attention_maps`.

Reference: Vaswani et al., "Attention Is All You Need" (2017), https://arxiv.org/abs/1706.03762,
equation (1).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Iterator, Mapping, Optional, Sequence

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q kᵀ / √d) v``, written out.

    Args:
        q: queries.
        k: keys.
        v: values.
        mask: boolean, ``True`` where a query may attend to a key (the convention of
            ``torch.nn.functional.scaled_dot_product_attention``); broadcastable to
            ``(..., Tq, Tk)``. A padding mask ``(B, Tk)`` becomes ``mask[:, None, None, :]``
            for ``(B, heads, Tq, Tk)`` scores. Every query must keep at least one key.

    Shapes:
        q ``(..., Tq, d)``, k ``(..., Tk, d)``, v ``(..., Tk, dv)``.

    Returns:
        ``(output, weights)``: output ``(..., Tq, dv)``; weights ``(..., Tq, Tk)``, each row a
        probability distribution over the keys, exactly 0 on masked keys.

    Reference: Vaswani et al. (2017), https://arxiv.org/abs/1706.03762, eq. (1).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask.bool(), float("-inf"))
    weights = scores.softmax(dim=-1)  # (..., Tq, Tk)
    return weights @ v, weights  # (..., Tq, dv), (..., Tq, Tk)


@contextlib.contextmanager
def attention_implementation(model: torch.nn.Module, name: str,
                             replace: Optional[Sequence[str]] = None) -> Iterator[bool]:
    """Temporarily run a Hugging Face model's attention through the implementation ``name``
    (``"eager"``, ``"sdpa"`` or one registered with transformers' ``AttentionInterface``), and
    put its own back on exit, also after an error. Only a model whose implementation is in
    ``replace`` (default: any other than ``name``) is switched; a module without one is left
    alone. Yields whether it switched. A model that refuses ``name`` raises on entry.
    """
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = (before not in (None, name) and (replace is None or before in replace)
              and hasattr(model, "set_attn_implementation"))
    if switch:
        model.set_attn_implementation(name)
    try:
        yield switch
    finally:
        if switch:
            model.set_attn_implementation(before)


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Temporarily switch a Hugging Face model to the ``eager`` attention implementation.

    The fused ``sdpa`` kernel (the default in transformers 5) never materialises the attention
    weights, so ``output_attentions=True`` returns nothing under it.
    """
    with attention_implementation(model, "eager"):
        yield model


@torch.no_grad()
def attention_maps(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The attention weights of every layer and head for the first example of ``batch``.

    Args:
        model: a Hugging Face encoder (or a model with an encoder and a head).
        batch: model inputs (``input_ids``, ``attention_mask``, ``token_type_ids``); a
            ``labels`` entry is ignored.

    Shapes:
        batch tensors ``(B, T)``; the result ``(layers, heads, T, T)``, row ``i`` of a map
        being how query position ``i`` distributes its attention over the key positions.

    Returns:
        a CPU float tensor of attention weights (padding positions included: slice them off
        with the attention mask).

    Reference: Vaswani et al. (2017), https://arxiv.org/abs/1706.03762.
    """
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model):
            out = model(**inputs, output_attentions=True)
    finally:
        model.train(was_training)
    if not out.attentions:
        raise RuntimeError("The model returned no attention weights; load it with "
                           "attn_implementation='eager'.")
    return torch.stack([layer[0] for layer in out.attentions]).float().cpu()  # (L, H, T, T)


def plot_attention_maps(maps: torch.Tensor, tokens: Sequence[str], layers: Optional[Sequence[int]] = None,
                        heads: Optional[Sequence[int]] = None, size: float = 2.2) -> "Figure":
    """A grid of attention heatmaps: one row per layer, one column per head.

    Args:
        maps: ``(layers, heads, T, T)`` from :func:`attention_maps`.
        tokens: the ``T`` token strings (keys on the x axis, queries on the y axis).
        layers: which layers to draw (default: all).
        heads: which heads to draw (default: all).
        size: inches per panel.

    Returns:
        the matplotlib figure; tick labels are drawn on the left column and bottom row only.
    """
    import matplotlib.pyplot as plt

    layers = list(range(maps.shape[0])) if layers is None else list(layers)
    heads = list(range(maps.shape[1])) if heads is None else list(heads)
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(size * len(heads) + 1, size * len(layers) + 0.5),
                             squeeze=False)
    ticks = range(len(tokens))
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            ax.imshow(maps[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks(ticks, tokens if r == len(layers) - 1 else [], rotation=90, fontsize=6)
            ax.set_yticks(ticks, tokens if c == 0 else [], fontsize=6)
            if r == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    fig.tight_layout()
    return fig
