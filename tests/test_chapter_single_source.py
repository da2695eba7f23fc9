"""The *Adapting to an unseen domain* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tlutils.methods.domain import grl_coeff
from tlutils.stats import VERDICTS

ARMS = ("source-only", "DANN", "oracle")


@pytest.mark.chapter
def test_single_source_chapter(run_chapter):
    record = run_chapter("diversity/single_source")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]
    targets, seeds = m["targets"], m["seeds"]
    assert targets == ["dvd"] and len(seeds) >= 2

    # the protocol: three sources per target, the target's text unlabelled, sizes from per_domain_sizes
    rows = m["rows_per_domain"]
    for t in targets:
        sizes = m["sizes"][t]
        assert sizes["source_train"] == 3 * rows["train"] and sizes["source_validation"] == 3 * rows["validation"]
        assert sizes["target_unlabelled"] == rows["train"] and sizes["target_test"] == rows["test"]

    # the from-scratch step: the reversal and the schedule
    scratch = m["from_scratch"]
    assert scratch["reversal_error"] < 1e-6 and math.isclose(scratch["lambda"], grl_coeff(0.3))
    assert scratch["schedule"]["0.0"] == 0.0 and scratch["schedule"]["1.0"] > 0.999

    # lambda: swept and chosen on the sources' validation accuracy
    sweep = m["sweep"]
    for t in targets:
        options = {float(k.split(" / ")[1]): v for k, v in sweep.items() if k.startswith(f"{t} / ")}
        assert set(options) == set(m["settings"]["sweep"])
        best = max(v["source_validation"] for v in options.values())
        assert options[m["chosen_lambda"][t]]["source_validation"] == best

    # every arm, every target, one accuracy per seed; the DANN run of the first seed is the sweep's chosen run
    for arm in ARMS:
        for t in targets:
            row = m["accuracy"][f"{arm} / {t}"]
            assert len(row["accuracy"]) == len(seeds) and all(0 <= a <= 1 for a in row["accuracy"])
            assert math.isclose(row["mean"], float(np.mean(row["accuracy"])), abs_tol=1e-12)
    for t in targets:
        assert m["accuracy"][f"DANN / {t}"]["accuracy"][0] == sweep[f"{t} / {m['chosen_lambda'][t]}"]["accuracy"]
        assert set(m["proxy_a_distance"][t]) == {"frozen", "source-only", "DANN"}
        assert all(-2 <= v <= 2 for v in m["proxy_a_distance"][t].values())
    assert all(isinstance(v, bool) for v in m["at_majority_class"].values())
    assert len(m["at_majority_class"]) >= len(ARMS) * len(targets) * len(seeds)

    # DAPT: a new head only, a budget far from the paper's, a held-out loss before and after
    dapt = m["dapt"]
    assert dapt["new_parameters"] and all(not p.startswith("bert.") for p in dapt["new_parameters"])
    budget = dapt["budget"]
    assert 0 < budget["tokens"] < budget["paper_tokens_at_most"] and budget["paper_sequences"] == 12_500 * 2_048
    assert dapt["held_out_before"]["mlm_loss"] > 0 and dapt["held_out_after"]["mlm_perplexity"] > 1
    assert set(dapt["accuracy"]) == {"original", "DAPT"} and all(len(v) == len(seeds) for v in dapt["accuracy"].values())

    # one main comparison over targets and seeds, the further ones Holm-corrected as one family
    comparisons = m["comparisons"]
    main = comparisons[m["main_comparison"]]
    assert m["main_comparison"] == "DANN vs source-only (all targets and seeds)"
    assert main["method"] == "paired seed t" and main["n"] == len(targets) * len(seeds) and main["p_adjusted"] is None
    mean_dann = np.mean([a for t in targets for a in m["accuracy"][f"DANN / {t}"]["accuracy"]])
    assert math.isclose(main["value_a"], mean_dann, abs_tol=1e-12)
    family = 3 * len(targets) + 3
    assert len(comparisons) == 1 + family
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["low"] <= c["difference"] <= c["high"], name
        if name != m["main_comparison"]:
            assert c["family_size"] == family and c["p_adjusted"] >= c["p_value"], name
        if "test rows" in name:
            assert c["method"] == "paired bootstrap" and c["n"] == m["sizes"][targets[0]]["target_test"]

    # Wright & Augenstein's half: the verdicts the sentence was made from
    wa = m["wright_augenstein"]
    representation = comparisons["DANN vs source-only features: domain error (all targets and seeds)"]
    assert representation["n"] == len(targets) * len(seeds) and representation["metric"] == "domain-classifier error"
    assert wa["representation_changed"] == representation["verdict"]
    assert wa["representation_half_held"] == (representation["verdict"] == "A better")
    assert wa["accuracy_half_held"] == (main["verdict"] == "not resolved"
                                        and all(v == "not resolved" for v in wa["accuracy_moved"].values()))

    # the end-to-end path (smoke runs it tiny; small shows the record)
    e2e = m["e2e"]
    assert e2e is not None and set(e2e["comparisons"]) == set(targets)
    for t in targets:
        assert len(e2e["accuracy"][f"DANN / {t}"]) == len(e2e["accuracy"][f"source-only / {t}"]) == e2e["settings"]["seeds"]
        assert e2e["comparisons"][t]["verdict"] in VERDICTS

    # cited numbers kept apart from the measured ones
    cited = m["cited"]["ganin2016_table1"]
    assert {"source → target (cited)", "DANN, raw features", "DANN, mSDA features"} == set(cited[0])
    assert next(r for r in cited if r["source → target (cited)"] == "books → dvd")["DANN, raw features"] == 0.784

    stages = m["stage_seconds"]
    assert "DAPT: continued masked-LM pretraining" in stages and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= record["wall_time_s"] + 1e-6
