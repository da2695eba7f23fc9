"""tlutils on five encoder families: BERT, DistilBERT, RoBERTa, ALBERT and ELECTRA.

Each test builds a tiny *random* model from its configuration and a tokenizer trained here on a
few sentences with the architecture's own special tokens (no network), then checks a property
against the model's module structure (``model.base_model.encoder.layer[i]``, ...), not against
the parameter-name patterns of :mod:`tlutils.core` that it is testing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Optional

import pytest
import torch

from tlutils.core import lora_targets
from tlutils.errors import ConfigError
from tlutils.inspection import embed_sentences, first_token_id, layer_groups, layer_of, pair_similarity
from tlutils.methods.finetune import (GradualUnfreezing, freeze_all_but, layerwise_lr_groups, lora_model,
                                      train_head_only, train_top_k, unfreezing_order)
from tlutils.models import count_parameters

HIDDEN, LAYERS = 64, 2
CORPUS = [f"The {adj} company sold {n} shares of its {noun} business on {day}."
          for adj in ("small", "large", "old", "new") for n in ("two", "ten", "many")
          for noun in ("bank", "steel", "software") for day in ("Monday", "Friday")]
TEXTS = ["A cat.", "Shares fell sharply on Friday after the news.", "The bank sold steel."]


# --------------------------------------------------------------------------- tiny tokenizers


def wordpiece(pad: str, unk: str, cls: str, sep: str, mask: str, input_names: list[str]):
    """A WordPiece tokenizer trained on CORPUS that frames texts as ``cls a sep (b sep)``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=[pad, unk, cls, sep, mask],
                                                                show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, unk_token=unk, cls_token=cls,
                                   sep_token=sep, mask_token=mask, model_input_names=input_names)


def byte_level_bpe():
    """RoBERTa's kind of tokenizer: byte-level BPE, ``<s> a </s></s> b </s>``, no token_type_ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in roberta-base
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)  # sep, cls
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                   model_input_names=["input_ids", "attention_mask"])


BERT_INPUTS = ["input_ids", "token_type_ids", "attention_mask"]
TOKENIZERS: dict[str, Callable] = {
    "bert": lambda: wordpiece("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", BERT_INPUTS),
    "electra": lambda: wordpiece("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", BERT_INPUTS),
    "distilbert": lambda: wordpiece("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ["input_ids", "attention_mask"]),
    "albert": lambda: wordpiece("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]", BERT_INPUTS),
    "roberta": byte_level_bpe,
}


# --------------------------------------------------------------------------- tiny models


@dataclass(frozen=True)
class Arch:
    """A model family and where its parts are, as modules (what the tests compare against)."""

    blocks: Callable[[torch.nn.Module], Optional[torch.nn.ModuleList]]  # base model -> per-layer blocks
    embedding_side: Callable[[torch.nn.Module], list[torch.nn.Module]]
    groups: tuple[str, ...]  # what layer_groups must return
    shared: Optional[Callable[[torch.nn.Module], torch.nn.Module]] = None  # ALBERT's one block


def _sizes(**extra) -> dict:
    return dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                intermediate_size=4 * HIDDEN, max_position_embeddings=66, num_labels=2, **extra)


def _configs():
    from transformers import AlbertConfig, BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig

    return {
        "bert": lambda v: BertConfig(vocab_size=v, **_sizes()),
        "distilbert": lambda v: DistilBertConfig(vocab_size=v, dim=HIDDEN, n_layers=LAYERS, n_heads=2,
                                                 hidden_dim=4 * HIDDEN, max_position_embeddings=66, num_labels=2),
        "roberta": lambda v: RobertaConfig(vocab_size=v, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                           type_vocab_size=1, **_sizes()),
        "albert": lambda v: AlbertConfig(vocab_size=v, embedding_size=16, pad_token_id=0, **_sizes()),
        "electra": lambda v: ElectraConfig(vocab_size=v, embedding_size=16, **_sizes()),
    }


LAYER_NAMES = tuple(f"layer {i}" for i in range(LAYERS))
ARCHS = {
    "bert": Arch(lambda b: b.encoder.layer, lambda b: [b.embeddings],
                 ("embeddings", *LAYER_NAMES, "pooler", "head")),
    "distilbert": Arch(lambda b: b.transformer.layer, lambda b: [b.embeddings],
                       ("embeddings", *LAYER_NAMES, "head")),
    "roberta": Arch(lambda b: b.encoder.layer, lambda b: [b.embeddings],
                    ("embeddings", *LAYER_NAMES, "head")),
    "albert": Arch(lambda b: None, lambda b: [b.embeddings, b.encoder.embedding_hidden_mapping_in],
                   ("embeddings", "shared layers", "pooler", "head"), shared=lambda b: b.encoder.albert_layer_groups),
    "electra": Arch(lambda b: b.encoder.layer, lambda b: [b.embeddings, b.embeddings_project],
                    ("embeddings", *LAYER_NAMES, "head")),
}
PER_LAYER = [a for a in ARCHS if ARCHS[a].shared is None]


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    return {name: make() for name, make in TOKENIZERS.items()}


def build(name: str, tokenizers: dict) -> tuple[torch.nn.Module, object]:
    """A fresh random classifier of architecture ``name`` and its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = tokenizers[name]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(_configs()[name](len(tokenizer)))
    assert model.config.model_type == name
    return model, tokenizer


def expected_groups(model: torch.nn.Module, arch: Arch) -> dict[int, str]:
    """id(parameter) -> group, read off the module tree: the reference layer_of must match."""
    base = model.base_model
    groups = {id(p): "head" for p in model.parameters()}  # everything outside the encoder
    for p in base.parameters():
        groups[id(p)] = "?"  # every encoder parameter must be claimed below
    if getattr(base, "pooler", None) is not None:
        groups.update({id(p): "pooler" for p in base.pooler.parameters()})
    for module in arch.embedding_side(base):
        groups.update({id(p): "embeddings" for p in module.parameters()})
    blocks = arch.blocks(base)
    for i, block in enumerate(blocks if blocks is not None else []):
        groups.update({id(p): f"layer {i}" for p in block.parameters()})
    if arch.shared is not None:
        groups.update({id(p): "shared layers" for p in arch.shared(base).parameters()})
    assert "?" not in groups.values(), "the reference misses part of the encoder"
    return groups


def head_ids(model: torch.nn.Module) -> set[int]:
    encoder = {id(p) for p in model.base_model.parameters()}
    return {id(p) for p in model.parameters() if id(p) not in encoder}


def trainable_ids(model: torch.nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


# --------------------------------------------------------------------------- layer groups


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_parameter_lands_in_the_group_of_its_module(name, tokenizers):
    model, _ = build(name, tokenizers)
    arch, reference = ARCHS[name], expected_groups(model, ARCHS[name])
    for pname, param in model.named_parameters():
        assert layer_of(pname, name) == reference[id(param)], pname
        assert layer_of(pname) == reference[id(param)], pname  # the name alone (existing callers)
    assert layer_groups(model) == list(arch.groups)
    sizes = {g: sum(p.numel() for p in model.parameters() if reference[id(p)] == g) for g in arch.groups}
    assert all(n > 0 for n in sizes.values()) and sum(sizes.values()) == count_parameters(model)


@pytest.mark.parametrize("name", list(ARCHS))
def test_head_only_leaves_exactly_the_head_trainable(name, tokenizers):
    model, _ = build(name, tokenizers)
    head = head_ids(model)
    n = train_head_only(model)
    assert trainable_ids(model) == head
    assert n == sum(p.numel() for p in model.parameters() if id(p) in head) == count_parameters(model, True)
    assert freeze_all_but(model, ["head"]) == n and trainable_ids(model) == head
    pooler = getattr(model.base_model, "pooler", None)
    with_pooler = head | ({id(p) for p in pooler.parameters()} if pooler is not None else set())
    train_head_only(model, include_pooler=True)
    assert trainable_ids(model) == with_pooler


@pytest.mark.parametrize("name", PER_LAYER)
def test_top_k_trains_the_last_block_and_the_head(name, tokenizers):
    model, _ = build(name, tokenizers)
    last = ARCHS[name].blocks(model.base_model)[-1]
    train_top_k(model, 1, include_pooler=False)
    assert trainable_ids(model) == head_ids(model) | {id(p) for p in last.parameters()}
    assert unfreezing_order(model)[1:] == [[f"layer {i}"] for i in reversed(range(LAYERS))] + [["embeddings"]]


@pytest.mark.parametrize("name", PER_LAYER)
def test_layerwise_rates_cover_every_parameter_once_at_its_depth(name, tokenizers):
    model, _ = build(name, tokenizers)
    lr, decay = 1e-3, 0.5
    reference = expected_groups(model, ARCHS[name])
    depth = {"head": 0, "pooler": 0, "embeddings": LAYERS + 1, **{f"layer {i}": LAYERS - i for i in range(LAYERS)}}
    groups = layerwise_lr_groups(model, lr, decay, weight_decay=0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    for group in groups:
        for param in group["params"]:
            assert math.isclose(group["lr"], lr * decay ** depth[reference[id(param)]])
            assert group["weight_decay"] == (0.01 if param.ndim >= 2 else 0.0)
    assert {g["lr"] for g in groups} == {lr * decay ** d for d in range(LAYERS + 2)}


def test_shared_layers_refuse_per_layer_operations_with_one_line(tokenizers):
    model, _ = build("albert", tokenizers)
    calls = [lambda: layerwise_lr_groups(model, 1e-3, 0.9, 0.01), lambda: train_top_k(model, 1),
             lambda: GradualUnfreezing(model, every=1), lambda: unfreezing_order(model)]
    for call in calls:
        with pytest.raises(ConfigError, match="shares one set across all its layers.*lora_model") as err:
            call()
        assert "\n" not in str(err.value)
    # what stays well defined: one rate for all, whole groups, an explicit unfreezing order
    plain = layerwise_lr_groups(model, 1e-3, 1.0, 0.01)
    assert {g["lr"] for g in plain} == {1e-3}
    assert sorted(id(p) for g in plain for p in g["params"]) == sorted(id(p) for p in model.parameters())
    shared = {id(p) for p in model.base_model.encoder.albert_layer_groups.parameters()}
    freeze_all_but(model, ["shared layers", "head"])
    assert trainable_ids(model) == shared | head_ids(model)
    unfreezer = GradualUnfreezing(model, every=1, order=[["pooler", "head"], ["shared layers"], ["embeddings"]])
    unfreezer({"global_step": 1})
    assert shared <= trainable_ids(model) and not any(p.requires_grad for p in model.base_model.embeddings.parameters())


# --------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("name", list(ARCHS))
def test_lora_default_targets_adapt_every_block_and_start_as_the_model(name, tokenizers):
    model, tokenizer = build(name, tokenizers)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        reference = model(**batch).logits
    head_size = sum(p.numel() for p in model.parameters() if id(p) in head_ids(model))
    blocks = 1 if ARCHS[name].shared is not None else LAYERS
    embeddings = embed_sentences(model, tokenizer, TEXTS)

    wrapped = lora_model(model, dropout=0.0)  # default targets, r=8
    adapted = [n for n, m in wrapped.named_modules() if hasattr(m, "lora_A")]
    assert len(adapted) == 2 * blocks  # query and value (DistilBERT: q_lin, v_lin) of each block
    assert {n.rsplit(".", 1)[-1] for n in adapted} == set(lora_targets(model))
    lora = {n: p for n, p in wrapped.named_parameters() if "lora_" in n}
    trainable = count_parameters(wrapped, trainable_only=True)
    assert trainable == sum(p.numel() for p in lora.values()) + head_size  # adapters + the whole head
    assert 0 < trainable < 0.1 * count_parameters(wrapped)
    wrapped.eval()
    with torch.no_grad():
        torch.testing.assert_close(wrapped(**batch).logits, reference)  # B = 0 at the start
    torch.testing.assert_close(embed_sentences(wrapped, tokenizer, TEXTS), embeddings)  # the encoder under peft

    wrapped.train()
    wrapped(**batch, labels=torch.tensor([0, 1, 0])).loss.backward()
    assert all(p.grad is None for p in wrapped.parameters() if not p.requires_grad)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    saved = [p for n, p in wrapped.named_parameters() if "modules_to_save" in n]
    assert saved and all(p.grad is not None for p in saved)


def test_lora_without_default_targets_names_the_fix():
    model = torch.nn.Linear(4, 2)
    model.config = SimpleNamespace(model_type="mystery")
    with pytest.raises(ConfigError, match="model_type='mystery'.*target_modules=") as err:
        lora_model(model)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- sentence embeddings


@pytest.mark.parametrize("name", list(ARCHS))
def test_embed_sentences_with_the_architectures_own_tokenizer(name, tokenizers):
    model, tokenizer = build(name, tokenizers)
    ids = tokenizer(TEXTS[0])["input_ids"]
    assert ids[0] == first_token_id(tokenizer) and ids[-1] in (tokenizer.sep_token_id, tokenizer.eos_token_id)
    emb = embed_sentences(model, tokenizer, TEXTS)
    assert emb.shape == (len(TEXTS), HIDDEN) and emb.dtype == torch.float32
    alone = embed_sentences(model, tokenizer, TEXTS[:1])
    torch.testing.assert_close(emb[0], alone[0], atol=1e-5, rtol=1e-5)  # padding does not leak in
    cls = embed_sentences(model, tokenizer, TEXTS, pooling="cls")
    with torch.no_grad():
        model.eval()
        states = model.base_model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(cls, states[:, 0])
    sims = pair_similarity(model, tokenizer, TEXTS, TEXTS)
    torch.testing.assert_close(sims, torch.ones(len(TEXTS)), atol=1e-5, rtol=0)


def test_cls_pooling_refuses_a_tokenizer_that_pads_on_the_left(tokenizers):
    model, tokenizer = build("roberta", tokenizers)
    tokenizer.padding_side = "left"
    try:
        with pytest.raises(ConfigError, match="'<s>'.*pooling='mean'"):
            embed_sentences(model, tokenizer, TEXTS, pooling="cls")
        assert embed_sentences(model, tokenizer, TEXTS).shape == (len(TEXTS), HIDDEN)  # mean is fine
    finally:
        tokenizer.padding_side = "right"
