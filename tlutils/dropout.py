"""Dropout with cheaper masks, for training on a CPU.

Dropout (Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
JMLR 15, 2014, https://jmlr.org/papers/v15/srivastava14a.html) zeroes each activation with
probability ``p`` and scales the survivors by ``1 / (1 - p)`` ("inverted" dropout, so that
evaluation needs no rescaling). Its cost is the random mask, not the multiplication: on a CPU
``torch.bernoulli_`` draws one random number per element, and in a BERT-style encoder with
bf16 matrix products the masks took 16% of a training step (20 masks a step for MiniLM-L6,
6 of them on the ``(B, heads, T, T)`` attention probabilities).

:func:`keep_mask` draws the same Bernoulli mask from a quarter of the random numbers: each
64-bit random word is cut into four 16-bit uniform integers, and an element is kept when its
integer clears a threshold. The keep probability is ``p`` rounded to a multiple of 1/65,536
(0.1 becomes 0.100006, and the survivors are scaled by exactly the inverse of the rounded
keep probability, so the expectation is preserved). Masks come from the default torch
generator, so ``torch.manual_seed`` and a resumed checkpoint's RNG state reproduce them.

:func:`fast_dropout` puts it into a Hugging Face encoder for the length of a ``with`` block:
every ``nn.Dropout`` becomes a :class:`Dropout`, and the attention runs through
:func:`attention`, which is the usual ``softmax(q kᵀ / √d + mask) v`` (Vaswani et al. 2017,
eq. 1) with this dropout on the probabilities while training and PyTorch's fused kernel
(``sdpa``) otherwise. ``tlutils.train.fit`` uses it on a CPU (``TrainConfig.fast_dropout``):
in its benchmark (``python -m tlutils bench``, MiniLM on 1,600 MRPC pairs, 2 cores) ``fit`` went
from 53.8 to 62.5 pairs/s in bf16 and from 33.6 to 37.8 in fp32 on the same CPU capped to AVX2
(``benchmarks/results/fit_vs_trainers.1600x1*.json``, one run before, the median of three after). On a GPU the fused
attention kernels draw their mask inside the kernel, so ``fit`` leaves the model as it is.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Optional

import torch
from torch import nn

from tlutils.attention import attention_implementation

ATTENTION = "tlutils_dropout"  # the name this attention is registered under with transformers
LEVELS = 1 << 16  # a keep decision per 16 random bits


def quantized_rate(p: float) -> float:
    """The dropout rate :func:`keep_mask` uses: ``p`` rounded to a multiple of 1/65,536."""
    return round(p * LEVELS) / LEVELS


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: Any = None) -> torch.Tensor:
    """A boolean mask of ``shape``: each element ``True`` (kept) with probability
    ``1 - quantized_rate(p)``, independently, drawn from the default torch generator.

    Four keep decisions per 64-bit random word: the words are viewed as 16-bit integers,
    uniform on [-32768, 32767], and an element is dropped when its integer is among the lowest
    ``round(p * 65536)`` values. (The full 64-bit range matters: ``random_()`` without bounds
    leaves the sign bit 0, which would bias every fourth decision.)
    """
    n = math.prod(shape)
    drop = round(p * LEVELS)
    if drop <= 0:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if drop >= LEVELS:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    return words.view(torch.int16)[:n].view(shape) >= drop - (1 << 15)


def inverted_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` with :func:`keep_mask`: what ``nn.functional.dropout`` computes,
    in distribution (rate ``quantized_rate(p)``); ``x`` itself when not training or ``p == 0``."""
    if not training or p <= 0:
        return x
    q = quantized_rate(p)
    if q >= 1:
        return torch.zeros_like(x)
    return _MaskAndScale.apply(x, keep_mask(x.shape, p, x.device).to(x.dtype), 1.0 / (1.0 - q))


class _MaskAndScale(torch.autograd.Function):
    """``x * mask * scale`` and its gradient ``grad * mask * scale``, with ``mask`` of 0s and 1s in
    ``x``'s dtype. The scale stays a Python float, so bf16 tensors are scaled in fp32 and rounded
    once (a bf16 mask holding ``1 / 0.9`` would be 1.109, not 1.111); multiplying by a mask
    measured 2% of a training step faster than ``torch.where(keep, x * scale, 0)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.mul(x, mask).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return torch.mul(grad, mask).mul_(ctx.scale), None, None


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (same ``p``, same train/eval behaviour) using :func:`inverted_dropout`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return inverted_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """A transformers attention function: ``softmax(q kᵀ · scaling + mask) v`` with
    :func:`inverted_dropout` on the probabilities while training, PyTorch's fused ``sdpa`` otherwise.

    Shapes: query ``(B, heads, Tq, d)``, key and value ``(B, heads, Tk, d)``; ``attention_mask``
    boolean ``(B, 1, Tq, Tk)``, ``True`` where a query may attend (as transformers builds it for
    ``sdpa``), an additive float mask, or None. Returns ``(output (B, Tq, heads, d), None)``.
    Every query row must keep at least one key (true of padding masks: ``[CLS]`` is never
    padding).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout == 0.0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                                      scaling=scaling, **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling  # (B, heads, Tq, Tk)
    if attention_mask is not None:
        scores = (scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool
                  else scores + attention_mask)
    weights = inverted_dropout(scores.softmax(-1), dropout)
    out = torch.matmul(weights.to(value.dtype), value)  # (B, heads, Tq, d)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register :func:`attention` (and the ``sdpa`` way of building its masks) with transformers
    under the name :data:`ATTENTION`; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@contextlib.contextmanager
def fast_dropout(model: nn.Module) -> Iterator[int]:
    """Within the block, ``model`` draws its dropout masks with :func:`keep_mask`: each
    ``nn.Dropout`` is replaced by a :class:`Dropout` of the same rate, and a model on the
    ``sdpa`` or ``eager`` attention implementation runs :func:`attention`. Everything is put
    back on exit, also after an error. Yields the number of dropout modules replaced.

    Architecture-neutral: it walks the module tree and the model's own attention setting
    (BERT, RoBERTa, DistilBERT, ALBERT and ELECTRA are tested). Parameters and the state dict
    are untouched (dropout has no weights), so optimizers and checkpoints see the same model.
    """
    swapped = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if type(child) is nn.Dropout]

    def put_back() -> None:
        for parent, name, child in swapped:
            setattr(parent, name, child)

    with contextlib.ExitStack() as stack:
        stack.callback(put_back)
        for parent, name, child in swapped:
            setattr(parent, name, Dropout(child.p).train(child.training))
        if hasattr(model, "set_attn_implementation"):  # a transformers model
            register()
            try:
                stack.enter_context(attention_implementation(model, ATTENTION, replace=("sdpa", "eager")))
            except (ValueError, NotImplementedError):  # a model that refuses registered attention functions
                pass  # keeps its own (its attention dropout then draws the usual masks)
        yield len(swapped)
