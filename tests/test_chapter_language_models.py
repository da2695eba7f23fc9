"""The *Language models and encoders* chapter runs in the smoke profile and its checks hold in its results file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tlutils.stats import VERDICTS


@pytest.mark.chapter
def test_language_models_chapter(run_chapter):
    record = run_chapter("pretrained/language_models")
    assert record["profile"] == "smoke" and record["model"] == "tiny-bert"
    assert 0 < record["wall_time_s"] < 600
    m = record["metrics"]

    # the corpus: every task's training text, evaluation sentences and duplicates removed
    corpus = m["corpus"]
    assert set(corpus["share_words"]) == {"amazon", "mnli", "mrpc", "rte", "sick", "snli", "stsb"}
    assert math.isclose(sum(corpus["share_words"].values()), 1.0, abs_tol=1e-9)
    removed = corpus["removed"]
    assert removed["evaluation_overlap"] > 0 and removed["duplicates"] > 0
    assert corpus["sentences"] == corpus["input_sentences"] - sum(removed.values())
    assert 0 < corpus["multi_sentence_documents"] < corpus["documents"]

    # the tokenizers: both 8k, byte-level BPE round-trips exactly and never emits an unknown token
    table = m["tokenizers"]["table"]
    assert table["wordpiece"]["vocabulary"] == table["bpe"]["vocabulary"] == 8000
    assert table["bpe"]["exact round trip"] == 1.0 and table["bpe"]["unknown tokens"] == 0
    assert table["wordpiece"]["exact round trip"] < 1.0  # lower-cased
    assert all(row["tokens per word"] >= 1.0 for row in table.values())
    seg = m["segmentations"]["A café in Zürich 🙂"]
    assert "[UNK]" in seg["wordpiece"] and "zurich" in seg["wordpiece"].replace(" ##", "")

    # equal budgets: the same steps (and batch) for the causal and the masked model
    pre = m["pretraining"]
    clm, mlm = pre["causal LM (GPT-2)"], pre["masked LM (BERT)"]
    assert clm["steps"] == mlm["steps"] == m["sizes"]["lm"]["steps"]
    assert clm["tokens_per_second"] > 0 and mlm["tokens_per_second"] > 0
    assert clm["final"]["clm_loss"] > 0 and mlm["final"]["mlm_loss"] > 0
    losses = m["heldout_losses"]
    assert set(losses["causal LM (GPT-2)"]) == {"model", "unigram", "bigram", "examples"}
    assert "bigram" not in losses["masked LM (BERT)"]

    # generation and fill-in
    assert set(m["generations"]) and all(set(g) == {"greedy", "sampled"} for g in m["generations"].values())
    assert all(len(top) == 5 for top in m["fill_mask"].values())

    # the label-budget curve: every main arm at every budget, one accuracy per seed
    budgets, seeds = m["budgets"], m["seeds"]
    for arm in ("BERT mini, pretrained (mean)", "BERT mini, random weights (mean)", "tiny-bert, packaged (mean)",
                "GPT-2 mini, pretrained (last token)"):
        for n in budgets:
            row = m["accuracy"][f"{arm} / {n}"]
            assert len(row["accuracy"]) == len(seeds) and all(0 <= a <= 1 for a in row["accuracy"])
            assert math.isclose(row["mean"], float(np.mean(row["accuracy"])), abs_tol=1e-12)
    assert f"BERT mini, pretrained ([CLS]) / {budgets[0]}" not in m["accuracy"]  # second-choice poolings: top only
    assert all(isinstance(v, bool) for v in m["at_majority_class"].values())

    # one main comparison over budgets and seeds, the further ones Holm-corrected as one family
    comparisons = m["comparisons"]
    main = comparisons[m["main_comparison"]]
    assert m["main_comparison"] == "pretrained vs random-weight miniature BERT (all budgets and seeds)"
    assert main["method"] == "paired seed t" and main["n"] == len(budgets) * len(seeds) and main["p_adjusted"] is None
    family = 2 * len(budgets) + 2 * 4 + 3
    assert len(comparisons) == 1 + family
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS, name
        if name != m["main_comparison"]:
            assert c["family_size"] == family and c["p_adjusted"] >= c["p_value"], name
        if "test reviews" in name:
            assert c["method"] == "paired bootstrap" and c["n"] == m["test"]
        if "held-out loss" in name:
            assert c["method"] == "paired bootstrap"
            assert c["n"] in (losses["causal LM (GPT-2)"]["examples"], losses["masked LM (BERT)"]["examples"])

    # the article: BERT is not a next-word LM; the label claim judged from the stored verdict
    article = m["article"]
    assert article["bert_is_a_next_word_lm"] is False
    assert article["no_labels_needed_held"] == (article["labels_matter"]["verdict"] != "A better")
    assert m["cited"]["model_budgets"][2]["model (cited)"] == "BERT-base"

    stages = m["stage_seconds"]
    assert "pretraining (or reading the cache)" in stages and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= record["wall_time_s"] + 1e-6
