"""The *Terms II* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import pytest

from tlutils.stats import VERDICTS


@pytest.mark.chapter
def test_terms_transfer_chapter(run_chapter):
    record = run_chapter("concepts/terms_transfer")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]

    domain = m["domain_adaptation"]
    assert set(domain["accuracy"]) == {"books", "kitchen"}
    for row in domain["accuracy"].values():
        assert set(row) == {"books", "kitchen"} and all(0.0 <= v <= 1.0 for v in row.values())
    assert 0.0 <= domain["domain_accuracy"] <= 1.0
    assert abs(domain["proxy_a_distance"] - 2 * (1 - 2 * domain["domain_error"])) < 1e-9

    multi = m["multi_task"]
    assert multi["grad_norm"]["mrpc"] > 0 and multi["grad_norm"]["rte"] > 0  # both heads reach the encoder
    assert multi["sum_error"] < 1e-5

    adv = m["adversarial"]
    assert adv["restore_error"] == 0.0
    assert adv["perturbation_norm"] <= 1.0 * (1 + 1e-5)
    grad_curve, random_curve = adv["loss_gradient_direction"], adv["loss_random_direction"]
    assert grad_curve[0] == random_curve[0] == adv["clean_loss"]  # epsilon 0 changes nothing
    assert grad_curve[1] >= adv["clean_loss"]  # a small step along the gradient raises the loss

    grl = m["gradient_reversal"]
    assert grl["forward_error"] < 1e-6 and grl["backward_error"] < 1e-6 and grl["layer_error"] < 1e-6
    schedule = [grl["schedule"][k] for k in ("0.0", "0.1", "0.25", "0.5", "1.0")]
    assert schedule[0] == 0.0 and schedule == sorted(schedule) and schedule[-1] < 1.0

    st = m["self_training"]
    assert st["thresholds"] == sorted(st["thresholds"])
    assert st["counts"] == sorted(st["counts"], reverse=True)  # non-increasing with the threshold
    assert st["counts"][0] == st["pool"]  # threshold 0.5 keeps every binary prediction
    assert all(0.0 <= a <= 1.0 for a in st["retrained_accuracy"])

    ft = m["fine_tuning"]
    assert ft["feature_extraction_encoder_change"] == 0.0
    assert ft["relative_change"]["feature extraction"]["head"] > 0
    assert all(v > 0 for v in ft["relative_change"]["fine-tuning"].values())

    drop = m["dropout"]
    assert drop["train_mode_outputs_differ"] is True and drop["eval_mode_outputs_identical"] is True
    assert abs(drop["scaled_value"] - 1 / (1 - 0.25)) < 1e-6
    assert [r["dropout"] for r in drop["runs"]] == [0.0, 0.1, 0.3]
    assert drop["train_pairs"] == 32 and drop["eval_pairs"] == 64 and drop["epochs"] == 3
    for run in drop["runs"]:
        assert abs(run["gap"] - (run["train_accuracy"] - run["validation_accuracy"])) < 1e-9
        assert run["train_log_likelihood"] <= 0 and run["pairs_per_second"] > 0
        assert isinstance(run["validation_at_majority_class"], bool)

    con = m["contrastive"]
    assert con["view_cosine_min"] < 1.0  # two dropout passes give two different views
    assert 0 <= con["aligned_loss"] < con["shuffled_loss"]  # the partner view is the easiest to pick

    tri = m["triplet"]
    active = tri["fraction_active"]
    assert active == sorted(active) and all(0.0 <= a <= 1.0 for a in active)
    assert tri["margins"][0] == 0.0 and tri["triplets"] > 0

    # every comparison carries a verdict: the main one (domain shift) and the Holm families
    comparisons = m["comparisons"]
    assert m["main_comparison"] == "in-domain vs cross-domain probe (accuracy)"
    assert len(comparisons) == 1 + 6 + 2
    main = comparisons[m["main_comparison"]]
    assert main["p_adjusted"] is None and main["n"] == 2 * 64
    assert abs(main["value_a"] - domain["in_domain"]) < 1e-9
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["low"] <= c["high"], name
        if name != m["main_comparison"]:
            assert c["p_adjusted"] >= c["p_value"] and c["family_size"] in (2, 6), name
