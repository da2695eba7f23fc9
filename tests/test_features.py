"""encode_texts: mean-pooled embeddings, in input order, independent of batching."""

from __future__ import annotations

import numpy as np
import torch

from tlutils.methods.features import encode_texts, mean_pool
from tlutils.models import load_model


def test_encode_texts_matches_one_by_one_encoding_and_keeps_order(tokenizer):
    model = load_model("tiny-bert", 2, seed=0)  # in train mode: encode_texts must switch dropout off
    texts = ["a short one.", "a much longer sentence with many more words in it than the first.",
             "medium length sentence here.", "x"]
    emb = encode_texts(model, tokenizer, texts, batch_size=3, mixed_precision="no")
    assert emb.shape == (4, 128) and emb.dtype == np.float32
    assert model.training  # encode_texts restores the mode it found
    model.eval()
    with torch.no_grad():
        for i, text in enumerate(texts):
            enc = tokenizer(text, return_tensors="pt")
            single = mean_pool(model.bert(**enc).last_hidden_state, enc["attention_mask"])[0]
            np.testing.assert_allclose(emb[i], single.numpy(), rtol=1e-4, atol=1e-5)
    unit = encode_texts(model, tokenizer, texts, normalize=True, mixed_precision="no")
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
