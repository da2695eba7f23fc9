"""The *Contrastive learning* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import pytest

from tlutils.stats import VERDICTS

ARMS = ("unsupervised SimCSE", "supervised SimCSE", "triplet loss")
MAIN = "supervised SimCSE vs random tiny encoder (spearman)"


@pytest.mark.chapter
def test_contrastive_chapter(run_chapter):
    record = run_chapter("traditional/contrastive")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]

    sizes = m["sizes"]
    assert sizes["snli_triplets"] > 2000  # SNLI's validation and test splits give most of them
    assert sizes["train_triplets"] == sizes["train_sentences"] == 32
    assert sizes["train_triplets"] % m["settings"]["batch_size"] == 0  # full batches: no batch of one
    assert sizes["sts_test"] == 64 and sizes["sts_select"] == 64

    # the from-scratch InfoNCE, with and without hard negatives, matches the library
    assert m["demo_check"]["library_error"] < 1e-5 and m["demo_check"]["hard_library_error"] < 1e-5

    runs = m["runs"]
    strong = m["strong"]
    assert set(runs) == {"random tiny encoder", *ARMS, strong["before"], strong["after"]}
    for name, run in runs.items():
        assert -1.0 <= run["spearman"] <= 1.0, name
        assert 0.0 <= run["alignment"] <= 4.0 and run["uniformity"] <= 0.0, name
        assert run["positive_pairs"] > 0, name
    # the smoke profile's "profile model" is the same random tiny encoder, drawn with the same seed
    assert math.isclose(runs[strong["before"]]["spearman"], runs["random tiny encoder"]["spearman"], abs_tol=1e-6)

    for arm, h in m["histories"].items():
        epochs = 1 if arm == strong["after"] else 2  # the profile model's run is one epoch long
        assert h["epochs"] == epochs and h["best_epoch"] in range(1, epochs + 1), arm
        assert len(h["selection_spearman"]) == epochs and 0.0 <= h["final_retrieval"] <= 1.0, arm
        assert h["train_seconds"] > 0 and h["final_train_loss"] >= 0.0, arm

    comparisons = m["comparisons"]
    assert m["main_comparison"] == MAIN and len(comparisons) == 7
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["low"] <= c["difference"] <= c["high"], name
        assert c["method"] == "paired bootstrap", name
        assert math.isclose(c["difference"], c["value_a"] - c["value_b"], abs_tol=1e-12), name
        if c["metric"] == "spearman":
            assert c["n"] == sizes["sts_test"], name
            assert math.isclose(c["value_a"], runs[c["a"]]["spearman"], abs_tol=1e-9), name
            assert math.isclose(c["value_b"], runs[c["b"]]["spearman"], abs_tol=1e-9), name
        if name == MAIN:
            assert c["p_adjusted"] is None and c["family_size"] == 1
        else:
            assert c["p_adjusted"] >= c["p_value"] and c["family_size"] == 6, name
    mrpc = comparisons["MRPC probe: supervised SimCSE vs random tiny encoder (accuracy)"]
    probe = m["mrpc_probe"]
    assert mrpc["n"] == probe["evaluation_pairs"] == 128  # MRPC validation + test, 64 each in smoke
    assert math.isclose(mrpc["value_a"], probe["supervised SimCSE"]["accuracy"], abs_tol=1e-9)
    assert all(isinstance(probe[k]["at_majority_class"], bool) for k in ("supervised SimCSE", "random tiny encoder"))

    seeds = m["main_over_seeds"]  # the smoke profile reruns the main comparison with a second seed
    assert seeds["seeds"] == [0, 1] and seeds["n"] == 2 and seeds["method"] == "paired seed t"
    assert seeds["spearman"]["supervised SimCSE"][0] == runs["supervised SimCSE"]["spearman"]
    assert seeds["verdict"] in VERDICTS

    stages = m["stage_seconds"]
    assert "weak encoder: supervised SimCSE" in stages and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= record["wall_time_s"] + 1e-6
