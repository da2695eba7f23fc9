"""Encoders, aliases, offline failures and parameter counts (tlutils.models)."""

from __future__ import annotations

import pytest
import torch

from tlutils.errors import ModelNotAvailableError
from tlutils.models import (count_parameters, load_model, load_tokenizer, max_positions,
                            resolve_model_path, tiny_bert_config)


@pytest.fixture(scope="session")
def minilm():
    """The packaged, pretrained MiniLM-L6 with a 3-class head (seed 0); loaded once."""
    return load_model("minilm", 3, seed=0).eval()


@pytest.fixture(scope="session")
def minilm_scratch():
    """The same architecture with random weights (seed 0)."""
    return load_model("minilm", 3, pretrained=False, seed=0).eval()


def _encoder(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}


def test_tiny_bert_is_small_and_shallow():
    model = load_model("tiny-bert", 2)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 128
    assert len(model.bert.encoder.layer) == 2
    assert 4.3e6 < count_parameters(model) < 4.5e6
    assert model.config.num_labels == 2 and model.classifier.out_features == 2


def test_tiny_bert_uses_the_minilm_vocabulary(tokenizer):
    assert tiny_bert_config().vocab_size == tokenizer.vocab_size == 30522
    assert resolve_model_path("tiny-bert") == resolve_model_path("minilm")


def test_minilm_loads_offline_with_its_architecture(minilm, tokenizer):
    assert minilm.config.num_hidden_layers == 6 and minilm.config.hidden_size == 384
    assert 22.5e6 < count_parameters(minilm) < 23e6
    assert max_positions(minilm) == 512
    enc = tokenizer(["A man plays a guitar.", "Stocks fell."], ["Someone plays music.", "Shares rose sharply today."],
                    padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = minilm(**enc).logits
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()


def test_scratch_model_has_the_same_architecture_but_other_weights(minilm, minilm_scratch):
    pretrained, scratch = _encoder(minilm), _encoder(minilm_scratch)
    assert pretrained.keys() == scratch.keys()
    assert all(pretrained[k].shape == scratch[k].shape for k in pretrained)
    assert minilm.config.to_dict()["num_hidden_layers"] == minilm_scratch.config.num_hidden_layers
    for key in ("bert.embeddings.word_embeddings.weight",
                "bert.encoder.layer.0.attention.self.query.weight",
                "bert.encoder.layer.5.output.dense.weight"):
        assert not torch.allclose(pretrained[key], scratch[key]), key


def test_pretrained_weights_and_seeded_head_repeat(minilm):
    again = load_model("minilm", 3, seed=0)
    first, second = minilm.state_dict(), again.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)  # head included: same seed


@pytest.mark.parametrize("kwargs", [{}, {"pretrained": False}])
def test_same_seed_gives_the_same_random_init(kwargs):
    a = load_model("tiny-bert", 2, seed=7, **kwargs).state_dict()
    b = load_model("tiny-bert", 2, seed=7, **kwargs).state_dict()
    c = load_model("tiny-bert", 2, seed=8, **kwargs).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["bert.encoder.layer.0.attention.self.query.weight"],
                           c["bert.encoder.layer.0.attention.self.query.weight"])


def test_regression_head_has_one_output():
    model = load_model("tiny-bert", 1)
    assert model.classifier.out_features == 1 and model.config.num_labels == 1


def test_hub_model_offline_points_to_the_offline_default(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("bert-base-uncased", 2)
    message = str(info.value)
    assert "'minilm'" in message and "HF_HUB_OFFLINE=1" in message and "bert-base-uncased" in message
    assert isinstance(info.value, OSError)


def test_tokenizer_of_a_missing_path_is_not_available(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="minilm"):
        load_tokenizer(str(tmp_path / "no-such-model"))


def test_tokenizer_of_a_folder_without_one_names_the_folder(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="from folder"):
        load_tokenizer(str(tmp_path))


def test_model_of_a_folder_without_one_names_the_folder(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="from folder"):
        load_model(str(tmp_path), 2)


def test_count_parameters_after_freezing_the_encoder():
    model = load_model("tiny-bert", 2, seed=0)
    total = count_parameters(model)
    assert count_parameters(model, trainable_only=True) == total
    for param in model.bert.parameters():
        param.requires_grad = False
    head = 128 * 2 + 2  # classifier weight and bias
    assert count_parameters(model, trainable_only=True) == head
    assert count_parameters(model) == total
