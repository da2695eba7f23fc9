"""tlutils.dropout: Bernoulli masks from a quarter of the random numbers, and the attention that
uses them, checked against what ``nn.Dropout`` and the ``sdpa`` kernel compute."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tlutils.config import get_profile, set_seed
from tlutils.data import load_task, tokenize_task
from tlutils.dropout import ATTENTION, Dropout, attention, fast_dropout, inverted_dropout, keep_mask, quantized_rate
from tlutils.models import load_model, load_tokenizer
from tlutils.train import TrainConfig, fit

from test_architectures import ARCHS, TOKENIZERS, build


def _within(observed: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_keep_rate_is_one_minus_p_at_every_one_of_the_four_positions_of_a_word(p):
    """Each 64-bit word makes four decisions; a word drawn without the sign bit (random_()'s
    default range) would keep every fourth element more often than the others."""
    torch.manual_seed(0)
    n = 1 << 20
    keep = keep_mask((n,), p)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    assert _within(keep.float().mean().item(), 1 - quantized_rate(p), n)
    for position in range(4):
        share = keep[position::4].float().mean().item()
        assert _within(share, 1 - quantized_rate(p), n // 4), (position, share)


def test_neighbouring_decisions_are_independent():
    torch.manual_seed(1)
    keep = keep_mask((1 << 20,), 0.5).float()
    both = (keep[:-1] * keep[1:]).mean().item()  # P(keep, keep) = 0.25 when independent
    assert _within(both, 0.25, keep.numel() - 1)


def test_the_rate_is_rounded_to_a_multiple_of_a_65536th_and_the_edges_are_exact():
    assert quantized_rate(0.1) == 6554 / 65536 and abs(quantized_rate(0.1) - 0.1) < 1e-5
    assert keep_mask((3, 5), 0.0).all() and not keep_mask((3, 5), 1.0).any()
    x = torch.randn(4, 7)
    assert torch.equal(inverted_dropout(x, 1.0), torch.zeros_like(x))
    assert inverted_dropout(x, 0.0) is x and inverted_dropout(x, 0.3, training=False) is x


def test_survivors_are_scaled_so_the_expectation_is_kept_and_the_gradient_follows_the_mask():
    torch.manual_seed(2)
    x = torch.full((512, 512), 3.0, requires_grad=True)
    y = inverted_dropout(x, 0.1)
    kept = y != 0
    scale = 1 / (1 - quantized_rate(0.1))
    assert torch.allclose(y[kept], torch.full_like(y[kept], 3.0 * scale))
    assert abs(y.mean().item() - 3.0) < 0.02  # E[y] = x
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() * scale)


def test_bf16_survivors_are_scaled_in_fp32_and_rounded_once():
    """A bf16 scale would be 1.109 for p = 0.1 (bf16 keeps 8 significant bits): 0.16% too small."""
    torch.manual_seed(3)
    x = torch.randn(256, 256).to(torch.bfloat16)
    y = inverted_dropout(x, 0.1)
    kept = y != 0
    exact = (x.float() / (1 - quantized_rate(0.1))).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y[kept], exact[kept])


def test_the_same_seed_draws_the_same_mask_and_another_seed_another():
    torch.manual_seed(5)
    a = keep_mask((64, 64), 0.1)
    torch.manual_seed(5)
    assert torch.equal(a, keep_mask((64, 64), 0.1))
    assert not torch.equal(a, keep_mask((64, 64), 0.1))


def test_the_module_is_nn_dropout_in_eval_mode_and_refuses_a_bad_rate():
    module = Dropout(0.2).eval()
    x = torch.randn(3, 4)
    assert torch.equal(module(x), x) and "p=0.2" in repr(module)
    with pytest.raises(ValueError):
        Dropout(1.5)


def _qkv(seed=0, b=2, heads=3, t=6, d=8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, heads, t, d, generator=g) for _ in range(3)]


def test_attention_without_dropout_is_the_sdpa_kernel():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = nn.Module().eval()
    q, k, v = _qkv()
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False  # the second example's last two keys are padding
    ours, weights = attention(module, q, k, v, mask, dropout=0.0, scaling=0.5)
    theirs, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.5)
    assert weights is None and ours.shape == (2, 6, 3, 8) and torch.equal(ours, theirs)


@pytest.mark.parametrize("float_mask", [False, True])
def test_attention_with_dropout_is_softmax_then_the_mask_then_the_values(float_mask):
    module = nn.Module().train()
    q, k, v = _qkv(1)
    keys = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    keys[0, ..., 3:] = False
    mask = torch.zeros(keys.shape).masked_fill(~keys, float("-inf")) if float_mask else keys
    torch.manual_seed(7)
    ours, _ = attention(module, q, k, v, mask, dropout=0.25)
    probs = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~keys, float("-inf")).softmax(-1)
    torch.manual_seed(7)
    dropped = torch.where(keep_mask(probs.shape, 0.25), probs / (1 - quantized_rate(0.25)), 0)
    expected = (dropped @ v).transpose(1, 2)
    assert torch.allclose(ours, expected, atol=1e-6)
    assert (probs[0, ..., 3:] == 0).all()  # padding keys get no weight before the dropout


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_architecture_trains_through_it_and_gets_its_own_modules_back(name):
    tokenizers = {name: TOKENIZERS[name]()}
    model, tokenizer = build(name, tokenizers)
    batch = tokenizer(["A cat.", "The bank sold steel."], ["Shares fell.", "A new company."],
                      padding=True, return_tensors="pt")
    before = {n: m for n, m in model.named_modules()}
    implementation = model.config._attn_implementation
    model.eval()
    with torch.no_grad():
        reference = model(**batch).logits
    dropouts = sum(type(m) is nn.Dropout for m in model.modules())
    with fast_dropout(model) as swapped:
        assert swapped == dropouts > 0
        assert not any(type(m) is nn.Dropout for m in model.modules())
        assert model.config._attn_implementation == ATTENTION
        with torch.no_grad():  # eval mode: identity dropout and the fused kernel, the same logits
            assert torch.allclose(model(**batch).logits, reference, atol=1e-6)
        model.train()
        torch.manual_seed(0)
        loss = model(**batch, labels=torch.tensor([0, 1])).loss
        loss.backward()
        assert torch.isfinite(loss)
        assert model.get_input_embeddings().weight.grad.abs().sum() > 0  # through every layer's dropout
        torch.manual_seed(0)
        again = model(**batch, labels=torch.tensor([0, 1])).loss
        assert torch.equal(loss.detach(), again.detach())  # the masks come from the seeded generator
    assert {n: m for n, m in model.named_modules()} == before
    assert model.config._attn_implementation == implementation


def test_the_model_gets_its_modules_back_after_an_error():
    model = load_model("tiny-bert", 2, seed=0)
    first = model.bert.embeddings.dropout
    with pytest.raises(RuntimeError, match="boom"):
        with fast_dropout(model):
            assert isinstance(model.bert.embeddings.dropout, Dropout)
            raise RuntimeError("boom")
    assert model.bert.embeddings.dropout is first and model.config._attn_implementation == "sdpa"


@pytest.fixture(scope="module")
def mrpc():
    data = load_task("mrpc", max_train_examples=48, max_eval_examples=32)
    encoded, _ = tokenize_task(data, load_tokenizer("tiny-bert"), "mrpc", get_profile("smoke").max_length)
    return encoded


@pytest.mark.parametrize("setting,expected", [(None, True), (True, True), (False, False)])
def test_fit_uses_it_on_a_cpu_unless_told_not_to_and_puts_the_model_back(mrpc, setting, expected):
    set_seed(0)
    model = load_model("tiny-bert", 2, seed=0)
    seen = []

    def look(state):
        seen.append((type(model.bert.encoder.layer[0].output.dropout), model.config._attn_implementation))

    config = TrainConfig(epochs=1, batch_size=16, progress=False, fast_dropout=setting)
    history = fit(model, mrpc["train"], mrpc["validation"], task="mrpc", config=config, callbacks=[look])
    assert history.fast_dropout is expected
    assert set(seen) == ({(Dropout, ATTENTION)} if expected else {(nn.Dropout, "sdpa")})
    assert type(model.bert.encoder.layer[0].output.dropout) is nn.Dropout
    assert model.config._attn_implementation == "sdpa"


def test_a_model_that_refuses_the_attention_function_keeps_its_own(monkeypatch):
    model = load_model("tiny-bert", 2, seed=0)

    def refuse(name, **kwargs):
        raise ValueError(f"{name} is not supported")

    monkeypatch.setattr(model, "set_attn_implementation", refuse)
    with fast_dropout(model) as swapped:
        assert swapped > 0 and isinstance(model.bert.embeddings.dropout, Dropout)
        assert model.config._attn_implementation == "sdpa"
    assert type(model.bert.embeddings.dropout) is nn.Dropout
