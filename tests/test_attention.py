"""Properties of tlutils.attention: the from-scratch formula equals PyTorch's kernel, weights
are distributions that ignore masked keys, and the maps of a real encoder come out whole."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tlutils.attention import attention_maps, eager_attention, plot_attention_maps, scaled_dot_product_attention


def _qkv(seed: int = 0, B: int = 2, H: int = 3, T: int = 5, d: int = 8):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, T, d, generator=gen) for _ in range(3))


def test_matches_torch_without_mask():
    q, k, v = _qkv()
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert weights.shape == (2, 3, 5, 5)


@pytest.mark.parametrize("kind", ["padding", "causal"])
def test_matches_torch_with_mask(kind):
    q, k, v = _qkv(seed=1)
    if kind == "padding":
        keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
        mask = keep[:, None, None, :]  # (B, 1, 1, T)
    else:
        mask = torch.ones(5, 5, dtype=torch.bool).tril()  # (T, T)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.all(weights.masked_select(~mask.expand_as(weights)) == 0)


def test_weights_are_distributions_and_scaled():
    q, k, v = _qkv(seed=2)
    _, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5))
    assert (weights >= 0).all()
    unscaled = (q @ k.transpose(-2, -1)).softmax(-1)  # forgetting 1/sqrt(d) must be caught
    assert not torch.allclose(weights, unscaled)


def test_attention_maps_of_tiny_bert(tokenizer):
    from tlutils.models import load_model

    model = load_model("tiny-bert", 2, seed=0).eval()
    batch = tokenizer(["A short sentence.", "A slightly longer second sentence here."],
                      padding=True, return_tensors="pt")
    maps = attention_maps(model, batch)
    T = batch["input_ids"].shape[1]
    assert maps.shape == (2, 2, T, T)  # tiny-bert: 2 layers, 2 heads
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, T))
    before = model.config._attn_implementation
    with eager_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == before
    # The padded first example: its real queries give the pad keys zero weight.
    n = int(batch["attention_mask"][0].sum())
    assert n < T and maps[:, :, :n, n:].abs().max() < 1e-6
    fig = plot_attention_maps(maps, tokenizer.convert_ids_to_tokens(batch["input_ids"][0]), heads=[0])
    assert len(fig.axes) == 2
