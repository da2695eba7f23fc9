"""Miniature configurations: ALBERT's switches against the formula, ELECTRA's pair, positions."""

from __future__ import annotations

import pytest
import torch

from tlutils.errors import ConfigError
from tlutils.models import count_parameters
from tlutils.pretraining import (FAMILIES, albert_parameter_count, build_pretraining_model, check_max_length,
                                 mini_config, usable_positions)

V = 500


@pytest.mark.parametrize("E, shared", [(None, False), (16, False), (16, True), (None, True)])
def test_albert_parameter_formula_matches_the_built_encoder(E, shared):
    from transformers import AlbertModel

    config = mini_config("albert", V, hidden=64, layers=3, heads=4, intermediate=128, embedding_size=E,
                         share_layers=shared)
    model = AlbertModel(config, add_pooling_layer=False)
    assert count_parameters(model) == albert_parameter_count(V, E or 64, 64, 3, shared, intermediate=128)


def test_albert_switches_shrink_the_model_as_the_paper_says():
    pooler = 768 * 768 + 768
    full, factorised, shared, shared_768 = (albert_parameter_count(30000, E, 768, 12, s, max_positions=512) + pooler
                                            for E, s in ((768, False), (128, False), (128, True), (768, True)))
    assert full > factorised > shared_768 > shared
    # Lan et al. (2020), tables 1 and 4: ALBERT-base 12M parameters (E=128, shared), 31M (E=768,
    # shared), 89M (E=128, not shared), 108M (E=768 not shared, BERT-base's shape; transformers
    # keeps a 0.6M E->H projection there that the paper's model lacks)
    for count, paper in ((shared, 12), (shared_768, 31), (factorised, 89), (full, 108)):
        assert abs(count / 1e6 - paper) < 1.7


def test_every_family_builds_and_runs_at_one_size():
    sizes = {}
    for family in FAMILIES:
        config = mini_config(family, V, hidden=32, layers=2, heads=2, intermediate=64)
        model = build_pretraining_model(config).eval()
        sizes[family] = count_parameters(model.discriminator if family == "electra" else model)
        ids = torch.randint(5, V, (2, 9))
        core = model.discriminator if family == "electra" else model
        with torch.no_grad():
            out = core(input_ids=ids, attention_mask=torch.ones_like(ids))
        logits = out.prediction_logits if family in ("bert", "albert") else out.logits
        assert logits.shape[:2] == (2, 9)
    assert max(sizes.values()) / min(sizes.values()) < 1.15  # about one size: recipes are compared, not sizes


def test_electra_generator_is_a_quarter_and_shares_embeddings():
    pair = build_pretraining_model(mini_config("electra", V, hidden=64, heads=4, intermediate=256))
    gen, disc = pair.generator, pair.discriminator
    assert (gen.config.hidden_size, gen.config.num_attention_heads, gen.config.intermediate_size) == (16, 1, 64)
    assert gen.electra.embeddings is disc.electra.embeddings
    assert gen.generator_lm_head.weight is disc.electra.embeddings.word_embeddings.weight
    assert pair.config is disc.config


def test_positions_and_bad_settings_are_one_line_errors():
    roberta = mini_config("roberta", V)
    assert usable_positions(roberta) == 128 and usable_positions(mini_config("bert", V)) == 130
    check_max_length(roberta, 128)
    with pytest.raises(ConfigError, match=r"max_length=200 exceeds the 128 positions.*max_positions=202"):
        check_max_length(roberta, 200)
    with pytest.raises(ConfigError, match="family='albert'"):
        mini_config("bert", V, embedding_size=32)
    with pytest.raises(ConfigError, match="family='albert'"):
        mini_config("roberta", V, share_layers=True)
    with pytest.raises(ConfigError, match="use one of bert"):
        mini_config("xlnet", V)
    with pytest.raises(ConfigError, match="divisible"):
        mini_config("bert", V, hidden=30, heads=4)


def test_special_ids_come_from_the_tokenizer():
    from pretraining_helpers import tiny_tokenizer

    bpe = tiny_tokenizer("bpe")
    config = mini_config("roberta", bpe)
    assert (config.vocab_size, config.pad_token_id, config.bos_token_id, config.eos_token_id) == (280, 1, 0, 2)
    assert mini_config("gpt2", bpe).pad_token_id == 1
