"""Properties of the fine-tuning strategies: freezing, gradual unfreezing, layer-wise rates, LoRA."""

from __future__ import annotations

import math

import pytest
import torch

from tlutils.errors import ConfigError
from tlutils.inspection import layer_of
from tlutils.methods.finetune import (GradualUnfreezing, freeze_all_but, groups_unfrozen_at, layer_depths,
                                      layerwise_lr_groups, lora_model, train_head_only, train_top_k,
                                      unfreezing_order)
from tlutils.models import count_parameters, load_model
from tlutils.train import TrainConfig, fit, weight_decay_groups


@pytest.fixture
def tiny():
    return load_model("tiny-bert", 2, seed=0)


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def group_size(model: torch.nn.Module, *groups: str) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if layer_of(n) in groups)


@pytest.fixture(scope="module")
def train_split(tokenizer):
    """32 tokenized MRPC-like pairs (no data folder needed)."""
    from datasets import Dataset

    rows = [{"text_a": f"The company said {i} shares were sold.", "text_b": f"{i} shares were sold, it said.",
             "labels": i % 2} for i in range(32)]
    ds = Dataset.from_list(rows)
    return ds.map(lambda b: {**tokenizer(b["text_a"], b["text_b"]), "length": [0] * len(b["text_a"])},
                  batched=True).map(lambda r: {"length": len(r["input_ids"])})


def quick_config(**overrides) -> TrainConfig:
    base = dict(epochs=1, batch_size=4, learning_rate=1e-2, warmup_fraction=0.0, mixed_precision="no",
                select_best=False, progress=False, seed=0)
    return TrainConfig(**{**base, **overrides})


# --------------------------------------------------------------------------- freezing


def test_head_only_trains_exactly_the_classifier(tiny):
    n = train_head_only(tiny)
    assert trainable_names(tiny) == {"classifier.weight", "classifier.bias"}
    assert n == count_parameters(tiny, trainable_only=True) == 128 * 2 + 2
    assert train_head_only(tiny, include_pooler=True) == 258 + 128 * 128 + 128
    assert {layer_of(n) for n in trainable_names(tiny)} == {"pooler", "head"}


@pytest.mark.parametrize("k", [0, 1, 2])
def test_top_k_trains_the_top_layers_and_everything_above(tiny, k):
    n = train_top_k(tiny, k)
    expected_groups = {"pooler", "head"} | {f"layer {i}" for i in range(2 - k, 2)}
    assert {layer_of(name) for name in trainable_names(tiny)} == expected_groups
    assert n == group_size(tiny, *expected_groups) == count_parameters(tiny, trainable_only=True)
    frozen = {name for name, _ in tiny.named_parameters()} - trainable_names(tiny)
    assert all(layer_of(name) not in expected_groups for name in frozen)


def test_trainable_counts_are_strictly_ordered(tiny):
    counts = [train_head_only(tiny), train_top_k(tiny, 1), train_top_k(tiny, 2),
              freeze_all_but(tiny, unfreezing_order(tiny)[0] + ["layer 0", "layer 1", "embeddings"])]
    assert counts == sorted(set(counts)) and counts[-1] == count_parameters(tiny)


def test_freezing_rejects_unknown_groups_and_k(tiny):
    with pytest.raises(ConfigError, match="layer 7.*choose from"):
        freeze_all_but(tiny, ["layer 7"])
    with pytest.raises(ConfigError, match="k=3"):
        train_top_k(tiny, 3)
    with pytest.raises(ConfigError, match="k=-1"):
        train_top_k(tiny, -1)


# --------------------------------------------------------------------------- gradual unfreezing


def test_unfreezing_schedule():
    assert [groups_unfrozen_at(s, 4, every=3) for s in range(12)] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert groups_unfrozen_at(100, 4, every=3) == 4
    assert [groups_unfrozen_at(s, 3, every=1, start=2) for s in range(3)] == [2, 3, 3]
    for bad in [dict(step=-1, num_blocks=4, every=1), dict(step=0, num_blocks=4, every=0),
                dict(step=0, num_blocks=4, every=1, start=5)]:
        with pytest.raises(ConfigError):
            groups_unfrozen_at(**bad)


def test_gradual_unfreezing_step_by_step(tiny):
    assert unfreezing_order(tiny) == [["pooler", "head"], ["layer 1"], ["layer 0"], ["embeddings"]]
    unfreezer = GradualUnfreezing(tiny, every=2)  # freezes to step 0 on construction
    expected = [{"pooler", "head"}, {"pooler", "head"}, {"pooler", "head", "layer 1"},
                {"pooler", "head", "layer 1"}, {"pooler", "head", "layer 1", "layer 0"},
                {"pooler", "head", "layer 1", "layer 0"}, {"pooler", "head", "layer 1", "layer 0", "embeddings"}]
    for step, groups in enumerate(expected):
        unfreezer({"global_step": step, "epoch": 0, "batch": step, "loss": 0.0})
        assert {layer_of(n) for n in trainable_names(tiny)} == groups, step
    assert count_parameters(tiny, trainable_only=True) == count_parameters(tiny)
    unfreezer({"global_step": 0})  # a function of the step alone: going back refreezes
    assert {layer_of(n) for n in trainable_names(tiny)} == {"pooler", "head"}


def test_gradual_unfreezing_in_a_real_fit_leaves_embeddings_untouched_until_their_turn(tiny, train_split):
    every = 2  # 4 blocks: embeddings join after step 6; 8 steps in all
    unfreezer = GradualUnfreezing(tiny, every=every)
    embeddings = tiny.bert.embeddings.word_embeddings.weight
    layer0 = tiny.bert.encoder.layer[0].attention.self.query.weight
    start_emb, start_l0 = embeddings.detach().clone(), layer0.detach().clone()
    seen = []

    def record(state):  # runs after the unfreezer (callbacks run in order)
        seen.append((state["global_step"], torch.equal(embeddings, start_emb), torch.equal(layer0, start_l0)))

    groups = unfreezer.param_groups(1e-2, weight_decay=0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(tiny.parameters()))  # frozen ones included
    fit(tiny, train_split, task="mrpc", config=quick_config(epochs=1, batch_size=4, weight_decay=0.1),
        param_groups=groups, callbacks=[unfreezer, record])
    assert [s for s, _, _ in seen] == list(range(1, 9))
    for step, emb_same, l0_same in seen:
        # a block unfrozen after step s first moves at step s + 1
        assert emb_same == (step <= 3 * every), step
        assert l0_same == (step <= 2 * every), step
    assert not torch.equal(embeddings, start_emb)


def test_gradual_unfreezing_resumes_with_the_layers_of_its_step(train_split, tmp_path):
    """A run stopped after step 4 (every=2: three blocks trainable) resumes training three
    blocks at its first step, not the head alone that a fresh unfreezer starts with."""
    class Crash(Exception):
        pass

    def crash_at_4(state):
        if state["global_step"] == 4:
            raise Crash

    config = quick_config(epochs=1, batch_size=4, checkpoint_dir=str(tmp_path), checkpoint_every=4)
    model = load_model("tiny-bert", 2, seed=0)
    unfreezer = GradualUnfreezing(model, every=2)
    with pytest.raises(Crash):
        fit(model, train_split, task="mrpc", config=config, param_groups=unfreezer.param_groups(1e-2, 0.0),
            callbacks=[unfreezer, crash_at_4])
    trained = []

    def spy(model_, batch):
        trained.append({layer_of(n) for n, p in model_.named_parameters() if p.requires_grad})
        return model_(**batch).loss, {}

    model = load_model("tiny-bert", 2, seed=0)
    unfreezer = GradualUnfreezing(model, every=2)  # step 0: head and pooler only
    fit(model, train_split, task="mrpc", config=config.__class__(**{**config.__dict__, "resume": True}),
        param_groups=unfreezer.param_groups(1e-2, 0.0), callbacks=[unfreezer], loss_fn=spy)
    assert trained[0] == set(unfreezer.trainable_groups(4)) and len(trained) == 8 - 4
    assert trained[0] != set(unfreezer.trainable_groups(0))


def test_adamw_leaves_frozen_parameters_alone_even_with_weight_decay(tiny):
    groups = layerwise_lr_groups(tiny, 1e-1, 1.0, weight_decay=0.5, include_frozen=True)
    train_head_only(tiny)
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    optimizer = torch.optim.AdamW(groups, fused=True)  # as in fit
    batch = {"input_ids": torch.tensor([[101, 2023, 102]]), "labels": torch.tensor([1])}
    for _ in range(2):
        tiny(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in tiny.named_parameters():
        moved = not torch.equal(param, before[name])
        assert moved == (layer_of(name) == "head"), name
    # the control: without freezing, weight decay alone moves a parameter that gets no gradient signal
    plain = torch.nn.Parameter(torch.ones(3, 3))
    opt = torch.optim.AdamW([{"params": [plain], "lr": 0.1, "weight_decay": 0.5}])
    plain.grad = torch.zeros(3, 3)
    opt.step()
    assert not torch.equal(plain.detach(), torch.ones(3, 3))


# --------------------------------------------------------------------------- layer-wise rates


def test_layerwise_rates_are_absolute_and_decay_per_layer(tiny):
    lr, decay = 1e-3, 0.5
    groups = layerwise_lr_groups(tiny, lr, decay, weight_decay=0.01)
    assert layer_depths(tiny) == {"embeddings": 3, "layer 0": 2, "layer 1": 1, "pooler": 0, "head": 0}
    names = {id(p): n for n, p in tiny.named_parameters()}
    for group in groups:
        for param in group["params"]:
            layer = layer_of(names[id(param)])
            assert math.isclose(group["lr"], lr * decay ** layer_depths(tiny)[layer])
            assert group["weight_decay"] == (0.01 if param.ndim >= 2 else 0.0)
    rates = {g["name"].split("/")[0]: g["lr"] for g in groups}
    assert rates == {"embeddings": 1.25e-4, "layer 0": 2.5e-4, "layer 1": 5e-4, "pooler": 1e-3, "head": 1e-3}


def test_layerwise_groups_partition_the_trainable_parameters(tiny):
    train_top_k(tiny, 1)
    groups = layerwise_lr_groups(tiny, 1e-3, 0.9, 0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # each at most once
    assert set(ids) == {id(p) for p in tiny.parameters() if p.requires_grad}  # each trainable one
    every = layerwise_lr_groups(tiny, 1e-3, 0.9, 0.01, include_frozen=True)
    assert sorted(id(p) for g in every for p in g["params"]) == sorted(id(p) for p in tiny.parameters())


def test_decay_one_is_plain_weight_decay_grouping(tiny):
    groups = layerwise_lr_groups(tiny, 2e-5, 1.0, 0.01)
    plain = weight_decay_groups(tiny, 2e-5, 0.01)
    for wd in (0.01, 0.0):
        mine = {id(p) for g in groups if g["weight_decay"] == wd for p in g["params"]}
        theirs = {id(p) for g in plain if g["weight_decay"] == wd for p in g["params"]}
        assert mine == theirs
    assert {g["lr"] for g in groups} == {2e-5}


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_layerwise_rejects_bad_decay(tiny, decay):
    with pytest.raises(ConfigError, match="decay"):
        layerwise_lr_groups(tiny, 1e-3, decay, 0.01)


# --------------------------------------------------------------------------- LoRA


def test_lora_trains_only_adapters_and_classifier(tiny):
    hidden, r, layers = 128, 4, 2
    model = lora_model(tiny, r=r, alpha=8, dropout=0.0)
    names = trainable_names(model)
    assert names and all("lora_" in n or "classifier.modules_to_save" in n for n in names)
    adapters = layers * 2 * (r * hidden + hidden * r)  # query and value: A (r, H) and B (H, r)
    assert count_parameters(model, trainable_only=True) == adapters + hidden * 2 + 2
    assert model.config.pad_token_id == 0  # what fit reads


def test_lora_starts_as_the_base_model_and_keeps_base_weights_fixed(tiny, train_split):
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 102]]),
             "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    tiny.eval()
    with torch.no_grad():
        reference = tiny(**batch).logits.clone()
    model = lora_model(tiny, r=4, dropout=0.0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference)  # B = 0 at the start
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fit(model, train_split, task="mrpc", config=quick_config(learning_rate=1e-2, max_steps=2))
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    assert any(not torch.equal(p, lora[n]) for n, p in model.named_parameters() if n in lora)
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, reference)


def test_lora_rejects_bad_rank(tiny):
    with pytest.raises(ConfigError, match="r=0"):
        lora_model(tiny, r=0)
