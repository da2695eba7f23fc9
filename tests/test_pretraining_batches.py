"""Pretraining batches: packing, NSP/SOP pairs, static/dynamic masking, CLM labels, RTD targets."""

from __future__ import annotations

import pytest
import torch
from pretraining_helpers import tiny_corpus, tiny_tokenizer

from tlutils.errors import ConfigError
from tlutils.masking import IGNORE_INDEX
from tlutils.pretraining import (Document, EpochBatchSampler, Layout, PretrainingCollator, duplicate, encode_pairs,
                                 make_examples, make_pairs, pack_segments, pack_stream, replace_tokens,
                                 tokenize_documents)


@pytest.fixture(scope="module")
def corpus():
    return tiny_corpus(200)


@pytest.fixture(scope="module")
def tok(corpus):
    return tiny_tokenizer("wordpiece", corpus)


@pytest.fixture(scope="module")
def token_docs(corpus, tok):
    return tokenize_documents(corpus.documents, tok)


def indexed(examples):
    return [{**e, "idx": i} for i, e in enumerate(examples)]


def test_pack_segments_keeps_every_token_in_order_within_max_length(token_docs, tok):
    layout = Layout.of(tok)
    for cross in (True, False):
        segments = pack_segments(token_docs, 24, layout, cross_documents=cross)
        assert all(len(s["input_ids"]) <= 24 for s in segments)
        assert all(s["input_ids"][0] == tok.cls_token_id and s["input_ids"][-1] == tok.sep_token_id for s in segments)
        inner = [t for s in segments for t in s["input_ids"][1:-1] if t != tok.sep_token_id]
        assert inner == [t for d in token_docs for s in d for t in s]  # nothing lost, nothing reordered
    per_document = pack_segments(token_docs, 24, layout, cross_documents=False)
    assert all(tok.sep_token_id not in s["input_ids"][1:-1] for s in per_document)
    assert len(pack_segments(token_docs, 24, layout)) < len(per_document)  # crossing packs tighter


def test_pack_stream_cuts_the_stream_into_blocks(token_docs):
    blocks = pack_stream(token_docs, 16, separator=3)
    assert all(len(b["input_ids"]) == 16 for b in blocks[:-1]) and len(blocks[-1]["input_ids"]) <= 16
    stream = [t for b in blocks for t in b["input_ids"]]
    assert stream.count(3) == len(token_docs)


@pytest.mark.parametrize("kind", ["nsp", "sop"])
def test_pairs_are_balanced_consecutive_and_from_the_right_documents(corpus, token_docs, tok, kind):
    sources = [d.source for d in corpus.documents]
    pairs = make_pairs(token_docs, sources, kind, 40, seed=1)
    labels = [p.label for p in pairs]
    assert abs(sum(labels) - len(labels) / 2) <= 0.5 and len(pairs) > 50  # exactly balanced
    for p in pairs:
        assert p.a[0] < p.a[1] and p.b[0] < p.b[1]
        if kind == "sop" or p.label == 0:  # B is what follows A in the same document
            assert p.b_doc == p.doc and p.b[0] == p.a[1]
        else:  # NSP's random B: a document of another source
            assert sources[p.b_doc] != sources[p.doc]
    assert make_pairs(token_docs, sources, kind, 40, seed=1) == pairs  # deterministic under a seed
    assert make_pairs(token_docs, sources, kind, 40, seed=2) != pairs


def test_sop_swapped_pairs_really_are_swapped(corpus, token_docs, tok):
    layout = Layout.of(tok)
    sources = [d.source for d in corpus.documents]
    pairs = make_pairs(token_docs, sources, "sop", 40, seed=0)
    encoded = encode_pairs(pairs, token_docs, layout, 40, "sop")
    for pair, example in zip(pairs, encoded):
        a = [t for s in token_docs[pair.doc][pair.a[0]:pair.a[1]] for t in s]
        b = [t for s in token_docs[pair.b_doc][pair.b[0]:pair.b[1]] for t in s]
        from tlutils.pretraining.batches import truncate_pair

        a, b = truncate_pair(a, b, 40 - 3)
        first, second = (b, a) if pair.label == 1 else (a, b)
        assert (example["input_ids"], example["token_type_ids"]) == layout.pair(first, second)
        assert example["labels"] == pair.label and len(example["input_ids"]) <= 40


def test_nsp_never_pairs_the_two_texts_of_one_row(tok):
    # Every row has a text_a and a text_b of two sentences: a random B must come from another row.
    docs = [Document("t", f"t/{i // 2}", (f"The cat {i} sat.", f"The dog {i} ran.")) for i in range(40)]
    token_docs = tokenize_documents(docs, tok)
    pairs = make_pairs(token_docs, [d.source for d in docs], "nsp", 32, seed=0)
    for p in pairs:
        assert p.b_doc == p.doc or docs[p.b_doc].source != docs[p.doc].source


def test_masking_proportions_and_no_special_or_padding_token_masked(corpus, tok):
    examples = indexed(make_examples(corpus.documents, tok, "mlm", 32))
    batch = PretrainingCollator(tok, "mlm", seed=0)(examples)
    original = PretrainingCollator(tok, "none")(examples)["input_ids"]
    chosen = batch["labels"] != IGNORE_INDEX
    special = torch.isin(original, torch.tensor(tok.all_special_ids))
    eligible = ~special & batch["attention_mask"].bool()
    assert not (chosen & ~eligible).any()  # never [CLS], [SEP] or padding
    assert torch.equal(batch["input_ids"][~chosen], original[~chosen])  # only chosen positions change
    assert torch.equal(batch["labels"][chosen], original[chosen])
    n = int(chosen.sum())
    assert abs(n / int(eligible.sum()) - 0.15) < 0.015
    is_mask = (batch["input_ids"] == tok.mask_token_id) & chosen
    unchanged = (batch["input_ids"] == original) & chosen
    assert abs(int(is_mask.sum()) / n - 0.8) < 0.04
    assert abs(int(unchanged.sum()) / n - 0.1) < 0.03
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()


def test_dynamic_masks_change_every_epoch_static_masks_never(corpus, tok):
    examples = indexed(make_examples(corpus.documents, tok, "mlm", 32)[:16])
    dynamic, static = PretrainingCollator(tok, "mlm", seed=0), PretrainingCollator(tok, "mlm", "static", seed=0)
    epoch0 = dynamic(examples)["labels"]
    assert torch.equal(dynamic(examples)["labels"], epoch0)  # same seed, epoch, example: same mask
    assert torch.equal(dynamic(list(reversed(examples)))["labels"].flip(0), epoch0)  # not the batch's order
    dynamic.set_epoch(1)
    assert not torch.equal(dynamic(examples)["labels"], epoch0)
    fixed = static(examples)["labels"]
    static.set_epoch(5)
    assert torch.equal(static(examples)["labels"], fixed)
    assert not torch.equal(PretrainingCollator(tok, "mlm", "static", seed=1)(examples)["labels"], fixed)
    copies = indexed(duplicate([{k: v for k, v in e.items() if k != "idx"} for e in examples], 2))
    twice = static(copies)["labels"]
    assert not torch.equal(twice[:16], twice[16:])  # RoBERTa's static baseline: each copy its own mask


def test_epoch_sampler_tells_the_collator_the_epoch(corpus, tok):
    examples = make_examples(corpus.documents, tok, "mlm", 32)
    collator = PretrainingCollator(tok, "mlm")
    sampler = EpochBatchSampler(examples, 8, [collator], seed=0)
    sampler.set_epoch(3)
    assert collator.epoch == 3 and sorted(i for b in sampler for i in b) == list(range(len(examples)))


def test_pair_label_travels_as_pair_labels(corpus, tok):
    examples = indexed(make_examples(corpus.documents, tok, "mlm+sop", 40, seed=0)[:8])
    batch = PretrainingCollator(tok, "mlm")(examples)
    assert batch["pair_labels"].tolist() == [e["labels"] for e in examples]
    assert batch["labels"].shape == batch["input_ids"].shape == batch["token_type_ids"].shape


def test_causal_batches_label_every_real_token_and_ignore_padding():
    from pretraining_helpers import tiny_tokenizer as make

    bpe = make("bpe")
    examples = indexed([{"input_ids": [5, 6, 7, 8, 9]}, {"input_ids": [10, 11]}])
    batch = PretrainingCollator(bpe, "clm")(examples)
    assert batch["labels"].tolist()[1][:3] == [10, 11, IGNORE_INDEX]
    assert torch.equal(batch["labels"][batch["attention_mask"].bool()], batch["input_ids"][batch["attention_mask"].bool()])
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_replaced_token_detection_labels_match_the_corrupted_input():
    original = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 20, 21, 3, 0, 0]])
    labels = torch.full_like(original, IGNORE_INDEX)
    labels[0, 1], labels[0, 3], labels[1, 2] = 10, 12, 21
    masked = original.clone()
    masked[labels != IGNORE_INDEX] = 4  # [MASK]
    sampled = torch.tensor([10, 99, 77])  # the first sample happens to be the original token
    corrupted, replaced = replace_tokens(masked, labels, sampled)
    assert corrupted.tolist() == [[2, 10, 11, 99, 13, 3], [2, 20, 77, 3, 0, 0]]
    assert replaced.tolist() == [[0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]]  # equal sample -> "original"
    assert torch.equal(replaced.bool(), corrupted != original)


def test_bad_objective_and_masking_are_one_line_errors(tok):
    with pytest.raises(ConfigError, match="use 'dynamic'"):
        PretrainingCollator(tok, "mlm", masking="sometimes")
    with pytest.raises(ConfigError, match="use 'nsp'"):
        make_pairs([[[1], [2]]], ["a"], "next", 16, 0)
