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
    return TrainConfig.from_profile(SMOKE, batch_size=8, progress=False, **changes)


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
    with pytest.raises(CheckpointMismatchError, match="another checkpoint_dir or resume=False"):
        fit(model, mrpc["train"], mrpc["validation"], task="mrpc",
            config=_config(epochs=1, checkpoint_dir=str(tmp_path), resume=True))


def test_bad_settings_raise(mrpc):
    model = load_model("tiny-bert", 2, seed=0)
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        fit(model, mrpc["train"], task="mrpc", config=_config(resume=True))
    with pytest.raises(ConfigError, match="at least one epoch"):
        fit(model, mrpc["train"], task="mrpc", config=_config(epochs=0))


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
