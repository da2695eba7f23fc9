"""Properties of knowledge distillation: the KD loss, the hard-label mix, students built from a
teacher's layers, and teacher logits travelling with their own examples through the loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tlutils.config import get_profile, set_seed
from tlutils.data import load_task, make_loader, tokenize_task
from tlutils.errors import ConfigError, DataError
from tlutils.methods.distill import (IGNORE_INDEX, distillation_loss, every_other_layer, kd_loss,
                                     make_distill_loss_fn, small_student, soften, student_from_teacher,
                                     with_teacher_logits, without_labels)
from tlutils.models import count_parameters, load_model, load_tokenizer
from tlutils.train import TrainConfig, evaluate, fit, predict

SMOKE = get_profile("smoke")


def _logits(seed: int, b: int = 16, c: int = 5, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(b, c, generator=torch.Generator().manual_seed(seed)) * scale


# --------------------------------------------------------------------------- kd_loss


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
def test_kd_loss_is_zero_when_the_student_equals_the_teacher(temperature):
    z = _logits(0)
    assert abs(float(kd_loss(z, z.clone(), temperature))) < 1e-6
    # a constant shift of every logit changes no probability
    assert abs(float(kd_loss(z + 3.0, z, temperature))) < 1e-5


def test_kd_loss_is_positive_for_different_logits():
    for seed in range(20):
        s, t = _logits(seed), _logits(seed + 100)
        for temperature in (0.5, 1.0, 3.0, 10.0):
            assert float(kd_loss(s, t, temperature)) > 0


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_kd_loss_is_t_squared_times_the_kl_of_the_softened_distributions(temperature):
    s, t = _logits(1).double(), _logits(2).double()
    p = torch.softmax(t / temperature, -1)  # (B, C) teacher
    q = torch.softmax(s / temperature, -1)  # (B, C) student
    by_hand = (p * (p.log() - q.log())).sum(-1).mean() * temperature**2
    assert float(kd_loss(s, t, temperature)) == pytest.approx(float(by_hand), rel=1e-5)


def test_kd_loss_approaches_logit_matching_at_high_temperature():
    """Hinton et al. (2015), section 2.1: T² KL -> (1 / 2C) ||z_s - z_t||² of centred logits."""
    s, t = _logits(3, c=4, scale=1.0), _logits(4, c=4, scale=1.0)
    centred = (s - s.mean(-1, keepdim=True)) - (t - t.mean(-1, keepdim=True))  # (B, C)
    limit = float((centred**2).sum(-1).mean() / (2 * s.shape[-1]))
    far = [abs(float(kd_loss(s, t, temperature)) - limit) / limit for temperature in (2.0, 10.0, 50.0)]
    assert far[-1] < 0.01  # close at T = 50
    assert far[0] > far[1] > far[-1]  # and closer the higher T


def test_the_t_squared_factor_keeps_gradients_comparable_across_temperatures():
    s, t = _logits(5).requires_grad_(), _logits(6)
    scaled, unscaled = [], []
    for temperature in (1.0, 4.0, 16.0):
        (g,) = torch.autograd.grad(kd_loss(s, t, temperature), s)
        scaled.append(float(g.norm()))
        unscaled.append(float(g.norm()) / temperature**2)
    assert unscaled[-1] < unscaled[0] / 50  # without T² the soft targets fade away ...
    assert 0.2 < scaled[-1] / scaled[0] < 5  # ... with it they keep their weight


def test_soften_flattens_towards_uniform_and_keeps_the_ranking():
    z = torch.tensor([[3.0, 1.0, -2.0]])
    probs = [soften(z, temperature) for temperature in (1.0, 2.0, 8.0, 1000.0)]
    tops = [float(p[0, 0]) for p in probs]
    assert tops == sorted(tops, reverse=True) and tops[-1] == pytest.approx(1 / 3, abs=1e-3)
    assert all(torch.equal(p.argsort(), probs[0].argsort()) for p in probs)
    assert torch.allclose(probs[1].sum(-1), torch.ones(1))


def test_kd_loss_sends_gradients_to_the_student_only():
    s, t = _logits(7).requires_grad_(), _logits(8).requires_grad_()
    kd_loss(s, t, 2.0).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None
    labels = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(0))
    s.grad = None
    loss, _ = distillation_loss(s, t, labels, 2.0, 0.5)
    loss.backward()
    assert t.grad is None and float(s.grad.abs().sum()) > 0


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_kd_loss_rejects_a_non_positive_temperature(bad):
    with pytest.raises(ConfigError, match="temperature"):
        kd_loss(_logits(0), _logits(1), bad)


def test_kd_loss_rejects_mismatched_shapes():
    with pytest.raises(ConfigError, match="same"):
        kd_loss(_logits(0, c=3), _logits(1, c=4), 1.0)


# --------------------------------------------------------------------------- the mix


def test_alpha_zero_is_cross_entropy_and_alpha_one_is_pure_kd():
    s, t = _logits(9, c=3), _logits(10, c=3)
    labels = torch.arange(16) % 3
    ce = F.cross_entropy(s, labels)
    loss0, stats0 = distillation_loss(s, t, labels, 3.0, 0.0)
    loss1, stats1 = distillation_loss(s, t, labels, 3.0, 1.0)
    assert float(loss0) == pytest.approx(float(ce), rel=1e-6)
    assert float(loss1) == pytest.approx(float(kd_loss(s, t, 3.0)), rel=1e-6)
    loss_mid, _ = distillation_loss(s, t, labels, 3.0, 0.3)
    assert float(loss_mid) == pytest.approx(0.3 * stats1["kd"] + 0.7 * stats0["ce"], rel=1e-5)
    assert stats0["labelled"] == 1.0


def test_unlabelled_rows_are_taught_by_the_teacher_alone():
    s, t = _logits(11, c=2), _logits(12, c=2)
    labels = torch.tensor([0, 1] * 4 + [IGNORE_INDEX] * 8)
    _, stats = distillation_loss(s, t, labels, 2.0, 0.5)
    assert stats["ce"] == pytest.approx(float(F.cross_entropy(s[:8], labels[:8])), rel=1e-6)
    assert stats["labelled"] == 0.5
    none = torch.full((16,), IGNORE_INDEX)
    loss, stats = distillation_loss(s.requires_grad_(), t, none, 2.0, 0.5)
    assert stats["ce"] == 0.0 and math.isfinite(float(loss.detach()))
    assert float(loss.detach()) == pytest.approx(0.5 * float(kd_loss(s.detach(), t, 2.0)), rel=1e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_zero_one_is_refused(alpha):
    with pytest.raises(ConfigError, match="alpha"):
        distillation_loss(_logits(0), _logits(1), torch.zeros(16, dtype=torch.long), 1.0, alpha)
    with pytest.raises(ConfigError, match="alpha"):
        make_distill_loss_fn(1.0, alpha)


# --------------------------------------------------------------------------- students


@pytest.fixture(scope="module")
def teacher4():
    """A random 4-layer BERT classifier (distinct layers, so copies can be told apart)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, num_labels=3)
    return BertForSequenceClassification(config).eval()


def test_student_from_teacher_copies_exactly_the_chosen_layers(teacher4):
    student = student_from_teacher(teacher4)
    assert student.config.num_hidden_layers == 2 and teacher4.config.num_hidden_layers == 4
    assert len(student.bert.encoder.layer) == 2
    t_state, s_state = teacher4.state_dict(), student.state_dict()
    for new, old in enumerate([0, 2]):
        prefix_s, prefix_t = f"bert.encoder.layer.{new}.", f"bert.encoder.layer.{old}."
        keys = [k for k in s_state if k.startswith(prefix_s)]
        assert keys
        for key in keys:
            assert torch.equal(s_state[key], t_state[prefix_t + key[len(prefix_s):]]), key
    for key in s_state:
        if ".encoder.layer." not in key:
            assert torch.equal(s_state[key], t_state[key]), key  # embeddings, pooler, classifier
    # not the other layers: layer 1 of the student is the teacher's layer 2, not its layer 1
    w = "attention.self.query.weight"
    assert not torch.equal(s_state[f"bert.encoder.layer.1.{w}"], t_state[f"bert.encoder.layer.1.{w}"])


def test_student_from_teacher_with_chosen_layers_and_independent_weights(teacher4):
    student = student_from_teacher(teacher4, layers=[1, 3])
    w = "attention.output.dense.weight"
    assert torch.equal(student.state_dict()[f"bert.encoder.layer.0.{w}"],
                       teacher4.state_dict()[f"bert.encoder.layer.1.{w}"])
    before = teacher4.bert.embeddings.word_embeddings.weight.clone()
    with torch.no_grad():
        student.bert.embeddings.word_embeddings.weight.add_(1.0)
    assert torch.equal(teacher4.bert.embeddings.word_embeddings.weight, before)  # copies, not shared
    assert count_parameters(student) < count_parameters(teacher4)


def test_a_student_of_the_first_layers_computes_like_the_truncated_teacher(teacher4):
    """With layers [0, 1] the student is the teacher's first two layers: same hidden states."""
    student = student_from_teacher(teacher4, layers=[0, 1]).eval()
    ids = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden_t = teacher4.bert(ids, output_hidden_states=True).hidden_states[2]  # after layer 1
        hidden_s = student.bert(ids).last_hidden_state
    assert torch.allclose(hidden_s, hidden_t, atol=1e-5)


def test_every_other_layer_halves_the_depth():
    assert every_other_layer(6) == [0, 2, 4]
    assert every_other_layer(12) == [0, 2, 4, 6, 8, 10]
    assert every_other_layer(2) == [0] and every_other_layer(1) == [0]


def test_the_tiny_teacher_gives_a_one_layer_student():
    teacher = load_model("tiny-bert", 2, seed=0)
    student = student_from_teacher(teacher)
    assert student.config.num_hidden_layers == 1 and count_parameters(student) < count_parameters(teacher)


@pytest.mark.parametrize("layers", [[], [2, 0], [0, 0], [0, 4], [-1, 1]])
def test_bad_layer_choices_are_refused(teacher4, layers):
    with pytest.raises(ConfigError, match="layers"):
        student_from_teacher(teacher4, layers=layers)


def test_a_model_without_bert_layers_is_refused():
    with pytest.raises(ConfigError, match="BERT-family"):
        student_from_teacher(torch.nn.Linear(3, 2))


def test_small_student_shares_the_vocabulary_and_labels(teacher4):
    student = small_student(teacher4, num_layers=1, hidden_size=16, num_heads=2, seed=0)
    assert student.config.vocab_size == 100 and student.config.num_labels == 3
    assert student.config.num_hidden_layers == 1 and count_parameters(student) < count_parameters(teacher4)
    with pytest.raises(ConfigError):
        small_student(teacher4, hidden_size=30, num_heads=4)


# --------------------------------------------------------------------------- data pass-through


@pytest.fixture(scope="module")
def mrpc():
    data = load_task("mrpc", max_train_examples=40, max_eval_examples=24)
    encoded, _ = tokenize_task(data, load_tokenizer("tiny-bert"), "mrpc", SMOKE.max_length)
    return encoded


def test_teacher_logits_travel_with_their_own_examples(mrpc):
    n = len(mrpc["train"])
    logits = np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float32)  # row i holds (i, -i)
    split = with_teacher_logits(mrpc["train"], logits)
    loader = make_loader(split, 8, shuffle=True, seed=3)
    seen = []
    for batch in loader:
        t = batch["teacher_logits"]
        assert t.dtype == torch.float32 and t.shape == (len(batch["idx"]), 2)
        assert torch.equal(t[:, 0].long(), batch["idx"]) and torch.equal(t[:, 1], -t[:, 0])
        seen += batch["idx"].tolist()
    assert sorted(seen) == list(range(n)) and seen != list(range(n))  # shuffled, each once


def test_with_teacher_logits_checks_the_shape_and_replaces_an_old_column(mrpc):
    n = len(mrpc["train"])
    with pytest.raises(DataError, match="shape"):
        with_teacher_logits(mrpc["train"], np.zeros((n - 1, 2)))
    with pytest.raises(DataError, match="shape"):
        with_teacher_logits(mrpc["train"], np.zeros(n))
    with pytest.raises(DataError, match="NaN"):
        with_teacher_logits(mrpc["train"], np.full((n, 2), np.nan))
    twice = with_teacher_logits(with_teacher_logits(mrpc["train"], np.zeros((n, 2))), np.ones((n, 2)))
    assert twice.column_names.count("teacher_logits") == 1 and twice[0]["teacher_logits"] == [1.0, 1.0]


def test_without_labels_hides_every_label(mrpc):
    hidden = without_labels(mrpc["train"])
    assert set(hidden["labels"]) == {IGNORE_INDEX} and len(hidden) == len(mrpc["train"])
    assert hidden["input_ids"] == mrpc["train"]["input_ids"]


def test_evaluation_and_plain_training_work_on_a_split_with_teacher_logits(mrpc):
    model = load_model("tiny-bert", 2, seed=0)
    plain = predict(model, mrpc["validation"], mixed_precision="no")[0]
    val = with_teacher_logits(mrpc["validation"], np.zeros((len(mrpc["validation"]), 2)))
    assert np.array_equal(predict(model, val, mixed_precision="no")[0], plain)
    assert set(evaluate(model, val, "mrpc")) == {"accuracy", "f1", "mcc"}
    train = with_teacher_logits(mrpc["train"], np.zeros((len(mrpc["train"]), 2)))
    config = TrainConfig.from_profile(SMOKE, epochs=1, batch_size=8, progress=False, mixed_precision="no")
    history = fit(model, train, val, task="mrpc", config=config)  # the default loss ignores the column
    assert math.isfinite(history.epochs[0]["train_loss"])


def test_the_distill_loss_fn_pops_the_teacher_logits_and_trains(mrpc):
    set_seed(0)
    teacher = load_model("tiny-bert", 2, seed=0)
    teacher_logits, _ = predict(teacher, mrpc["train"], mixed_precision="no")
    train = with_teacher_logits(mrpc["train"], teacher_logits)
    loss_fn = make_distill_loss_fn(temperature=2.0, alpha=1.0)
    batch = next(iter(make_loader(train, 8, shuffle=False)))
    batch.pop("idx")
    keys = set(batch)
    loss, stats = loss_fn(teacher, batch)  # the teacher as its own student: KD is zero (eval mode)
    assert set(batch) == keys  # the caller's batch is untouched
    assert abs(float(loss.detach())) < 1e-3 and set(stats) == {"kd", "ce", "labelled"}
    student = student_from_teacher(teacher)
    config = TrainConfig.from_profile(SMOKE, epochs=2, batch_size=16, progress=False, mixed_precision="no")
    history = fit(student, train, None, task="mrpc", config=config, loss_fn=loss_fn)
    assert {"kd", "ce", "labelled"} <= set(history.epochs[0])
    assert history.epochs[-1]["kd"] < history.epochs[0]["kd"]  # the student moves towards the teacher
    with pytest.raises(DataError, match="with_teacher_logits"):
        loss_fn(student, {k: v for k, v in batch.items() if k != "teacher_logits"})
