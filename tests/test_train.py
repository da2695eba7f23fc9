"""The training engine: determinism, exact resume after a kill, errors, selection, schedules."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tlutils.config import get_profile, set_seed
from tlutils.data import load_task, tokenize_task
from tlutils.errors import CheckpointMismatchError, ConfigError, NonFiniteLossError
from tlutils.models import load_model, load_tokenizer
from tlutils.train import (History, TrainConfig, evaluate, fit, latest_checkpoint,
                           linear_warmup_decay, predict, weight_decay_groups)

WORKER = Path(__file__).with_name("train_worker.py")
SMOKE = get_profile("smoke")


@pytest.fixture(scope="module")
def mrpc():
    data = load_task("mrpc", max_train_examples=48, max_eval_examples=32)
    encoded, _ = tokenize_task(data, load_tokenizer("tiny-bert"), "mrpc", SMOKE.max_length)
    return encoded


@pytest.fixture(scope="module")
def stsb():
    data = load_task("stsb", max_train_examples=32, max_eval_examples=32)
    encoded, _ = tokenize_task(data, load_tokenizer("tiny-bert"), "stsb", SMOKE.max_length)
    return encoded


def _config(**changes):
    return TrainConfig.from_profile(SMOKE, **{"batch_size": 8, "progress": False, **changes})


def _run(mrpc, seed=0, **changes):
    set_seed(seed)
    model = load_model("tiny-bert", 2, seed=seed)
    history = fit(model, mrpc["train"], mrpc["validation"], task="mrpc", config=_config(seed=seed, **changes))
    return model, history


def test_linear_warmup_decay_shape():
    values = [linear_warmup_decay(s, 10, 100) for s in range(101)]
    assert values[0] < values[5] < values[9] <= 1.0
    assert values[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[100] == 0.0


def test_weight_decay_groups_split_matrices_from_vectors():
    model = load_model("tiny-bert", 2, seed=0)
    decay, no_decay = weight_decay_groups(model, 3e-4, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == no_decay["lr"] == 3e-4
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_same_seed_same_metrics_and_weights(mrpc):
    model_a, hist_a = _run(mrpc, seed=3)
    model_b, hist_b = _run(mrpc, seed=3)
    assert hist_a.epochs == hist_b.epochs
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    _, hist_c = _run(mrpc, seed=4)
    assert [e["train_loss"] for e in hist_c.epochs] != [e["train_loss"] for e in hist_a.epochs]


def test_history_records_and_best_selection(mrpc):
    model, history = _run(mrpc, epochs=3)
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3]
    assert len(history.steps) == 3 * math.ceil(48 / 8)
    scores = [e["eval_accuracy"] for e in history.epochs]
    assert history.best_score == max(scores) and history.best_epoch == scores.index(max(scores)) + 1
    # the returned model carries the best epoch's weights: re-evaluating gives the best score
    again = evaluate(model, mrpc["validation"], "mrpc", mixed_precision=history.mixed_precision)
    assert again["accuracy"] == pytest.approx(history.best_score, abs=1 / 32 + 1e-9)
    assert history.train_samples == 3 * 48 and history.samples_per_second > 0
    tokens = sum(len(ids) for ids in mrpc["train"]["input_ids"])  # padding is not counted
    assert history.train_tokens == 3 * tokens and history.tokens_per_second > 0
    assert history.to_dict()["tokens_per_second"] == pytest.approx(history.tokens_per_second)
    assert History.from_dict(json.loads(json.dumps(history.to_dict()))).epochs == history.epochs


def test_one_batch_can_be_overfitted(mrpc):
    one = mrpc["train"].select(range(8))
    set_seed(0)
    model = load_model("tiny-bert", 2, seed=0)
    history = fit(model, one, one, task="mrpc",
                  config=_config(epochs=40, learning_rate=1e-3, warmup_fraction=0.0, mixed_precision="no"))
    assert history.epochs[-1]["train_loss"] < 0.25 * history.epochs[0]["train_loss"]
    assert history.best_score == 1.0


def test_regression_task_trains(stsb):
    set_seed(0)
    model = load_model("tiny-bert", 1, seed=0)
    history = fit(model, stsb["train"], stsb["validation"], task="stsb", config=_config(epochs=1))
    assert "eval_pearson" in history.epochs[0] and math.isfinite(history.epochs[0]["train_loss"])


def test_predict_returns_dataset_order(mrpc):
    model = load_model("tiny-bert", 2, seed=0)
    logits, labels = predict(model, mrpc["validation"], batch_size=5, mixed_precision="no")
    assert logits.shape == (32, 2)
    np.testing.assert_array_equal(labels, np.asarray(mrpc["validation"]["labels"]))
    model.eval()
    with torch.no_grad():
        first = model(**{k: torch.tensor([mrpc["validation"][0][k]])
                         for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    np.testing.assert_allclose(logits[0], first[0].numpy(), atol=1e-5)


def test_early_stopping_stops(mrpc):
    _, history = _run(mrpc, epochs=6, learning_rate=0.0, early_stopping_patience=1, warmup_fraction=0.0)
    assert history.stopped_early and len(history.epochs) == 2  # no learning: epoch 2 does not improve


def test_gradient_accumulation_counts_optimizer_steps(mrpc):
    _, history = _run(mrpc, epochs=1, grad_accum_steps=2)
    assert len(history.steps) == math.ceil(6 / 2)


def test_nan_loss_names_step_and_checkpoint(mrpc, tmp_path):
    def nan_after_three(model, batch, calls=[0]):
        calls[0] += 1
        loss = model(**batch).loss
        return (loss * float("nan") if calls[0] > 3 else loss), {}

    set_seed(0)
    model = load_model("tiny-bert", 2, seed=0)
    config = _config(epochs=1, checkpoint_dir=str(tmp_path), checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=r"optimizer step 4 .*checkpoint.*" + str(tmp_path)):
        fit(model, mrpc["train"], mrpc["validation"], task="mrpc", config=config, loss_fn=nan_after_three)


def test_resume_from_other_model_or_task_refused(mrpc, tmp_path):
    _run(mrpc, epochs=1, checkpoint_dir=str(tmp_path))
    assert latest_checkpoint(tmp_path) is not None
    model = load_model("tiny-bert", 3, seed=0)  # another head: another task's checkpoint
    with pytest.raises(CheckpointMismatchError, match="num_labels: 2 there, 3 here.*another checkpoint_dir"):
        fit(model, mrpc["train"], mrpc["validation"], task="mrpc",
            config=_config(epochs=1, checkpoint_dir=str(tmp_path), resume=True))


def test_bad_settings_raise(mrpc):
    model = load_model("tiny-bert", 2, seed=0)
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        fit(model, mrpc["train"], task="mrpc", config=_config(resume=True))
    for setting in ({"epochs": 0}, {"grad_accum_steps": 0}, {"batch_size": 0},
                    {"early_stopping_patience": 0}, {"max_steps": 0}):
        with pytest.raises(ConfigError, match=f"{next(iter(setting))}=0: use"):
            fit(model, mrpc["train"], task="mrpc", config=_config(**setting))
    with pytest.raises(ConfigError, match="shard_eval=True applies to a custom eval_fn"):
        fit(model, mrpc["train"], mrpc["validation"], task="mrpc", config=_config(), shard_eval=True)


def test_one_process_evaluates_the_whole_split_whatever_shard_says():
    from tlutils.train import evaluate_across_ranks

    seen = []

    def mean_label(model, rows):
        seen.append(len(rows))
        return {"positive": sum(r["labels"] for r in rows) / len(rows)}

    rows = [{"labels": y} for y in (1, 0, 1, 1)]
    assert evaluate_across_ranks(mean_label, None, rows, shard=True) == {"positive": 0.75} and seen == [4]


def test_a_model_with_too_few_outputs_is_refused_before_training():
    snli = load_task("snli", max_train_examples=16, max_eval_examples=16)  # 3 classes
    encoded, _ = tokenize_task(snli, load_tokenizer("tiny-bert"), "snli", SMOKE.max_length)
    model = load_model("tiny-bert", 2, seed=0)
    with pytest.raises(ConfigError, match="2 outputs but task 'snli' has 3 classes: load it with num_labels=3"):
        fit(model, encoded["train"], encoded["validation"], task="snli", config=_config(epochs=1))


def test_examples_without_a_hard_label_pass_the_label_check(mrpc):
    """-100 is cross-entropy's ignore index: distillation's unlabelled transfer pairs carry it."""
    train = mrpc["train"].map(lambda row, i: {"labels": -100 if i % 2 else row["labels"]}, with_indices=True)
    set_seed(0)
    history = fit(load_model("tiny-bert", 2, seed=0), train, task="mrpc", config=_config(epochs=1))
    assert math.isfinite(history.epochs[0]["train_loss"])


def test_resume_with_other_settings_is_refused(mrpc, tmp_path):
    _run(mrpc, epochs=1, checkpoint_dir=str(tmp_path))
    model = load_model("tiny-bert", 2, seed=0)
    with pytest.raises(CheckpointMismatchError, match="batch_size: 8 there, 16 here"):
        fit(model, mrpc["train"], mrpc["validation"], task="mrpc",
            config=_config(epochs=1, batch_size=16, checkpoint_dir=str(tmp_path), resume=True))


def test_non_finite_loss_leaves_the_last_finite_weights_and_a_plain_model(mrpc):
    snapshots = []

    def nan_at_third(model, batch, calls=[0]):
        calls[0] += 1
        if calls[0] == 3:
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        loss = model(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"]).loss
        return (loss * float("nan") if calls[0] == 3 else loss), {}

    set_seed(0)
    model = load_model("tiny-bert", 2, seed=0)
    with pytest.raises(NonFiniteLossError, match="optimizer step 3 .*the update was not applied"):
        fit(model, mrpc["train"], task="mrpc", config=_config(epochs=1, mixed_precision="bf16"), loss_fn=nan_at_third)
    for name, value in model.state_dict().items():  # the weights before the bad step, untouched
        assert torch.equal(value, snapshots[0][name]), name
    assert not model.training
    # accelerate's autocast wrapper is removed after the error too
    assert "_original_forward" not in vars(model) and not hasattr(model.forward, "__wrapped__")


def test_learning_rate_ends_at_zero_and_accumulation_counts_a_short_window(mrpc):
    _, history = _run(mrpc, epochs=2, grad_accum_steps=4)  # 6 batches an epoch: windows of 4 and 2
    assert len(history.steps) == 2 * 2
    assert history.steps[-1]["lr"] == 0.0
    peak = _config().learning_rate  # 4 steps, no warmup step: 3/4, 2/4, 1/4, 0 of the peak after each
    assert [s["lr"] for s in history.steps] == pytest.approx([peak * f for f in (0.75, 0.5, 0.25, 0.0)])


def test_fit_takes_any_dataset_sampler_collator_and_evaluation(mrpc):
    """The extension points the later parts build on: a list of dicts, a batch sampler, a
    collator, an eval_fn selecting on a loss (lower is better), no task."""
    rows = [{k: mrpc["train"][i][k] for k in ("input_ids", "attention_mask", "labels")} for i in range(24)]
    seen_epochs, batches_seen, records = [], [], []

    class EveryOther(torch.utils.data.Sampler):
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch):
            seen_epochs.append(epoch)

        def __iter__(self):
            return iter([[i, i + 1] for i in range(0, 24, 2)])

        def __len__(self):
            return 12

    def collate(examples):
        batches_seen.append([e["idx"] for e in examples])
        longest = max(len(e["input_ids"]) for e in examples)
        pad = lambda key: torch.tensor([e[key] + [0] * (longest - len(e[key])) for e in examples])
        return {"input_ids": pad("input_ids"), "attention_mask": pad("attention_mask"),
                "labels": torch.tensor([e["labels"] for e in examples])}

    def held_out_loss(model, data):
        batch = collate([dict(r, idx=i) for i, r in enumerate(data)])
        with torch.no_grad():
            return {"loss": float(model(**batch).loss), "constant": 1.0}

    set_seed(0)
    model = load_model("tiny-bert", 2, seed=0)
    history = fit(model, rows, rows[:8], config=_config(epochs=2), batch_sampler=EveryOther(),
                  collate_fn=collate, eval_fn=held_out_loss, select_metric="loss", greater_is_better=False,
                  epoch_callbacks=[records.append])
    assert seen_epochs == [0, 1]
    assert batches_seen[:12] == [[i, i + 1] for i in range(0, 24, 2)]
    assert [r["epoch"] for r in records] == [1, 2] and all("eval_loss" in r for r in records)
    losses = [e["eval_loss"] for e in history.epochs]
    assert history.best_score == min(losses) and history.main_metric == "loss"


def test_predict_on_an_unlabelled_split_returns_no_labels():
    data = load_task("mrpc", ("train", "validation"), max_train_examples=8, max_eval_examples=8,
                     unlabelled=("train",))
    assert "label" not in data["train"].column_names and "label" in data["validation"].column_names
    encoded, _ = tokenize_task(data, load_tokenizer("tiny-bert"), "mrpc", SMOKE.max_length)
    model = load_model("tiny-bert", 2, seed=0)
    logits, labels = predict(model, encoded["train"], mixed_precision="no")
    assert logits.shape == (8, 2) and labels is None
    with pytest.raises(ConfigError, match="labelled split"):
        evaluate(model, encoded["train"], "mrpc", mixed_precision="no")


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    """SIGKILL a run after optimizer step 10 of 18 (mid-epoch 2), resume it from its last
    checkpoint (step 8), and compare with a run that was never interrupted: same weights,
    same metrics."""
    run = lambda *args: subprocess.run([sys.executable, str(WORKER), *map(str, args)],
                                       capture_output=True, text=True)
    whole = run(tmp_path / "whole", tmp_path / "ckpt-whole")
    assert whole.returncode == 0, whole.stderr
    killed = run(tmp_path / "resumed", tmp_path / "ckpt", "--kill-at", 10)
    assert killed.returncode == -9, killed.stderr  # really killed, nothing written at the end
    assert not (tmp_path / "resumed").exists()
    saved = json.loads((latest_checkpoint(tmp_path / "ckpt") / "trainer_state.json").read_text())
    assert saved["global_step"] == 8 and saved["epoch"] == 1 and saved["batch"] == 2
    resumed = run(tmp_path / "resumed", tmp_path / "ckpt", "--resume")
    assert resumed.returncode == 0, resumed.stderr

    a, b = (load_file(str(tmp_path / d / "final.safetensors")) for d in ("whole", "resumed"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ha, hb = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("whole", "resumed"))
    assert ha["epochs"] == hb["epochs"]
    assert [s["loss"] for s in ha["steps"]] == [s["loss"] for s in hb["steps"]]


def test_evaluation_every_n_steps_selects_among_them_and_logs_to_trackers(mrpc):
    """eval_every for large data sets: mid-epoch evaluations join the selection; a tracker
    passed through log_with receives the settings, the losses and the metrics."""
    from accelerate.tracking import GeneralTracker

    class Collect(GeneralTracker):
        name, requires_logging_directory = "collect", False
        logged, settings = [], {}

        def __init__(self):
            super().__init__()

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            Collect.settings = dict(values)

        def log(self, values, step=None, **kwargs):
            Collect.logged.append((step, dict(values)))

    model, history = _run(mrpc, epochs=2, eval_every=2, log_with=[Collect()])  # 6 steps an epoch
    assert [e["step"] for e in history.evaluations] == [2, 4, 6, 8, 10, 12]
    scores = [e["eval_accuracy"] for e in history.evaluations]
    assert history.best_score == max(scores) and history.best["eval_accuracy"] == max(scores)
    assert history.epochs[0]["eval_accuracy"] == history.evaluations[2]["eval_accuracy"]  # step 6 = epoch 1
    assert Collect.settings["batch_size"] == 8
    assert sum("train/loss" in v for _, v in Collect.logged) == 12
    assert [s for s, v in Collect.logged if "eval/accuracy" in v] == [2, 4, 6, 8, 10, 12]


def test_a_mid_epoch_checkpoint_carries_the_training_time_so_far(mrpc, tmp_path):
    """Throughput after a resume counts the time before the interruption too."""
    class Killed(Exception):
        pass

    def kill(state):
        if state["global_step"] == 2:
            raise Killed

    set_seed(0)
    with pytest.raises(Killed):
        fit(load_model("tiny-bert", 2, seed=0), mrpc["train"], mrpc["validation"], task="mrpc",
            config=_config(epochs=1, checkpoint_dir=str(tmp_path), checkpoint_every=2), callbacks=[kill])
    saved = json.loads((latest_checkpoint(tmp_path) / "trainer_state.json").read_text())
    assert saved["global_step"] == 2 and saved["batch"] == 2
    assert saved["history"]["train_seconds"] > 0 and saved["running_tokens"] > 0
