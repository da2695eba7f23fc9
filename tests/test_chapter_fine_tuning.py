"""The *Fine-tuning strategies* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math
import statistics

import pytest

from tlutils.stats import VERDICTS

STRATEGY_FIELDS = {"accuracy", "f1", "mcc", "predicted_equivalent", "at_majority_class", "lr",
                   "trainable_parameters", "trainable_fraction", "grad_and_adam_mb", "seconds",
                   "pairs_per_second", "peak_memory_mb"}


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
        assert row["pairs_per_second"] > 0 and isinstance(row["at_majority_class"], bool)
        assert 0 < row["trainable_parameters"] <= total
        assert math.isclose(row["trainable_fraction"], row["trainable_parameters"] / total)
        assert math.isclose(row["grad_and_adam_mb"], 12 * row["trainable_parameters"] / 2**20)
    trainable = {name: row["trainable_parameters"] for name, row in strategies.items()}
    assert trainable["head only"] < trainable[top] < trainable["full"] == total
    assert trainable["lora"] < trainable["full"] and trainable["head only"] < trainable["lora"]
    assert trainable["head only"] == 128 * 2 + 2  # the tiny BERT's classifier: Linear(128, 2)
    # LoRA: r (d_in + d_out) per adapted query/value matrix (2 layers x 2, r = 8, H = 128), plus the head
    assert trainable["lora"] == 2 * 2 * 8 * (128 + 128) + trainable["head only"]

    # one main comparison (paired, on the scored pairs) and Holm-corrected further ones
    comparisons = m["comparisons"]
    assert m["main_comparison"] == "full_vs_head_only"
    main = comparisons["full_vs_head_only"]
    assert (main["a"], main["b"]) == ("full", "head only") and main["p_adjusted"] is None
    assert main["n"] == m["scored_examples"] and main["method"] == "paired bootstrap" and main["metric"] == "mcc"
    further = {name for name in comparisons if name.startswith("full_vs_") and name != "full_vs_head_only"}
    assert len(further) == len(strategies) - 2
    for name in further:
        assert comparisons[name]["family_size"] == len(further) and comparisons[name]["p_adjusted"] is not None
    assert comparisons["seeds_full_vs_head_only"]["method"] == "paired seed t"
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["low"] <= c["high"], name
        assert c["sentence"].startswith(f"{c['a']} vs {c['b']}"), name
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
    assert len(sweep["accuracy"]) == len(sweep["mcc"]) == len(sweep["at_majority_class"]) == len(sweep["learning_rates"])
    assert any(math.isclose(lr, strategies["full"]["lr"]) for lr in sweep["learning_rates"])
    for acc, floor in zip(sweep["accuracy"], sweep["at_majority_class"]):
        assert acc is None or 0.0 <= acc <= 1.0  # None: the run diverged
        assert (floor is None) == (acc is None)

    seeds = m["seeds"]
    assert "full" in seeds and len(seeds) >= 2
    full_lr = sweep["learning_rates"].index(next(lr for lr in sweep["learning_rates"]
                                                 if math.isclose(lr, strategies["full"]["lr"])))
    for name, s in seeds.items():
        assert len(s["accuracy"]) == len(s["mcc"]) == len(s["seeds"]) == len(set(s["seeds"])) == s["n"] >= 3
        assert s["metric"] == "mcc"  # the interval is of the metric the comparisons test
        assert math.isclose(s["mean"], statistics.fmean(s["mcc"]))
        assert math.isclose(s["sd"], statistics.stdev(s["mcc"]), abs_tol=1e-12)
        assert s["low"] <= s["mean"] <= s["high"]
    # seed SEED of full is the table's run rescored on the validation pairs, as in the sweep
    assert seeds["full"]["accuracy"][0] == sweep["accuracy"][full_lr]

    assert m["train_examples"] == 32 and m["validation_examples"] == 32
    assert m["scored_splits"] == ["validation", "test"] and m["scored_examples"] == 64
    assert 0.3 <= m["majority_baseline"] <= 0.9 and 0.3 <= m["validation_majority_baseline"] <= 0.9
