"""The *What ALBERT, RoBERTa and ELECTRA changed* chapter runs in the smoke profile and its
records hold together: one baseline, every switch a recipe change, paired held-out losses on one
set of masks, equal-compute bookkeeping, Holm over the further comparisons."""

from __future__ import annotations

import math

import pytest

from tlutils.stats import VERDICTS

BASE = "BERT (MLM)"


@pytest.mark.chapter
def test_recipes_chapter(run_chapter):
    record = run_chapter("pretrained/recipes")
    assert record["profile"] == "smoke"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]
    arms, recipes = m["arms"], m["recipes"]
    assert arms[0] == BASE and "ELECTRA" in arms and len(arms) >= 8

    # every switch changes the baseline recipe, and only in the fields it names
    base = recipes[BASE]
    assert base["family"] == "bert" and base["objective"] == "mlm" and base["mixed_precision"] == "no"
    assert recipes["ALBERT shared"]["share_layers"] and recipes["ALBERT factorised"]["embedding_size"] < base["hidden"]
    assert recipes["static (subset)"]["masking"] == "static"
    assert recipes["static (subset)"]["max_train_documents"] == recipes["dynamic (subset)"]["max_train_documents"]
    big = recipes["batch x4"]
    assert big["batch_size"] * big["steps"] == base["batch_size"] * base["steps"]  # equal tokens
    for arm in arms:
        if arm not in ("ELECTRA", "batch x4"):
            assert recipes[arm]["steps"] == base["steps"], arm

    # ELECTRA at equal FLOPs: fewer steps, planned compute not above the baseline's
    compute = m["compute"]
    assert recipes["ELECTRA"]["steps"] <= base["steps"]
    assert compute["ELECTRA"]["training PFLOPs (planned)"] <= compute[BASE]["training PFLOPs (planned)"] * (1 + 1e-9)
    assert math.isclose(compute["ALBERT shared"]["GFLOPs per token"], compute[BASE]["GFLOPs per token"], rel_tol=0.05)

    # parameters: the ALBERT formula equals the count; sharing and factorising store fewer
    p = m["parameters"]
    for arm in ("ALBERT factorised", "ALBERT shared"):
        assert p[arm]["ALBERT formula"] == p[arm]["encoder parameters (counted)"], arm
        assert p[arm]["encoder parameters (counted)"] < p[BASE]["encoder parameters (counted)"], arm

    # held-out: re-scored per sequence on the run's own masks (equals its recorded loss)
    held = m["heldout"]
    assert held["sequences"] > 0 and held["masked_positions"] > held["sequences"]
    for arm, loss in held["loss"].items():
        assert math.isclose(loss, held["recorded_loss"][arm], rel_tol=1e-4), arm
    assert "ELECTRA" not in held["loss"]  # the discriminator has no MLM head: compared downstream

    # pair tasks: balanced held-out pairs of both kinds
    assert set(m["pairs"]["sizes"]) == {"nsp", "sop"} and min(m["pairs"]["sizes"].values()) > 0
    assert all(0 <= a <= 1 for a in m["pairs"]["accuracy"].values())

    # ELECTRA: RTD accuracy and the all-original floor
    e = m["electra"]
    assert 0 <= e["final"]["rtd_accuracy"] <= 1 and 0 < e["rtd_floor"] <= 1
    assert e["curve"]["step"][0] == 0 and e["curve"]["step"][-1] == e["steps"]

    # verdicts: the main comparison alone, the rest one Holm family
    comparisons = m["comparisons"]
    main = comparisons[m["main_comparison"]]
    assert main["p_adjusted"] is None and main["verdict"] in VERDICTS
    further = [c for k, c in comparisons.items() if k != m["main_comparison"]]
    assert further and all(c["family_size"] == len(further) and c["p_adjusted"] >= c["p_value"] for c in further)
    assert f"ELECTRA vs {BASE}: Amazon accuracy" in comparisons
    assert m["downstream"]["accuracy"].keys() == m["downstream"]["at_majority_class"].keys()
    assert m["stage_seconds"]
