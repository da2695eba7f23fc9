"""The *Many sources, one target* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tlutils.stats import VERDICTS

ARMS = ("pooled", "similarity-weighted", "MDAN", "MoE-Avg", "MoE-Att")


@pytest.mark.chapter
def test_multi_source_chapter(run_chapter):
    record = run_chapter("diversity/multi_source")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]
    sizes, seeds = m["sizes"], m["sizes"]["seeds"]
    assert len(seeds) >= 2 and sizes["rows_per_domain"] == {"train": 32, "validation": 32, "test": 32}
    targets = [f"{task}/{t}" for task, ts in sizes["targets"].items() for t in ts]
    assert set(m["results"]) == set(targets) and any(t.startswith("amazon/") for t in targets)

    # one row per target: every arm, the oracle and the single-source context, one accuracy per seed
    for target in targets:
        row = m["results"][target]
        assert set(row) == {*ARMS, "oracle", "best single source", "worst single source"}
        for arm, v in row.items():
            assert len(v["accuracy"]) == len(seeds) and all(0.0 <= a <= 1.0 for a in v["accuracy"])
            assert math.isclose(v["mean"], float(np.mean(v["accuracy"])), abs_tol=1e-12) and v["low"] <= v["mean"] <= v["high"]
        assert row["best single source"]["mean"] >= row["worst single source"]["mean"]
        assert row["best single source"]["source"] != target.split("/")[1]  # the target is never a source
        weights = m["similarity"][target]["weights"]
        assert target.split("/")[1] not in weights and math.isclose(sum(weights.values()), 1.0)
        assert all(w > 0 for w in weights.values())
    assert set(m["at_majority_class"]) == {f"{t}/{arm}" for t in targets for arm in (*ARMS, "oracle")}

    # the main comparison (on rows, uncorrected), the same over seeds, the further ones Holm-corrected
    comparisons = m["comparisons"]
    main = comparisons[m["main_comparison"]]
    assert m["main_comparison"] == "MoE-Att (Amazon, all targets) vs pooled (Amazon, all targets)"
    amazon_rows = sum(sizes["target_test"][t] for t in targets if t.startswith("amazon/"))
    assert main["p_adjusted"] is None and main["method"] == "paired bootstrap" and main["n"] == amazon_rows
    over = m["main_over_seeds"]
    assert over["method"] == "paired seed t" and over["n"] == len(seeds) and over["p_adjusted"] is None
    family = 4 + 3 + 4 * len(targets)
    assert len(comparisons) == 1 + family
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["low"] <= c["difference"] <= c["high"], name
        assert c["sentence"].startswith(f"{c['a']} vs {c['b']}"), name
        if name != m["main_comparison"]:
            assert c["family_size"] == family and c["p_adjusted"] >= c["p_value"], name
    wa = m["wright_augenstein"]
    assert set(wa["moe_vs_pooled"]) == {"MoE-Att", "MoE-Avg"} and wa["sentence"].startswith("Wright & Augenstein")
    assert all(v in wa["sentence"] for v in wa["moe_vs_pooled"].values())

    # the gate: weights per source, a shared expert's share
    assert all(0.0 <= w <= 1.0 for w in m["gate"]["mean_weights"].values())
    assert 0.0 <= m["gate"]["shared_expert"]["mean_weight"] <= 1.0

    # diversity: every subset of every size at a fixed number of rows, similar vs diverse pairs
    diversity = m["diversity"]
    assert diversity["comparisons"] and all(c["verdict"] in VERDICTS for c in diversity["comparisons"].values())
    for task in ("amazon", "mnli"):
        d = diversity[task]
        assert d["similar"] != d["diverse"] and len(d["similar"]) == len(d["diverse"]) == 2
        assert d["target"] not in d["similar"] + d["diverse"]
        k = max(p["size"] for p in d["points"])
        assert k == (3 if task == "amazon" else 4)
        subsets = {tuple(p["sources"]) for p in d["points"]}
        assert len(subsets) == 2 ** k - 1 and all(d["target"] not in s for s in subsets)
        assert all(len(set(p["sources"])) == p["size"] for p in d["points"])
        assert set(d["curve"]) == {str(s) for s in range(1, k + 1)}

    # the end-to-end run through fit (smoke: one target)
    e2e = m["e2e"]
    assert e2e["run"] and set(e2e["results"]) == set(e2e["settings"]["targets"])
    for t, arms in e2e["results"].items():
        assert set(arms) == {"pooled", "MoE-Avg", "MoE-Att"} and all(0.0 <= a["accuracy"] <= 1.0 for a in arms.values())
    assert len(e2e["comparisons"]) == 2 * len(e2e["results"])

    stages = m["stage_seconds"]
    assert "arms: heads on cached features" in stages and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= record["wall_time_s"] + 1e-6
