"""The *BERT* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tlutils.checkpoints import CITED
from tlutils.stats import VERDICTS

ARMS = ("pretrained miniature", "random miniature", "MiniLM")


@pytest.mark.chapter
def test_bert_chapter(run_chapter):
    record = run_chapter("pretrained/bert")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]
    seeds = m["seeds"]
    assert len(seeds) >= 2

    # 80/10/10 on a real batch, no special token chosen
    masking = m["masking"]
    assert masking["chosen_special_tokens"] == 0 and masking["n_eligible"] > 1000
    assert abs(masking["chosen"] - 0.15) < 0.03
    assert abs(masking["mask"] - 0.8) < 0.06 and abs(masking["random"] - 0.1) < 0.05
    assert math.isclose(masking["mask"] + masking["random"] + masking["unchanged"], 1.0, abs_tol=1e-9)

    # NSP pairs: balanced, IsNext from the same document, NotNext from another row
    nsp = m["nsp"]
    assert nsp["pairs"] > 100 and abs(nsp["not_next_share"] - 0.5) < 0.01
    assert nsp["is_next_from_same_document"] and nsp["not_next_from_other_row"]

    # the heads: (B, T, V), (B, 2), (M, V)
    heads = m["heads"]
    B, T, V = heads["prediction_logits"]
    assert heads["seq_relationship_logits"] == [B, 2] and V == m["corpus"]["vocabulary"]
    assert heads["masked_positions_only"][1] == V and heads["masked_positions_only"][0] < B * T

    # the pretraining budget and its curve (step 0, every snapshot, the final step)
    pre = m["pretraining"]
    assert pre["steps"] == m["sizes"]["pretrain"]["steps"] and pre["trained_tokens"] > 0 and pre["tokens_per_second"] > 0
    steps = [row["step"] for row in pre["curve"]]
    every = m["sizes"]["pretrain"]["snapshot_every"]
    assert steps == list(range(0, pre["steps"] + 1, every))
    assert all(0 <= row["held-out NSP accuracy"] <= 1 and row["held-out MLM loss"] > 0 for row in pre["curve"])
    assert pre["curve"][0]["held-out MLM loss"] > pre["curve"][-1]["held-out MLM loss"] - 0.5

    # three arms, one accuracy per seed; the gain curve starts at the random arm and ends at the pretrained one
    for arm in ARMS:
        acc = m["accuracy"][arm]
        assert len(acc["accuracy"]) == len(seeds) and math.isclose(acc["mean"], float(np.mean(acc["accuracy"])))
    curve = m["gain_curve"]
    assert sorted(int(k) for k in curve) == steps
    assert curve["0"][0] == m["accuracy"]["random miniature"]["accuracy"][0]
    assert curve[str(pre["steps"])][0] == m["accuracy"]["pretrained miniature"]["accuracy"][0]
    assert all(isinstance(v, bool) for v in m["at_majority_class"].values())
    assert len(m["at_majority_class"]) == len(ARMS) * len(seeds)

    # one main comparison over seeds, the further ones Holm-corrected as one family
    comparisons = m["comparisons"]
    main = comparisons[m["main_comparison"]]
    assert m["main_comparison"] == "pretrained vs random miniature (Amazon, seeds)"
    assert main["method"] == "paired seed t" and main["n"] == len(seeds) and main["p_adjusted"] is None
    assert math.isclose(main["value_a"], m["accuracy"]["pretrained miniature"]["mean"])
    assert len(comparisons) == 6
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS and c["low"] <= c["difference"] <= c["high"], name
        if name != m["main_comparison"]:
            assert c["family_size"] == 5 and c["p_adjusted"] >= c["p_value"], name
    mlm = comparisons["held-out MLM loss: final vs random weights (same masks)"]
    assert mlm["n"] == pre["heldout"]["mlm_positions"] and mlm["method"] == "paired bootstrap"
    assert math.isclose(-mlm["value_a"], pre["curve"][-1]["held-out MLM loss"], rel_tol=1e-6)
    assert comparisons["held-out NSP accuracy: final vs random weights (same pairs)"]["n"] == pre["heldout"]["nsp_pairs"]
    assert len(m["findings"]) == 4

    # real checkpoints: cited only on a CPU, never presented as measured
    assert m["checkpoints_measured"] is None
    assert m["checkpoints_cited"] == CITED
    assert m["cited_devlin_table5"][1]["MRPC (acc)"] == 86.5

    stages = m["stage_seconds"]
    assert "pretraining (or the cached run)" in stages and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= record["wall_time_s"] + 1e-6
