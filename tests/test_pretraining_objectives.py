"""Pretraining losses: equal to the full-logit losses, masked positions only, fixed held-out masks."""

from __future__ import annotations

import math

import pytest
import torch
from pretraining_helpers import tiny_corpus, tiny_tokenizer

from tlutils.errors import ConfigError
from tlutils.pretraining import (PretrainingCollator, PretrainingModel, build_pretraining_model, make_examples,
                                 mini_config, mlm_eval_fn, pretraining_loss)
from tlutils.pretraining.objectives import clm_eval_fn, fixed_batches

SIZE = dict(hidden=32, layers=2, heads=2, intermediate=64)


@pytest.fixture(scope="module")
def corpus():
    return tiny_corpus(100)


@pytest.fixture(scope="module")
def wp(corpus):
    return tiny_tokenizer("wordpiece", corpus)


@pytest.fixture(scope="module")
def bpe(corpus):
    return tiny_tokenizer("bpe", corpus)


def model_for(family, objective, tok):
    torch.manual_seed(0)
    return PretrainingModel(build_pretraining_model(mini_config(family, tok, **SIZE)), objective).eval()


def batch_of(corpus, tok, objective, n=8):
    examples = make_examples(corpus.documents, tok, objective, 40, seed=0)[:n]
    return PretrainingCollator(tok, "clm" if objective == "clm" else "mlm", seed=0)(
        [{**e, "idx": i} for i, e in enumerate(examples)])


def test_mlm_nsp_loss_equals_the_full_logit_loss(corpus, wp):
    model = model_for("bert", "mlm+nsp", wp)
    batch = batch_of(corpus, wp, "mlm+nsp")
    with torch.no_grad():
        ours = model(**batch)
        theirs = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             token_type_ids=batch["token_type_ids"], labels=batch["labels"],
                             next_sentence_label=batch["pair_labels"])
    assert torch.allclose(ours.loss, theirs.loss, atol=1e-5)
    assert set(ours.stats) >= {"mlm_loss", "pair_loss", "pair_accuracy", "tokens"}


def test_causal_loss_equals_the_full_logit_loss(corpus, bpe):
    model = model_for("gpt2", "clm", bpe)
    batch = batch_of(corpus, bpe, "clm")
    batch["attention_mask"][-1, -5:] = 0  # some padding at the end of the last row
    batch["labels"][-1, -5:] = -100
    with torch.no_grad():
        ours = model(**batch)
        theirs = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"])
    assert torch.allclose(ours.loss, theirs.loss, atol=1e-5)


def test_the_lm_head_only_sees_masked_positions(corpus, bpe):
    tok = bpe
    model = model_for("roberta", "mlm", tok)
    rows = []
    head = model.model.lm_head
    handle = head.register_forward_hook(lambda module, args, out: rows.append(tuple(out.shape)))
    examples = make_examples(corpus.documents, tok, "mlm", 40)[:20]
    metrics = mlm_eval_fn(tok, batch_size=8)(model, examples)
    handle.remove()
    batches = fixed_batches(examples, PretrainingCollator(tok, "mlm", "static", seed=0), 8)
    masked = [int((b["labels"] != -100).sum()) for b in batches]
    assert rows == [(m, len(tok)) for m in masked]  # (M, V) per batch, never (B, T, V)
    assert math.isclose(metrics["mlm_perplexity"], math.exp(metrics["mlm_loss"]))


def test_heldout_masks_are_fixed_so_runs_compare_on_the_same_masks(corpus, wp, bpe):
    examples = make_examples(corpus.documents, wp, "mlm", 40)[:16]
    evaluate = mlm_eval_fn(wp, batch_size=8)
    first = model_for("bert", "mlm", wp)
    assert evaluate(first, examples)["mlm_loss"] == mlm_eval_fn(wp, batch_size=8)(first, examples)["mlm_loss"]
    one = fixed_batches(examples, PretrainingCollator(wp, "mlm", "static", seed=0), 8)
    two = fixed_batches(examples, PretrainingCollator(wp, "mlm", "static", seed=0), 8)
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(one, two))
    gpt2, blocks = model_for("gpt2", "clm", bpe), make_examples(corpus.documents, bpe, "clm", 40)[:8]
    state = torch.random.get_rng_state()
    clm = clm_eval_fn(bpe)(gpt2, blocks)
    assert clm["clm_loss"] > 0 and torch.equal(torch.random.get_rng_state(), state)  # training RNG untouched


def test_electra_loss_is_generator_mlm_plus_fifty_times_discriminator(corpus, wp):
    torch.manual_seed(0)
    model = PretrainingModel(build_pretraining_model(mini_config("electra", wp, **SIZE)), "electra").eval()
    batch = PretrainingCollator(wp, "mlm", mask_fraction=1.0, random_fraction=0.0)(
        [{**e, "idx": i} for i, e in enumerate(make_examples(corpus.documents, wp, "electra", 40)[:8])])
    with torch.no_grad():
        out = model(**batch)
    s = out.stats
    assert torch.allclose(out.loss, s["mlm_loss"] + 50 * s["rtd_loss"], atol=1e-5)
    masked_share = float((batch["labels"] != -100).sum() / batch["attention_mask"].sum())
    assert 0 < float(s["replaced_fraction"]) <= masked_share  # only masked positions can be replaced
    metrics = mlm_eval_fn(wp, batch_size=8)(model, make_examples(corpus.documents, wp, "electra", 40)[:16])
    assert {"mlm_loss", "rtd_loss", "rtd_accuracy", "replaced_fraction"} <= set(metrics)


def test_a_few_steps_fit_one_batch(corpus, wp):
    model = model_for("albert", "mlm+sop", wp).train()
    batch = batch_of(corpus, wp, "mlm+sop")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(15):
        loss, stats = pretraining_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0] and "pair_accuracy" in stats


def test_objective_must_fit_the_model(wp, bpe):
    bert = build_pretraining_model(mini_config("bert", wp, **SIZE))
    with pytest.raises(ConfigError, match="use one of mlm"):
        PretrainingModel(bert, "span")
    with pytest.raises(ConfigError, match="causal models"):
        PretrainingModel(bert, "clm")
    with pytest.raises(ConfigError, match="no sentence-pair head"):
        PretrainingModel(build_pretraining_model(mini_config("roberta", bpe, **SIZE)), "mlm+nsp")
    with pytest.raises(ConfigError, match="objective='electra'"):
        PretrainingModel(bert, "electra")
