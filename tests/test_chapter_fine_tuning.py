"""The *Fine-tuning strategies* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math
import statistics

import pytest

STRATEGY_FIELDS = {"accuracy", "f1", "mcc", "predicted_equivalent", "lr", "trainable_parameters",
                   "trainable_fraction", "grad_and_adam_mb", "seconds", "peak_memory_mb"}


@pytest.mark.chapter
def test_fine_tuning_chapter(run_chapter):
    record = run_chapter("traditional/fine_tuning")
    assert record["chapter"] == "fine_tuning"
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]
    total = m["total_parameters"]

    strategies = m["strategies"]
    top = f"top-{m['top_k']}"
    assert list(strategies) == ["head only", top, "full", "gradual unfreezing", "layer-wise lr decay", "lora"]
    for name, row in strategies.items():
        assert set(row) == STRATEGY_FIELDS, name
        for key in ("accuracy", "f1", "predicted_equivalent"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        assert -1.0 <= row["mcc"] <= 1.0
        assert row["lr"] > 0 and row["seconds"] > 0 and row["peak_memory_mb"] > 0
        assert 0 < row["trainable_parameters"] <= total
        assert math.isclose(row["trainable_fraction"], row["trainable_parameters"] / total)
        assert math.isclose(row["grad_and_adam_mb"], 12 * row["trainable_parameters"] / 2**20)
    trainable = {name: row["trainable_parameters"] for name, row in strategies.items()}
    assert trainable["head only"] < trainable[top] < trainable["full"] == total
    assert trainable["lora"] < trainable["full"] and trainable["head only"] < trainable["lora"]
    assert trainable["head only"] == 128 * 2 + 2  # the tiny BERT's classifier: Linear(128, 2)
    # gradual unfreezing ends with everything trainable; layer-wise decay trains everything
    assert trainable["gradual unfreezing"] == trainable["layer-wise lr decay"] == total
    assert 1 <= m["unfreeze_every"] <= m["steps_per_run"]

    change = m["layer_change"]
    assert set(change) == {"full", "layer-wise lr decay"}
    assert all(v > 0 for v in change["full"].values())  # every group moves in full fine-tuning
    assert change["layer-wise lr decay"]["embeddings"] < change["full"]["embeddings"]  # smaller rate, smaller step

    sweep = m["lr_sweep"]
    assert sweep["strategy"] == "full"
    assert sweep["learning_rates"] == sorted(sweep["learning_rates"]) and len(sweep["learning_rates"]) >= 3
    assert len(sweep["accuracy"]) == len(sweep["mcc"]) == len(sweep["learning_rates"])
    assert any(math.isclose(lr, strategies["full"]["lr"]) for lr in sweep["learning_rates"])
    for lr, acc in zip(sweep["learning_rates"], sweep["accuracy"]):
        assert acc is None or 0.0 <= acc <= 1.0  # None: the run diverged
        if math.isclose(lr, strategies["full"]["lr"]):
            assert acc == strategies["full"]["accuracy"]  # the table's run, reused

    seeds = m["seeds"]
    assert "full" in seeds and len(seeds) >= 2
    for name, s in seeds.items():
        assert len(s["accuracy"]) == len(s["seeds"]) == len(set(s["seeds"])) >= 3
        assert s["accuracy"][0] == strategies[name]["accuracy"]  # seed SEED is the table's run
        assert math.isclose(s["mean"], statistics.fmean(s["accuracy"]))
        assert math.isclose(s["sd"], statistics.stdev(s["accuracy"]), abs_tol=1e-12)

    assert m["train_examples"] == 32 and m["eval_examples"] == 32
    assert 0.3 <= m["majority_baseline"] <= 0.9
