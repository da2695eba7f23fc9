"""Properties of mean pooling, in-batch InfoNCE and the triplet loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tlutils.errors import ConfigError
from tlutils.methods.contrastive import info_nce, mean_pool, triplet_loss


def test_mean_pool_ignores_padding():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)  # (B, T, H)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))


def test_info_nce_of_identical_views_at_low_temperature_is_near_zero():
    torch.manual_seed(0)
    z = torch.randn(16, 64)
    assert info_nce(z, z, temperature=0.01).item() < 1e-3
    assert info_nce(z, z, temperature=1.0).item() > 0.5  # a high temperature cannot separate


def test_info_nce_equals_cross_entropy_against_the_diagonal():
    torch.manual_seed(0)
    a, b = torch.randn(8, 5), torch.randn(8, 5)
    logits = F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1) / 0.1  # (B, B)
    torch.testing.assert_close(info_nce(a, b, 0.1), F.cross_entropy(logits, torch.arange(8)))


def test_info_nce_is_lower_for_aligned_than_for_shuffled_views():
    torch.manual_seed(0)
    a = torch.randn(32, 16)
    b = a + 0.1 * torch.randn(32, 16)
    shuffled = b[torch.roll(torch.arange(32), 1)]
    assert info_nce(a, b, 0.05) < info_nce(a, shuffled, 0.05)
    assert math.isclose(info_nce(a, a[torch.roll(torch.arange(32), 1)], 0.05).item(),
                        info_nce(a, shuffled, 0.05).item(), rel_tol=0.5)


def test_info_nce_rejects_bad_input():
    with pytest.raises(ConfigError):
        info_nce(torch.ones(3, 2), torch.ones(4, 2))
    with pytest.raises(ConfigError, match="temperature"):
        info_nce(torch.ones(3, 2), torch.ones(3, 2), 0.0)


def test_triplet_loss_is_zero_when_the_margin_is_met_and_positive_otherwise():
    anchor = torch.zeros(3, 2)
    positive = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # d(a, p) = 1
    negative = torch.tensor([[3.0, 0.0], [1.2, 0.0], [0.5, 0.0]])  # d(a, n) = 3, 1.2, 0.5
    losses = triplet_loss(anchor, positive, negative, margin=0.5, reduction="none")
    torch.testing.assert_close(losses, torch.tensor([0.0, 0.3, 1.0]))
    assert triplet_loss(anchor[:1], positive[:1], negative[:1], margin=2.0).item() == 0.0  # 1 + 2 <= 3
    assert triplet_loss(anchor[:1], positive[:1], negative[:1], margin=2.01).item() > 0.0
    torch.testing.assert_close(triplet_loss(anchor, positive, negative, 0.5), losses.mean())
    torch.testing.assert_close(triplet_loss(anchor, positive, negative, 0.5, "sum"), losses.sum())


def test_triplet_loss_random_property():
    torch.manual_seed(0)
    a, p, n = torch.randn(3, 200, 8).unbind(0)
    losses = triplet_loss(a, p, n, margin=0.3, reduction="none")
    gap = (a - p).norm(dim=-1) + 0.3 - (a - n).norm(dim=-1)
    assert torch.equal(losses == 0, gap <= 0)
    assert (losses[gap > 0] > 0).all()


def test_triplet_loss_rejects_a_negative_margin():
    with pytest.raises(ConfigError, match="margin"):
        triplet_loss(torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2), margin=-0.1)


# --------------------------------------------------------------------------- hard negatives, SimCSE, geometry

from tlutils.methods.contrastive import (ViewsCollator, alignment, embed, make_contrastive_loss_fn,  # noqa: E402
                                         make_sts_eval_fn, nli_triplets, sentence_views, uniformity)


@pytest.mark.parametrize("batch", [2, 5, 16])
def test_info_nce_is_log_b_when_all_similarities_are_equal(batch):
    same = torch.ones(batch, 8)  # every cosine similarity is 1
    assert math.isclose(info_nce(same, same, 0.05).item(), math.log(batch), rel_tol=1e-6)
    # orthogonal anchors with orthogonal partners: every similarity is 0
    eye = torch.eye(2 * batch)
    assert math.isclose(info_nce(eye[:batch], eye[batch:], 0.1).item(), math.log(batch), rel_tol=1e-6)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_info_nce_with_hard_negatives_is_log_2b_at_equal_similarities(batch):
    same = torch.ones(batch, 4)
    assert math.isclose(info_nce(same, same, 0.05, negatives=same).item(), math.log(2 * batch), rel_tol=1e-6)


def test_info_nce_with_hard_negatives_is_cross_entropy_over_positives_and_negatives():
    torch.manual_seed(0)
    a, b, n = torch.randn(3, 6, 5).unbind(0)
    logits = F.cosine_similarity(a.unsqueeze(1), torch.cat([b, n]).unsqueeze(0), dim=-1) / 0.05  # (B, 2B)
    torch.testing.assert_close(info_nce(a, b, 0.05, negatives=n), F.cross_entropy(logits, torch.arange(6)))
    # a hard negative that sits on the anchor costs more than one far away
    assert info_nce(a, b, 0.05, negatives=a) > info_nce(a, b, 0.05, negatives=-a)


def test_info_nce_falls_while_learning_a_separable_toy_set():
    torch.manual_seed(0)
    prototypes = torch.randn(16, 8)  # 16 "sentences", two noisy views of each
    view_a = prototypes + 0.3 * torch.randn(16, 8)
    view_b = prototypes + 0.3 * torch.randn(16, 8)
    encoder = torch.nn.Linear(8, 4)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=0.05)
    losses = []
    for _ in range(100):
        loss = info_nce(encoder(view_a), encoder(view_b), temperature=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < 0.5 * math.log(16)


def test_info_nce_refuses_a_batch_of_one_for_in_batch_negatives():
    with pytest.raises(ConfigError, match="batch_size >= 2") as err:
        info_nce(torch.ones(1, 4), torch.ones(1, 4))
    assert "\n" not in str(err.value)
    info_nce(torch.ones(1, 4), torch.ones(1, 4), negatives=torch.zeros(1, 4))  # one hard negative is enough
    with pytest.raises(ConfigError, match="hard negative"):
        info_nce(torch.ones(3, 4), torch.ones(3, 4), negatives=torch.ones(2, 4))


def test_alignment_is_zero_for_identical_pairs_and_four_for_antipodal_ones():
    torch.manual_seed(0)
    x = torch.randn(20, 6)
    assert alignment(x, x).item() < 1e-10
    assert alignment(x, 3 * x).item() < 1e-10  # the sphere: only the direction counts
    assert math.isclose(alignment(x, -x).item(), 4.0, rel_tol=1e-5)
    assert 0 < alignment(x, torch.randn(20, 6)).item() < 4
    assert alignment(x.numpy(), x.numpy()).item() < 1e-10  # NumPy arrays too


def test_uniformity_is_lower_for_spread_points_than_for_clustered_ones():
    torch.manual_seed(0)
    spread = torch.randn(200, 16)
    clustered = torch.tensor([1.0] + [0.0] * 15) + 0.05 * torch.randn(200, 16)
    assert uniformity(spread) < uniformity(clustered) < 0
    assert uniformity(torch.ones(5, 3)).abs().item() < 1e-6  # one point: log 1 = 0
    # the same points, by hand: log of the mean Gaussian potential over the pairs i < j
    x = F.normalize(spread[:10], dim=-1)
    d2 = torch.cdist(x, x).pow(2)[torch.triu_indices(10, 10, 1).unbind(0)]
    torch.testing.assert_close(uniformity(spread[:10]), d2.mul(-2).exp().mean().log(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError):
        uniformity(torch.ones(1, 3))


def test_nli_triplets_pair_entailments_with_contradictions_of_the_same_premise():
    rows = [{"text_a": "p1", "text_b": "e1", "label_name": "entailment"},
            {"text_a": "p1", "text_b": "n1", "label_name": "neutral"},
            {"text_a": "p1", "text_b": "c1", "label_name": "contradiction"},
            {"text_a": "p2", "text_b": "e2", "label_name": "entailment"},  # no contradiction: dropped
            {"text_a": "p3", "text_b": "c3", "label_name": "contradiction"},
            {"text_a": "p3", "text_b": "e3", "label_name": "entailment"},
            {"text_a": "p3", "text_b": "e3b", "label_name": "entailment"}]
    assert nli_triplets(rows) == [("p1", "e1", "c1"), ("p3", "e3", "c3"), ("p3", "e3b", "c3")]


def test_views_collator_pads_every_view_of_a_batch_to_one_length():
    views = [[[101, 5, 102], [101, 5, 6, 7, 102]], [[101, 102], [101, 9, 102]]]
    batch = ViewsCollator(views, pad_token_id=0, pad_to_multiple_of=8)([{"idx": 1}, {"idx": 0}])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 2, 8)  # (B, V, T)
    assert batch["input_ids"][1, 1, :5].tolist() == [101, 5, 6, 7, 102]
    assert batch["attention_mask"].sum(-1).tolist() == [[2, 3], [3, 5]]
    assert batch["idx"].tolist() == [1, 0]


@pytest.fixture(scope="module")
def tiny_encoder():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.1)
    return BertModel(config)


@pytest.fixture(scope="module")
def tokenizer():
    from tlutils.models import load_tokenizer

    return load_tokenizer("tiny-bert")


def test_sentence_views_and_the_loss_function_use_dropout_as_the_only_noise(tiny_encoder, tokenizer):
    sentences = ["a man plays a guitar .", "two dogs run in the snow .", "a child eats an apple .",
                 "the market is busy today ."]
    data, collator = sentence_views(tokenizer, [(s, s) for s in sentences], max_length=16)
    assert len(data) == 4 and data[0]["input_ids"] == tokenizer(sentences[0])["input_ids"]
    batch = collator([{"idx": i} for i in range(4)])
    assert torch.equal(batch["input_ids"][:, 0], batch["input_ids"][:, 1])  # the same sentence twice
    loss_fn = make_contrastive_loss_fn("info_nce", temperature=0.05)
    tiny_encoder.eval()  # no dropout: both views are the same embedding
    z = embed(tiny_encoder, batch["input_ids"], batch["attention_mask"])  # (B, V, H)
    assert z.shape == (4, 2, 32) and torch.allclose(z[:, 0], z[:, 1], atol=1e-6)
    eval_loss, stats = loss_fn(tiny_encoder, batch)
    torch.testing.assert_close(eval_loss, info_nce(z[:, 0], z[:, 1], 0.05))
    assert stats["retrieval"] == 1.0 and stats["positive_cosine"] > 0.999
    tiny_encoder.train()  # dropout on (fit trains in train mode): two different views
    torch.manual_seed(1)
    z = embed(tiny_encoder, batch["input_ids"], batch["attention_mask"])
    assert not torch.allclose(z[:, 0], z[:, 1])
    tiny_encoder.eval()


def test_triplet_objective_needs_three_views(tiny_encoder, tokenizer):
    _, pairs = sentence_views(tokenizer, [("a", "a"), ("b", "b")])
    with pytest.raises(ConfigError, match="anchor, positive, negative"):
        make_contrastive_loss_fn("triplet")(tiny_encoder, pairs([{"idx": 0}, {"idx": 1}]))
    _, triplets = sentence_views(tokenizer, [("a cat", "a cat sits", "no animal"), ("rain", "it rains", "sunny")])
    loss, _ = make_contrastive_loss_fn("triplet", margin=0.5)(tiny_encoder, triplets([{"idx": 0}, {"idx": 1}]))
    assert 0.0 <= loss.item() <= 2.5
    with pytest.raises(ConfigError, match="objective"):
        make_contrastive_loss_fn("mlm")
    with pytest.raises(ConfigError, match="same number"):
        sentence_views(tokenizer, [("a", "a"), ("b", "b", "c")])


def test_supervised_simcse_through_fit_raises_the_retrieval_of_the_training_triplets(tiny_encoder, tokenizer):
    from tlutils.train import TrainConfig, fit

    torch.manual_seed(0)
    subjects = ["a man", "a woman", "two kids", "a dog", "an old lady", "the band", "a chef", "some birds"]
    triplets = [(f"{s} is outside in the park .", f"{s} is outdoors .", f"{s} is sleeping in bed indoors .")
                for s in subjects]
    data, collator = sentence_views(tokenizer, triplets, max_length=16)
    sts = {"text_a": [t[0] for t in triplets], "text_b": [t[1] for t in triplets],
           "label": [float(i % 3) for i in range(len(triplets))]}
    history = fit(tiny_encoder, data, sts, task=None, loss_fn=make_contrastive_loss_fn("info_nce"),
                  collate_fn=collator, eval_fn=make_sts_eval_fn(tokenizer, max_length=16),
                  select_metric="spearman",
                  config=TrainConfig(epochs=15, batch_size=8, learning_rate=3e-3, mixed_precision="no",
                                     progress=False, select_best=False))
    assert history.main_metric == "spearman" and "eval_spearman" in history.epochs[-1]
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert history.epochs[-1]["retrieval"] >= history.epochs[0]["retrieval"]


def test_sts_similarities_are_cosines_and_the_eval_fn_ranks_them_against_the_gold_scores(tiny_encoder, tokenizer):
    from scipy.stats import spearmanr

    from tlutils.methods.contrastive import sts_similarities

    a = ["a man plays a guitar .", "a dog runs .", "the sun is hot .", "a man plays a guitar ."]
    b = ["a man plays a guitar .", "a cat sleeps .", "stocks fell today .", "a woman sings ."]
    cosine, u, v = sts_similarities(tiny_encoder, tokenizer, a, b, max_length=16, mixed_precision="no")
    assert cosine.shape == (4,) and u.shape == v.shape == (4, 32)
    assert math.isclose(float(cosine[0]), 1.0, abs_tol=1e-5)  # the same sentence on both sides
    assert torch.allclose(torch.tensor(cosine), F.cosine_similarity(torch.tensor(u), torch.tensor(v)), atol=1e-5)
    gold = [5.0, 1.0, 0.0, 2.0]
    scores = make_sts_eval_fn(tokenizer, max_length=16, mixed_precision="no")(
        tiny_encoder, {"text_a": a, "text_b": b, "label": gold})
    assert math.isclose(scores["spearman"], spearmanr(cosine, gold)[0], abs_tol=1e-9)


def test_reinit_top_layers_changes_only_the_top_layers():
    from tlutils.methods.contrastive import reinit_top_layers
    from tlutils.models import load_model

    model = load_model("tiny-bert", 2, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reinit_top_layers(model, 1, seed=1)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".layer.1." in k for k in changed)  # only the top layer (of 2) was redrawn
    with pytest.raises(ConfigError, match="choose between 1 and"):
        reinit_top_layers(model, 3)
