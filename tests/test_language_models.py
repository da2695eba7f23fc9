"""Properties of tlutils.language_models: smoothing, normalisation, perplexity ordering."""

from __future__ import annotations

import math
import random

import pytest
import torch

from tlutils.language_models import EOS, UNK, BigramLM, WindowLanguageModel, lm_batch, perplexity, train_language_model

SENTENCES = [s.split() for s in [
    "the company said shares rose on monday", "the company said profits fell on friday",
    "shares of the company rose sharply", "the bank said rates rose on monday",
    "profits of the bank fell sharply on friday"]]


def test_bigram_probabilities_sum_to_one():
    lm = BigramLM(k=0.5).fit(SENTENCES)
    for previous in ["the", "<s>", "sharply", "never-seen"]:
        total = sum(lm.prob(previous, w) for w in lm.vocab)
        assert math.isclose(total, 1.0, rel_tol=1e-9), previous


def test_bigram_training_sentence_beats_shuffled():
    lm = BigramLM(k=0.1).fit(SENTENCES)
    sentence = SENTENCES[0]
    shuffled = random.Random(0).sample(sentence, len(sentence))
    assert shuffled != sentence
    assert lm.perplexity([sentence]) < lm.perplexity([shuffled])


def test_bigram_unseen_words_and_k():
    lm = BigramLM(k=1.0).fit(SENTENCES)
    assert lm.prob("the", "zebra") == lm.prob("the", UNK) > 0
    sharp, flat = BigramLM(k=0.01).fit(SENTENCES), BigramLM(k=10).fit(SENTENCES)
    assert sharp.perplexity(SENTENCES) < flat.perplexity(SENTENCES)  # more smoothing, worse fit
    assert math.isclose(lm.log_prob([]), math.log(lm.prob("<s>", EOS)))
    with pytest.raises(ValueError):
        BigramLM(k=0)


def test_lm_batch_shifts_targets():
    ids, targets = lm_batch([[5, 6, 7], [8]], bos_id=1, eos_id=2)
    assert ids.tolist() == [[1, 5, 6, 7], [1, 8, 0, 0]]
    assert targets.tolist() == [[5, 6, 7, 2], [8, 2, -100, -100]]


def test_neural_lm_learns_and_perplexity_matches_loss():
    torch.manual_seed(0)
    data = [[3, 4, 5, 6], [3, 4, 5, 7], [3, 4, 5, 6]] * 4
    model = WindowLanguageModel(vocab_size=10, context=2, embed_dim=16, hidden_size=32)
    before = perplexity(model, data, bos_id=1, eos_id=2)
    losses = train_language_model(model, data, bos_id=1, eos_id=2, steps=80, batch_size=8, learning_rate=1e-2)
    after = perplexity(model, data, bos_id=1, eos_id=2)
    assert losses[-1] < losses[0] and after < before / 2
    ids, targets = lm_batch(data, 1, 2)
    _, loss = model(ids, targets)
    assert math.isclose(after, math.exp(loss.item()), rel_tol=1e-4)  # same token count per sentence


def test_neural_lm_is_causal():
    torch.manual_seed(0)
    model = WindowLanguageModel(vocab_size=20, context=3).eval()
    ids = torch.randint(3, 20, (2, 8))
    changed = ids.clone()
    changed[:, 5:] = 1  # only the future of position 4 changes
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])
