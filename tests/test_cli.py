"""The command line, as a reader uses it from a fresh clone: train in the smoke profile, save,
reload, evaluate and predict MRPC; --help for every command."""

import json
import subprocess
import sys

import pytest
import torch

from tlutils.models import load_model, load_tokenizer, predict_texts, save_model, saved_task


def tlutils(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "tlutils", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    summary = json.loads(tlutils("train", "--task", "mrpc", "--profile", "smoke", "--output", out).stdout)
    return out, summary


def test_train_saves_a_model_history_and_checkpoints(trained):
    out, summary = trained
    assert summary["task"] == "mrpc" and summary["profile"] == "smoke"
    assert (out / "model" / "model.safetensors").is_file() and (out / "checkpoints" / "checkpoint").is_dir()
    assert json.loads((out / "history.json").read_text())["epochs"]
    assert saved_task(out / "model") == "mrpc"


def test_evaluate_reproduces_the_training_runs_score(trained):
    out, summary = trained
    metrics = json.loads(tlutils("evaluate", "--model", out / "model", "--max-eval", 64).stdout)
    assert metrics["examples"] == 64  # the smoke profile's validation subset (same seed)
    assert metrics["accuracy"] == pytest.approx(summary["best"]["eval_accuracy"], abs=1 / 64 + 1e-9)


def test_predict_a_pair_and_a_jsonl_file(trained, tmp_path):
    out, _ = trained
    row = json.loads(tlutils("predict", "--model", out / "model", "--pair", "He left.", "He went away.").stdout)
    assert row["label"] in ("equivalent", "not_equivalent")
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"text_a": "A cat sat.", "text_b": "A cat was sitting."}\n{"text_a": "Yes.", "text_b": "No."}\n')
    rows = [json.loads(x) for x in tlutils("predict", "--model", out / "model", "--jsonl", pairs).stdout.splitlines()]
    assert len(rows) == 2 and all(set(r["probabilities"]) == {"equivalent", "not_equivalent"} for r in rows)


def test_resume_after_a_finished_run_trains_nothing_more(trained):
    out, summary = trained
    again = json.loads(tlutils("train", "--task", "mrpc", "--profile", "smoke", "--output", out, "--resume").stdout)
    assert again["best"] == summary["best"]


def test_bad_input_gets_a_one_line_error(tmp_path):
    done = tlutils("predict", "--model", tmp_path, "--pair", "a", "b", check=False)
    assert done.returncode != 0 and "not written by `python -m tlutils train`" in done.stderr
    done = tlutils("train", "--task", "nope", "--output", tmp_path, check=False)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "error: Unknown task 'nope'" in done.stderr


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_every_command_has_help_with_an_example(command):
    assert "example: python -m tlutils" in tlutils(command, "--help").stdout


def test_save_model_round_trip_keeps_logits_and_label_names(tmp_path):
    model, tokenizer = load_model("tiny-bert", 3, seed=0), load_tokenizer("tiny-bert")
    save_model(model, tokenizer, tmp_path / "m", "snli")
    again = load_model(str(tmp_path / "m"))
    assert again.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    batch = tokenizer(["A man sleeps."], ["Someone rests."], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, again(**batch).logits, atol=1e-6)
    [row] = predict_texts(again, load_tokenizer(str(tmp_path / "m")), [("A man sleeps.", "Someone rests.")])
    assert row["label"] in ("entailment", "neutral", "contradiction")
