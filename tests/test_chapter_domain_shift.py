"""The *Measuring domain shift* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tlutils.data import get_task
from tlutils.stats import VERDICTS

TASKS = ("amazon", "mnli")


@pytest.mark.chapter
def test_domain_shift_chapter(run_chapter):
    record = run_chapter("diversity/domain_shift")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]
    domains = {task: list(get_task(task).domains) for task in TASKS}
    assert m["sizes"]["domains"] == domains
    assert m["sizes"]["per_domain"] == {"train": 32, "validation": 32, "test": 32}

    # the protocol: the target's training text comes without labels; the oracle has the same rows
    protocol = m["protocol"]
    assert protocol["target"] not in protocol["sources"] and len(protocol["sources"]) == 3
    assert "label" not in protocol["target_unlabelled_columns"] and "text_a" in protocol["target_unlabelled_columns"]
    assert protocol["oracle_rows"] == 32

    comparisons = m["comparisons"]
    for task in TASKS:
        ds = domains[task]
        acc, drops = m["accuracy"][task], m["drops"][task]
        for s in ds:
            assert m["head_selection"][task][s]["best_epoch"] >= 1
            for t in ds:
                assert 0.0 <= acc[s][t] <= 1.0
                assert math.isclose(drops[s][t], acc[t][t] - acc[s][t], abs_tol=1e-12)  # drop = diagonal - cell
                assert isinstance(m["at_majority_class"][task][f"{s} -> {t}"], bool)
        # every off-diagonal cell has its paired comparison, on the target's test rows
        for s in ds:
            for t in ds:
                if s == t:
                    continue
                c = comparisons[m["cells"][task][f"{s} -> {t}"]]
                assert c["verdict"] in VERDICTS and c["n"] == 32 and c["method"] == "paired bootstrap"
                assert math.isclose(c["value_a"], acc[t][t], abs_tol=1e-12)
                assert math.isclose(c["value_b"], acc[s][t], abs_tol=1e-12)
        for which in ("largest", "smallest"):
            e = m["extremes"][task][which]
            assert math.isclose(e["drop"], drops[e["source"]][e["target"]], abs_tol=1e-12)
        off = [drops[s][t] for s in ds for t in ds if s != t]
        assert m["extremes"][task]["largest"]["drop"] == max(off) and m["extremes"][task]["smallest"]["drop"] == min(off)

        # proxy A-distances: every unordered pair, 2(1 - 2 error), inside its interval
        pad = m["proxy_a_distance"][task]
        assert len(pad) == len(ds) * (len(ds) - 1) // 2
        for r in pad.values():
            assert math.isclose(r["proxy_a_distance"], 2 * (1 - 2 * r["domain_error"]), abs_tol=1e-12)
            assert r["low"] <= r["proxy_a_distance"] <= r["high"] and r["n"] == 64
        # vocabulary: every ordered pair, Jaccard symmetric
        vocab = m["vocabulary"][task]
        assert len(vocab) == len(ds) * (len(ds) - 1)
        for key, v in vocab.items():
            s, t = key.split(" -> ")
            assert 0.0 <= v["target_coverage"] <= 1.0
            assert v["jaccard_top_k"] == vocab[f"{t} -> {s}"]["jaccard_top_k"]
        # correlations over the unordered pairs, honest about their number
        for r in m["correlations"][task].values():
            assert r["n"] == len(pad) and r["verdict"] in ("positive", "negative", "not resolved")
            assert (r["rho"] is None) == (r["p_value"] is None)
        # the table the next chapters cite: each target's closest source, a different domain
        closest = m["closest_source"][task]
        assert set(closest) == set(ds) and all(s != t and s in ds for t, s in closest.items())
        for t, s in closest.items():
            key = f"{s}|{t}" if f"{s}|{t}" in pad else f"{t}|{s}"
            others = [pad[k]["proxy_a_distance"] for k in pad if t in k.split("|")]
            assert pad[key]["proxy_a_distance"] == min(others)
        hindsight = m["best_source_in_hindsight"][task]
        assert all(acc[hindsight[t]][t] == max(acc[s][t] for s in ds if s != t) for t in ds)
        assert len(m["pca_explained"][task]) == 2 and sum(m["pca_explained"][task]) <= 1.0 + 1e-9

    # one main comparison (uncorrected), the further ones Holm-corrected as one family
    main = comparisons[m["main_comparison"]]
    assert m["main_comparison"] == "in-domain (amazon) vs cross-domain (amazon)"
    assert main["p_adjusted"] is None and main["n"] == 4 * 32 and main["verdict"] in VERDICTS
    in_domain = np.mean([m["accuracy"]["amazon"][t][t] for t in domains["amazon"]])
    assert math.isclose(main["value_a"], in_domain, abs_tol=1e-12)
    family = 1 + sum(len(d) * (len(d) - 1) for d in domains.values())
    assert len(comparisons) == 1 + family
    for name, c in comparisons.items():
        assert c["low"] <= c["difference"] <= c["high"], name
        if name != m["main_comparison"]:
            assert c["family_size"] == family and c["p_adjusted"] >= c["p_value"], name
    near_far = m["closest_vs_farthest"]
    assert len(near_far) == sum(len(d) for d in domains.values())
    assert all(c["family_size"] == len(near_far) and c["verdict"] in VERDICTS for c in near_far.values())

    stages = m["stage_seconds"]
    assert "encoding every domain (frozen encoder, cached)" in stages and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= record["wall_time_s"] + 1e-6
