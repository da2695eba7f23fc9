"""Paired held-out losses and equal-compute bookkeeping (tlutils.pretraining.compare)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlutils.errors import ConfigError
from tlutils.pretraining import PretrainingModel, build_pretraining_model, electra_generator_config, mini_config
from tlutils.pretraining.compare import (compare_losses, loss_ratio, masked_losses, pair_logits, steps_at_equal_compute,
                                         training_flops_per_token)
from tlutils.pretraining.objectives import mlm_eval_fn


def test_compare_losses_reads_like_a_verdict():
    rng = np.random.default_rng(0)
    counts = rng.integers(5, 20, size=200).astype(float)
    worse = counts * 6.0 + rng.normal(0, 1, 200)
    better = worse - 0.5 * counts  # 0.5 nats lower per masked token on every sequence
    c = compare_losses(counts, better, worse, names=("better", "worse"))
    assert c.verdict == "A better" and c.winner == "better"
    assert c.metric == "held-out log-likelihood per masked token"
    assert c.value_a == pytest.approx(loss_ratio(counts, better)) and c.difference == pytest.approx(0.5)
    assert compare_losses(counts, worse, worse).verdict == "not resolved"
    with pytest.raises(ConfigError, match="same examples"):
        compare_losses(counts, better[:10], worse)


def _tiny(tokenizer, family="bert"):
    torch.manual_seed(0)
    return build_pretraining_model(mini_config(family, tokenizer, hidden=32, layers=2, heads=2, intermediate=64,
                                               max_positions=34))


@pytest.fixture(scope="module")
def tokenizer():
    from tlutils.models import load_tokenizer

    return load_tokenizer("tiny-bert")


def test_masked_losses_sum_to_the_eval_fn_loss(tokenizer):
    model = _tiny(tokenizer).eval()
    texts = ["the film was good and the plot held", "a cheap kettle that broke in a week", "it rains in spring"] * 4
    examples = [{"input_ids": tokenizer(t)["input_ids"][:32]} for t in texts]
    sums, counts = masked_losses(model, tokenizer, examples, batch_size=5)
    assert sums.shape == counts.shape == (len(examples),) and counts.sum() > 0
    reference = mlm_eval_fn(tokenizer, batch_size=5)(PretrainingModel(model, "mlm"), examples)
    assert sums.sum() / counts.sum() == pytest.approx(reference["mlm_loss"], rel=1e-5)
    assert model.training is False


def test_pair_logits_score_the_pair_head(tokenizer):
    model = _tiny(tokenizer)
    a, b = tokenizer("the film was good")["input_ids"], tokenizer("the plot held")["input_ids"]
    examples = [{"input_ids": a + b[1:], "token_type_ids": [0] * len(a) + [1] * (len(b) - 1), "labels": i % 2}
                for i in range(6)]
    logits, gold = pair_logits(model, tokenizer, examples, batch_size=4)
    assert logits.shape == (6, 2) and gold.tolist() == [0, 1, 0, 1, 0, 1]
    assert model.training  # left as it was


def test_flops_sharing_is_free_factorising_and_electra_are_not():
    bert = mini_config("bert", 8000)
    shared = mini_config("albert", 8000, share_layers=True)
    factorised = mini_config("albert", 8000, embedding_size=32)
    electra = mini_config("electra", 8000)
    f = {name: training_flops_per_token(c) for name, c in
         [("bert", bert), ("shared", shared), ("factorised", factorised)]}
    f["electra"] = training_flops_per_token(electra, generator=electra_generator_config(electra))
    assert f["shared"] == pytest.approx(f["bert"] + 6 * 128 * 128, rel=1e-9)  # only ALBERT's E x H projection
    assert f["factorised"] < f["bert"] < f["electra"]
    assert steps_at_equal_compute(100, f["electra"], f["bert"]) < 100
    assert steps_at_equal_compute(100, f["bert"], f["bert"]) == 100
    with pytest.raises(ConfigError):
        steps_at_equal_compute(100, 0.0, 1.0)
