"""Frozen features: sentence embeddings from an encoder, for scikit-learn classifiers and
similarity studies (feature extraction: the encoder is not trained).

Used in *Terms II: learning across tasks and domains* (domain shift, self-training, triplets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tlutils.config import resolve_mixed_precision
from tlutils.methods.contrastive import mean_pool

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@torch.inference_mode()
def encode_texts(model: torch.nn.Module, tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str], *,
                 max_length: int = 128, batch_size: int = 64, normalize: bool = False,
                 mixed_precision: str = "auto") -> np.ndarray:
    """Mean-pooled last hidden states of ``texts``, in their order.

    Texts are sorted by length and batched (little padding), encoded in eval mode (no
    dropout) with bf16/fp16 autocast where :func:`tlutils.config.resolve_mixed_precision`
    allows it, and put back in the input order.

    Args:
        model: an encoder, or a model with one (``model.base_model`` is used when it exists).
        tokenizer: its tokenizer.
        texts: the sentences or documents.
        max_length: truncate longer texts to this many tokens.
        batch_size: texts per forward pass.
        normalize: L2-normalise each embedding.
        mixed_precision: ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"no"`` (bit-exact fp32).

    Shapes:
        Returns (N, H) float32.

    Reference: mean pooling as in Sentence-BERT (Reimers & Gurevych 2019,
    https://arxiv.org/abs/1908.10084).
    """
    encoder = getattr(model, "base_model", model)
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    precision = resolve_mixed_precision(mixed_precision, cpu=device.type != "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    lengths = [len(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                hidden = encoder(**batch).last_hidden_state  # (B, T, H)
            emb = mean_pool(hidden.float(), batch["attention_mask"])  # (B, H)
            if normalize:
                emb = F.normalize(emb, dim=-1)
            out[idx] = emb.cpu().numpy()
    finally:
        encoder.train(was_training)
    return out
