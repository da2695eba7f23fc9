"""Properties of continued masked-LM pretraining (tlutils.methods.dapt): the MLM model built from
an encoder without a head, the loss at the masked positions only (Part III's objective and
held-out evaluation work on it), and a run through fit whose adapted encoder goes back into a
classifier."""

from __future__ import annotations

import math

import pytest
import torch

from tlutils.errors import ConfigError
from tlutils.masking import IGNORE_INDEX
from tlutils.methods.dapt import (SelectedMaskedLM, continue_pretraining, count_tokens, load_adapted_encoder,
                                  masked_lm_from_encoder, mlm_head, param_groups)
from tlutils.models import load_model
from tlutils.pretraining.batches import PretrainingCollator
from tlutils.pretraining.objectives import mlm_eval_fn
from tlutils.train import TrainConfig


@pytest.fixture(scope="module")
def encoder_model():
    return load_model("tiny-bert", 2, seed=0)


def _rows(tokenizer, n: int = 12) -> list[dict]:
    texts = [f"the blender number {i} broke after a week and the lid leaks" for i in range(n)]
    enc = tokenizer(texts, truncation=True, max_length=24)
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "token_type_ids": enc["token_type_ids"][i]} for i in range(n)]


def test_mlm_model_keeps_the_encoder_ties_the_decoder_and_only_the_head_is_new(encoder_model):
    mlm, new = masked_lm_from_encoder(encoder_model, seed=0)
    old = encoder_model.base_model.state_dict()
    for name, tensor in mlm.base_model.state_dict().items():
        torch.testing.assert_close(tensor, old[name])  # every encoder weight carried over
    assert mlm.get_output_embeddings().weight is mlm.base_model.get_input_embeddings().weight  # tied
    assert new and all(not n.startswith(mlm.base_model_prefix + ".") for n in new)  # the head, nothing else
    assert any("transform" in n for n in new)  # BERT's transform layer is new (MiniLM ships none)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_mlm_head_maps_hidden_states_to_the_vocabulary_for_several_architectures(model_type):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(model_type, vocab_size=50, hidden_size=16, dim=16, hidden_dim=32,
                                  num_hidden_layers=1, n_layers=1, num_attention_heads=2, n_heads=2,
                                  intermediate_size=32, max_position_embeddings=40)
    torch.manual_seed(0)
    encoder = AutoModel.from_config(config)
    mlm, _ = masked_lm_from_encoder(encoder)
    h = torch.randn(7, 16)  # (M, H)
    assert mlm_head(mlm)(h).shape == (7, 50)  # (M, V)


def test_mlm_head_refuses_a_model_without_one(encoder_model):
    with pytest.raises(ConfigError, match="masked-LM head"):
        mlm_head(encoder_model.base_model)


def test_loss_at_masked_positions_equals_the_full_logits_loss(encoder_model, tokenizer):
    mlm, _ = masked_lm_from_encoder(encoder_model, seed=0)
    model = SelectedMaskedLM(mlm).eval()
    collator = PretrainingCollator(tokenizer, "mlm", masking="static", seed=1)
    batch = collator([dict(r, idx=i) for i, r in enumerate(_rows(tokenizer, 4))])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    out = model(**inputs, labels=batch["labels"])
    m = int((batch["labels"] != IGNORE_INDEX).sum())
    assert m > 0 and int(out.stats["mlm_tokens"]) == m
    full = mlm(**inputs).logits  # (B, T, V): what SelectedMaskedLM avoids
    reference = torch.nn.functional.cross_entropy(full.flatten(0, 1), batch["labels"].flatten())
    torch.testing.assert_close(out.loss, reference)
    none = model(**inputs, labels=torch.full_like(batch["labels"], IGNORE_INDEX))
    assert none.loss.item() == 0.0 and int(none.stats["mlm_tokens"]) == 0


def test_param_groups_put_the_tied_decoder_with_the_encoder(encoder_model):
    model = SelectedMaskedLM(masked_lm_from_encoder(encoder_model, seed=0)[0])
    groups = param_groups(model, 1e-5, 1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters()})
    embedding = model.encoder.get_input_embeddings().weight
    group = next(g for g in groups if any(p is embedding for p in g["params"]))
    assert group["lr"] == 1e-5 and group["weight_decay"] == 0.01
    assert {g["lr"] for g in groups} == {1e-5, 1e-3}


def test_part_three_held_out_evaluation_scores_the_wrapper_on_the_same_masks(encoder_model, tokenizer):
    model = SelectedMaskedLM(masked_lm_from_encoder(encoder_model, seed=0)[0]).eval()
    eval_fn = mlm_eval_fn(tokenizer, batch_size=4, mask_seed=3)
    rows = _rows(tokenizer, 10)
    first, second = eval_fn(model, rows), eval_fn(model, rows)
    assert first["mlm_loss"] == second["mlm_loss"]
    assert math.isclose(first["mlm_perplexity"], math.exp(first["mlm_loss"]))
    assert first["mlm_loss"] > math.log(tokenizer.vocab_size) - 2  # a fresh head: close to uniform


def test_continued_pretraining_lowers_the_held_out_loss_and_loads_back(encoder_model, tokenizer):
    rows = _rows(tokenizer, 24)
    config = TrainConfig(epochs=3, batch_size=8, eval_batch_size=8, learning_rate=1e-3, warmup_fraction=0.0,
                         progress=False, mixed_precision="no")
    run = continue_pretraining(encoder_model, tokenizer, rows, rows[:8], config=config, encoder_learning_rate=1e-3,
                               head_learning_rate=1e-2, seed=0)
    assert run.after["mlm_loss"] < run.before["mlm_loss"]
    assert run.tokens_seen == 3 * count_tokens(rows) and run.sequences_seen == 72
    assert len(run.history.epochs) == 3 and "eval_mlm_loss" in run.history.epochs[0]
    # the original model is untouched; the adapted encoder loads into a fresh classifier
    fresh = load_model("tiny-bert", 2, seed=0)
    torch.testing.assert_close(fresh.base_model.embeddings.word_embeddings.weight,
                               encoder_model.base_model.embeddings.word_embeddings.weight)
    load_adapted_encoder(fresh, run.model)
    adapted = run.model.encoder.state_dict()
    for name, tensor in fresh.base_model.state_dict().items():
        if name in adapted:
            torch.testing.assert_close(tensor, adapted[name])
    assert not torch.equal(fresh.base_model.encoder.layer[0].attention.self.query.weight,
                           encoder_model.base_model.encoder.layer[0].attention.self.query.weight)
