"""Properties of tlutils.inspection: layer grouping, weight change, sentence embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from tlutils.inspection import (embed_sentences, group_sort_key, layer_groups, layer_of,
                                layer_weight_change, pair_similarity, plot_layer_change, snapshot)
from tlutils.models import load_model


@pytest.fixture
def tiny():
    return load_model("tiny-bert", 2, seed=0)


@pytest.mark.parametrize("name, group", [
    ("bert.embeddings.word_embeddings.weight", "embeddings"),
    ("embeddings.LayerNorm.bias", "embeddings"),
    ("bert.encoder.layer.0.attention.self.query.weight", "layer 0"),
    ("encoder.layer.11.output.dense.bias", "layer 11"),
    ("distilbert.transformer.layer.3.ffn.lin1.weight", "layer 3"),
    ("bert.pooler.dense.weight", "pooler"),
    ("classifier.weight", "head"),
    ("classifier.out_proj.bias", "head"),
])
def test_layer_of(name, group):
    assert layer_of(name) == group


def test_layer_groups_in_network_order(tiny):
    assert layer_groups(tiny) == ["embeddings", "layer 0", "layer 1", "pooler", "head"]
    assert sorted(["head", "layer 10", "pooler", "layer 2", "embeddings"], key=group_sort_key) == \
        ["embeddings", "layer 2", "layer 10", "pooler", "head"]


def test_weight_change_is_zero_for_identical_weights(tiny):
    before = snapshot(tiny)
    change = layer_weight_change(before, snapshot(tiny), tiny)
    assert list(change) == layer_groups(tiny) and all(v == 0.0 for v in change.values())


def test_weight_change_matches_the_formula_and_only_the_changed_group(tiny):
    before = snapshot(tiny)
    with torch.no_grad():
        tiny.bert.encoder.layer[1].output.dense.weight.mul_(1.5)  # one tensor of layer 1
    change = layer_weight_change(before, snapshot(tiny), tiny)
    layer1 = [n for n, _ in tiny.named_parameters() if layer_of(n) == "layer 1"]
    target = "bert.encoder.layer.1.output.dense.weight"
    expected = 0.5 * before[target].double().norm() / math.sqrt(sum(before[n].double().norm() ** 2 for n in layer1))
    assert change["layer 1"] == pytest.approx(float(expected), rel=1e-9)
    assert all(v == 0.0 for g, v in change.items() if g != "layer 1")


def test_weight_change_is_scale_invariant_and_skips_buffers(tiny):
    before = {**tiny.state_dict()}
    after = {k: v * 2 if torch.is_floating_point(v) else v for k, v in before.items()}
    # without the model, every floating entry is compared (buffers such as position_ids are ints)
    for change in (layer_weight_change(before, after, tiny), layer_weight_change(before, after)):
        assert all(v == pytest.approx(1.0) for v in change.values())


def test_weight_change_rejects_a_shape_change(tiny):
    before = snapshot(tiny)
    after = {**before, "classifier.weight": torch.zeros(3, 128)}
    with pytest.raises(ValueError, match="classifier.weight"):
        layer_weight_change(before, after, tiny)


def test_frozen_parameters_do_not_move_under_fit(tiny, tokenizer):
    """What the chapter relies on: `fit` leaves requires_grad=False parameters bit for bit."""
    from datasets import Dataset

    from tlutils.data import get_task
    from tlutils.train import TrainConfig, fit

    texts = [f"The company sold {i} shares on Monday." for i in range(16)]
    enc = tokenizer(texts, texts[::-1], truncation=True, max_length=32)
    data = Dataset.from_dict({**enc, "labels": [i % 2 for i in range(16)],
                              "length": [len(x) for x in enc["input_ids"]]})
    for name, p in tiny.named_parameters():
        p.requires_grad = layer_of(name) in ("layer 1", "pooler", "head")
    before = snapshot(tiny)
    fit(tiny, data, task=get_task("mrpc"), config=TrainConfig(epochs=1, batch_size=8,
        learning_rate=1e-2, mixed_precision="no", progress=False))
    change = layer_weight_change(before, snapshot(tiny), tiny)
    assert change["embeddings"] == 0.0 and change["layer 0"] == 0.0
    assert change["layer 1"] > 0 and change["head"] > 0


def test_embed_sentences_mean_pooling_ignores_padding(tiny, tokenizer):
    short, long = "A cat.", "A much longer sentence that forces padding in the batch for the short one."
    alone = embed_sentences(tiny, tokenizer, [short])
    batched = embed_sentences(tiny, tokenizer, [short, long])
    assert batched.shape == (2, 128) and alone.shape == (1, 128)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
    cls = embed_sentences(tiny, tokenizer, [short], pooling="cls")
    assert not torch.allclose(cls, alone)


def test_embed_sentences_restores_training_mode_and_batches_consistently(tiny, tokenizer):
    tiny.train()
    texts = [f"sentence number {i} is here" for i in range(5)]
    one = embed_sentences(tiny, tokenizer, texts, batch_size=2)
    assert tiny.training  # given back in the mode it was in
    torch.testing.assert_close(one, embed_sentences(tiny, tokenizer, texts, batch_size=5),
                               atol=1e-5, rtol=1e-5)  # no dropout noise: eval mode inside
    with pytest.raises(ValueError, match="pooling"):
        embed_sentences(tiny, tokenizer, texts, pooling="max")


def test_pair_similarity_of_identical_texts_is_one(tiny, tokenizer):
    texts = ["The stock rose.", "Shares fell sharply on Friday."]
    sims = pair_similarity(tiny, tokenizer, texts, texts)
    assert sims.shape == (2,)
    torch.testing.assert_close(sims, torch.ones(2), atol=1e-5, rtol=0)
    other = pair_similarity(tiny, tokenizer, texts, texts[::-1])
    assert (other < 1 - 1e-4).all() and (other >= -1).all()
    with pytest.raises(ValueError):
        pair_similarity(tiny, tokenizer, texts, texts[:1])


def test_plot_layer_change_draws_one_bar_per_group_and_run():
    import matplotlib

    matplotlib.use("Agg")
    runs = {"a": {"embeddings": 0.0, "layer 0": 0.1, "head": 0.3},
            "b": {"embeddings": 0.2, "layer 0": 0.0, "head": 0.1}}
    ax = plot_layer_change(runs)
    assert len(ax.patches) == 6
    assert [t.get_text() for t in ax.get_xticklabels()] == ["embeddings", "layer 0", "head"]
    single = plot_layer_change(runs["a"])
    assert [p.get_height() for p in single.patches] == [0.0, 0.1, 0.3]
