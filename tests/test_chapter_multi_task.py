"""The *Multi-task learning* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import pytest

from tlutils.stats import VERDICTS

TASKS = ["mrpc", "rte", "stsb", "mnli", "sick", "sick_relatedness"]
MIXINGS = ("proportional", "temperature", "round_robin")


@pytest.mark.chapter
def test_multi_task_chapter(run_chapter):
    record = run_chapter("traditional/multi_task")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]
    assert m["tasks"] == TASKS
    assert m["sizes"]["sick"] == m["sizes"]["sick_relatedness"]  # two tasks on the same pairs
    seeds = m["seeds"]
    assert len(seeds) >= 2

    # the sampler's batches follow the mixing rates: every strategy fills all steps, round-robin evenly
    steps = m["settings"]["steps"]
    for mixing in MIXINGS:
        assert sum(m["mixing_shares"][mixing].values()) == steps and set(m["mixing_shares"][mixing]) == set(TASKS)
    counts = list(m["mixing_shares"]["round_robin"].values())
    assert max(counts) - min(counts) <= 1
    rates = m["mixing_rates_full_sizes"]
    assert all(math.isclose(sum(r.values()), 1.0) for r in rates.values())
    assert rates["T = 1"]["rte"] < rates["T = 2"]["rte"] < rates["T = inf"]["rte"] == pytest.approx(0.2)

    # per-task metrics after every epoch of the joint arm, for every task
    epochs = m["joint_epochs_seed0"]
    assert [e["epoch"] for e in epochs] == list(range(1, m["settings"]["epochs"] + 1))
    for t in TASKS:
        key = f"{t}_pearson" if t in ("stsb", "sick_relatedness") else f"{t}_accuracy"
        assert all(-1.0 <= e[key] <= 1.0 for e in epochs), key
    per_seed = m["per_seed"]
    for arm in ("joint (temperature)", "joint (proportional)", "joint (round_robin)", "single rte", "joint mrpc+rte"):
        assert all(f"{arm} / seed {s}" in per_seed for s in seeds), arm
    assert set(per_seed[f"single rte / seed {seeds[0]}"]) == {"rte_accuracy", "rte_f1", "rte_mcc", "average"}

    # the measured table: every arm scored, no cited number among them
    arms = m["arms"]
    assert {"joint (temperature)", "single-task, same total updates", "single-task, same task updates",
            "joint, then fine-tuned on RTE", "joint MRPC + RTE"} <= set(arms)
    assert all(0.0 <= v <= 1.0 for arm in arms.values() for k, v in arm.items() if "accuracy" in k)
    assert not any(v in (71.1, 83.4, 85.8, 87.5) for arm in arms.values() for v in arm.values())
    assert m["cited"]["rte"] == [71.1, 83.4] and m["cited"]["mrpc"] == [85.8, 87.5]

    # one main comparison (uncorrected), the others Holm-corrected as one family
    main = m["main"]
    assert m["main_comparison"] == "joint vs single rte" and main["p_adjusted"] is None
    assert main["verdict"] in VERDICTS and main["n"] == len(seeds) and main["method"] == "paired seed t"
    comparisons = m["comparisons"]
    assert len(comparisons) >= 12 and comparisons[m["main_comparison"]] == main
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["low"] <= c["difference"] <= c["high"], name
        assert c["sentence"].startswith(f"{c['a']} vs {c['b']}"), name
        if name != m["main_comparison"]:
            assert c["family_size"] == len(comparisons) - 1 and c["p_adjusted"] >= c["p_value"], name
    assert {"forgetting at lr", "joint vs sequential on mrpc", "end to end: rte+mnli vs rte",
            "multi-task then fine-tune vs joint on rte"} <= {k if not k.startswith("forgetting") else "forgetting at lr"
                                                            for k in comparisons}
    e2e = comparisons["end to end: rte+mnli vs rte"]
    assert e2e["method"] == "paired bootstrap" and e2e["n"] == m["sizes"]["rte"]["validation"]
    # the end-to-end arms make the same number of RTE updates; the mix makes as many MNLI updates on top
    steps_e2e = {name: r["steps"] for name, r in m["end_to_end"].items()}
    assert steps_e2e["RTE + MNLI"] == 2 * steps_e2e["RTE alone"]
    assert all(isinstance(r["at_majority_class"], bool) for r in m["end_to_end"].values())

    # forgetting: MRPC accuracy through both phases of the sequential arm
    curves = m["sequential_mrpc_curve"]
    assert len(curves) == 2 * len(seeds) and all(len(c) == 2 * m["settings"]["epochs"] for c in curves.values())

    stages = m["stage_seconds"]
    assert "frozen encoder features" in stages and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= record["wall_time_s"] + 1e-6
