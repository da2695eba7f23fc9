"""Properties of tlutils.masking.mask_tokens (BERT's 80/10/10 rule)."""

from __future__ import annotations

import math

import pytest
import torch

from tlutils.masking import IGNORE_INDEX, MaskingVocab, mask_tokens, masking_fractions

VOCAB = MaskingVocab(mask_token_id=103, vocab_size=1000, special_ids=(0, 100, 101, 102, 103))


def _batch(B: int = 256, T: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(104, 1000, (B, T), generator=gen)
    lengths = torch.randint(8, T + 1, (B,), generator=gen)
    attention = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 101  # [CLS]
    ids[torch.arange(B), lengths - 1] = 102  # [SEP]
    ids[attention == 0] = 0  # [PAD]
    return ids, attention


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_special_tokens_and_padding_never_touched():
    ids, attention = _batch()
    masked, labels = mask_tokens(ids, VOCAB, attention_mask=attention, generator=_gen(0))
    special = torch.isin(ids, torch.tensor(VOCAB.special_ids)) | (attention == 0)
    assert (masked[special] == ids[special]).all()
    assert (labels[special] == IGNORE_INDEX).all()


def test_labels_hold_originals_exactly_where_chosen():
    ids, attention = _batch(seed=1)
    masked, labels = mask_tokens(ids, VOCAB, attention_mask=attention, generator=_gen(1))
    chosen = labels != IGNORE_INDEX
    assert (labels[chosen] == ids[chosen]).all()
    assert (masked[~chosen] == ids[~chosen]).all()  # nothing outside the chosen set changes
    assert not torch.isin(masked[chosen & (masked != VOCAB.mask_token_id)],
                          torch.tensor([0, 100, 101, 102])).any()  # random draws are never special


def test_input_not_modified_and_same_seed_same_mask():
    ids, attention = _batch(seed=2)
    copy = ids.clone()
    a = mask_tokens(ids, VOCAB, attention_mask=attention, generator=_gen(5))
    b = mask_tokens(ids, VOCAB, attention_mask=attention, generator=_gen(5))
    c = mask_tokens(ids, VOCAB, attention_mask=attention, generator=_gen(6))
    assert torch.equal(ids, copy)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_no_global_rng_side_effects():
    ids, attention = _batch(seed=3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    mask_tokens(ids, VOCAB, attention_mask=attention, generator=_gen(0))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("p", [0.15, 0.4])
def test_proportions_within_binomial_tolerance(p):
    ids, attention = _batch(B=512, seed=4)
    masked, labels = mask_tokens(ids, VOCAB, attention_mask=attention, mlm_probability=p, generator=_gen(7))
    eligible = (attention == 1) & ~torch.isin(ids, torch.tensor(VOCAB.special_ids))
    f = masking_fractions(ids, masked, labels, VOCAB.mask_token_id, eligible)
    for name, expected, n in [("chosen", p, f["n_eligible"]), ("mask", 0.8, f["n_chosen"]),
                              ("random", 0.1, f["n_chosen"]), ("unchanged", 0.1, f["n_chosen"])]:
        sd = math.sqrt(expected * (1 - expected) / n)
        assert abs(f[name] - expected) < 5 * sd, (name, f[name], expected)


def test_from_tokenizer(tokenizer):
    vocab = MaskingVocab.from_tokenizer(tokenizer)
    assert vocab.mask_token_id == tokenizer.mask_token_id and tokenizer.pad_token_id in vocab.special_ids
    batch = tokenizer(["a short one", "a somewhat longer sentence than that"], padding=True, return_tensors="pt")
    masked, labels = mask_tokens(batch["input_ids"], tokenizer, attention_mask=batch["attention_mask"],
                                 mlm_probability=1.0, generator=_gen(0))
    real = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], torch.tensor(vocab.special_ids))
    assert ((labels != IGNORE_INDEX) == real).all()  # p = 1: every real word token, nothing else
