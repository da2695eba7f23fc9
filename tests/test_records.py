"""The committed small-profile records: what the published book measured, and its budget.

``make records-small`` (the small-profile build) copies every chapter's results file to
``benchmarks/results/chapters/<chapter>.small.json``. A smoke run shows that a chapter works;
these records hold what it *finds* with the real model and data, so the claims the prose
makes are asserted here. Refresh them with ``make records-small`` after changing a chapter.

Every comparison a chapter draws is stored with its verdict from ``tlutils.stats``; the tests
below assert the verdicts (``"not resolved"`` included, where that is the finding), never a bare
difference of two accuracies. Wall times are recorded (``python -m tlutils.results`` lists
them) but not asserted: they measure the machine as much as the chapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlutils.stats import VERDICTS

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "results" / "chapters"
EXECUTED = sorted(p.stem for p in (REPO / "book").rglob("*.md")
                  if "kernelspec:" in p.read_text()[:800] and "save_results(" in p.read_text())


RECORDED = sorted(p.name.split(".")[0] for p in RECORDS.glob("*.record.json"))


def record(chapter: str, profile: str = "small") -> dict:
    path = RECORDS / f"{chapter}.{profile}.json"
    command = "make records-small` (small profile)" if profile == "small" else f"make records-<part>` ({profile} profile)"
    assert path.is_file(), f"{path} is missing: run `{command} and commit the record"
    return json.loads(path.read_text())


def comparison(chapter: str, name: str, profile: str = "small") -> dict:
    """One stored comparison of a chapter's record (see ``tlutils.stats.Comparison.as_dict``)."""
    comparisons = record(chapter, profile)["metrics"].get("comparisons", {})
    assert name in comparisons, f"{chapter}: no comparison {name!r} (has {sorted(comparisons)})"
    return comparisons[name]


@pytest.mark.parametrize("chapter", EXECUTED)
def test_every_executed_chapter_has_a_small_record(chapter):
    r = record(chapter)
    assert r["profile"] == "small" and r["model"] == "minilm" and r["chapter"] == chapter
    assert r["wall_time_s"] > 0 and r["environment"]["cpu_count"] >= 1
    # the machine and precision the numbers were measured with (AVX2-only vs native bf16)
    assert r["environment"]["precision"] in ("no", "bf16") and "flags" in r["environment"]["cpu"]


@pytest.mark.parametrize("chapter", RECORDED)
def test_record_runs_pin_fp32_and_say_how_they_were_made(chapter):
    r = record(chapter, "record")
    assert r["profile"] == "record" and r["chapter"] == chapter and r["model"] == "minilm"
    assert r["environment"]["precision"] == "no" and "flags" in r["environment"]["cpu"]
    part = next(p.parent.name for p in (REPO / "book").rglob(f"{chapter}.md"))
    assert r["command"] == f"make records-{part}"


@pytest.mark.parametrize("chapter", RECORDED)
def test_a_chapter_with_a_record_run_prints_it(chapter):
    source = next((REPO / "book").rglob(f"{chapter}.md")).read_text()
    assert f'record_findings("{chapter}"' in source, f"{chapter}: print its record with record_findings"


# pages that read the committed records (results, outlook, syllabus) and measure nothing themselves
RECORD_READERS = ("results", "summary", "syllabus")


@pytest.mark.parametrize("chapter, profile", [(c, "small") for c in EXECUTED if c not in RECORD_READERS]
                         + [(c, "record") for c in RECORDED])
def test_every_record_declares_its_main_comparison_with_a_consistent_verdict(chapter, profile):
    m = record(chapter, profile)["metrics"]
    comparisons = m.get("comparisons", {})
    assert comparisons and m.get("main_comparison") in comparisons, \
        f"{chapter}: store its comparisons (tlutils.stats) and name the main one"
    for name, c in comparisons.items():
        assert c["verdict"] in VERDICTS, (chapter, name)
        assert c["low"] <= c["difference"] <= c["high"] or c["method"].endswith("seed t"), (chapter, name)
        if c["p_adjusted"] is None and c["verdict"] != "not resolved":  # uncorrected: the interval decides
            assert (c["low"] > 0) == (c["verdict"] == "A better"), (chapter, name)
        assert c["sentence"].endswith(".") and c["a"] in c["sentence"], (chapter, name)


def test_running_example_pretrained_is_ahead_of_scratch_and_scratch_sits_at_the_floor():
    """On 1,200 pairs (one seed) the pretrained model is ahead of its random twin, which answers
    the majority class; whether the gap is resolved is down to the run: +0.069 resolved with the
    dropout masks of nn.Dropout, +0.034 (-0.005 to +0.074) not resolved with those of
    tlutils.dropout. The record run (3,668 pairs) resolves it; the summary bullet says neither."""
    mrpc = record("sentence_pair_classification")["metrics"]["mrpc"]
    main = comparison("sentence_pair_classification", "pretrained_vs_scratch")
    assert main["verdict"] == "not resolved" and main["difference"] > 0.02 and main["n"] == 408
    assert not mrpc["pretrained"]["at_majority_class"]
    assert mrpc["scratch"]["at_majority_class"]  # the prose says the random twin learned nothing


def test_feature_extraction_verdicts():
    """Scored on MRPC validation + test (2,133 pairs, nothing chosen on them): frozen MiniLM
    features beat every extractor trained on the same pairs and every other way of reading the
    encoder; the layers above the embeddings, weight decay and the MLP's cures are not
    resolved; dropout makes the CNN worse; a C chosen by cross-validation and a linear probe
    instead of an MLP are the cures that help."""
    m = record("feature_extraction")["metrics"]
    assert m["eval_splits"] == {"validation": 408, "test": 1725} and m["eval_size"] == 2133
    assert len(m["layer_probe"]["layers"]) == 6 + 1  # MiniLM-L6 and its embedding layer

    def c(name: str) -> dict:
        return comparison("feature_extraction", name)

    assert m["main_comparison"] == "frozen_vs_cnn_random"
    main = c("frozen_vs_cnn_random")
    assert main["verdict"] == "A better" and main["low"] > 0 and main["p_adjusted"] is None
    assert main["n"] == 2133 and not main["at_majority_class"]
    # the main verdict is not one lucky draw of the CNN's training seed
    assert len(m["main_seed_check"]) >= 3
    assert all(r["verdict"] == "A better" and r["low"] > 0 for r in m["main_seed_check"])

    further = [name for name in m["comparisons"] if name != "frozen_vs_cnn_random"]
    assert len(further) == 13 and all(c(name)["family_size"] == 13 for name in further)  # one Holm family
    for name in ("frozen_vs_cnn", "frozen_vs_bigru", "separate_mean_vs_joint_cls", "separate_mean_vs_joint_mean",
                 "separate_mean_vs_separate_cls", "linear_cv_C_vs_weakest_penalty", "linear_vs_mlp_probe"):
        assert c(name)["verdict"] == "A better" and c(name)["low"] > 0 and c(name)["p_adjusted"] < 0.05, name
    dropout = c("cnn_dropout_vs_none")
    assert dropout["verdict"] == "B better" and dropout["high"] < 0 and dropout["p_adjusted"] < 0.05
    for name in ("separate_mean_last_layer_vs_layer0", "joint_mean_last_layer_vs_layer0", "cnn_weight_decay_vs_none",
                 "mlp_dropout_vs_none", "mlp_weight_decay_vs_none"):
        assert c(name)["verdict"] == "not resolved" and c(name)["p_adjusted"] >= 0.05, name
    assert not any(c(name)["at_majority_class"] for name in m["comparisons"])  # no compared arm at the floor
    # the only floor among the layer probes is the one the prose explains: layer 0 read by CLS is constant
    floors = m["layer_probe"]["at_majority_class"]
    assert floors["joint_cls"][0] and floors["separate_cls"][0]
    assert not any(f for flags in floors.values() for f in flags[1:])


def test_fine_tuning_full_beats_the_head_alone_and_the_floors_are_named():
    m = record("fine_tuning")["metrics"]
    rows = m["strategies"]
    assert {"head only", "full", "lora"} <= set(rows)
    assert m["scored_splits"] == ["validation", "test"] and m["scored_examples"] == 2133
    # the main comparison: updating the encoder beats the article's "last layer only", on the MCC
    # of all 2,133 labelled validation + test pairs (the rates were chosen on training pairs)
    main = comparison("fine_tuning", m["main_comparison"])
    assert m["main_comparison"] == "full_vs_head_only" and main["metric"] == "mcc" and main["n"] == 2133
    assert main["verdict"] == "A better" and main["low"] > 0
    assert not rows["full"]["at_majority_class"] and not rows["head only"]["at_majority_class"]
    # LoRA learns above the floor on the 960 pairs (60 steps) of this run, though it sat at the floor
    # on 1,200 pairs (and does in the record): at one epoch, whether it leaves the floor is down to
    # the data drawn. Full fine-tuning beats it after Holm (+0.061, +0.018 to +0.104), a verdict
    # that moved with the dropout masks: with nn.Dropout's it was not resolved (+0.022).
    assert m["train_examples"] == 960 and m["steps_per_run"] == 60
    assert not rows["lora"]["at_majority_class"]
    lora = comparison("fine_tuning", "full_vs_lora")
    assert lora["verdict"] == "A better" and lora["p_adjusted"] < 0.05 and lora["low"] > 0
    assert rows["lora"]["trainable_parameters"] < rows["full"]["trainable_parameters"] / 100
    # each strategy's training throughput is recorded; the head alone skips the encoder's backward pass
    assert all(row["pairs_per_second"] > 0 for row in rows.values())
    assert rows["head only"]["pairs_per_second"] > rows["full"]["pairs_per_second"]
    # ... while LoRA, training under 1% of the weights, still back-propagates through every layer:
    # its speed-up is far smaller than its cut in trainable parameters (the summary says so)
    assert rows["lora"]["trainable_fraction"] < 0.01
    assert rows["lora"]["pairs_per_second"] < 2 * rows["full"]["pairs_per_second"]
    # the learning-rate sweep: ten times the profile's rate wrecks the weights (the floor the prose names)
    sweep = m["lr_sweep"]
    floor_at = {round(lr / rows["full"]["lr"], 3): floor
                for lr, floor in zip(sweep["learning_rates"], sweep["at_majority_class"])}
    assert floor_at[1.0] is False and floor_at[10.0] is True
    # seeds: a t-interval of full fine-tuning's MCC over three seeds, above zero
    seeds = m["seeds"]["full"]
    assert seeds["n"] == len(seeds["mcc"]) >= 3 and seeds["metric"] == "mcc" and seeds["low"] > 0


def test_distillation_teaches_the_random_student_and_no_distilled_student_beats_the_teacher():
    m = record("distillation")["metrics"]
    main = comparison("distillation", m["main_comparison"])
    assert m["main_comparison"] == "random small (distilled) vs random small (hard labels) (accuracy)"
    assert m["sizes"]["evaluation"] == main["n"] == 2133  # MRPC validation + test, nothing chosen on them
    # the main comparison: the random student learns more from the teacher than from the gold labels
    assert main["verdict"] == "A better" and main["low"] > 0 and main["p_adjusted"] is None
    # further comparisons, Holm-corrected over four
    # the same arms by MCC: resolved after Holm over four (+0.072); with the batch order before the
    # longest batch went first only the unadjusted interval was above zero: a verdict at the edge
    mcc = comparison("distillation", "random small (distilled) vs random small (hard labels) (mcc)")
    assert mcc["family_size"] == 4 and mcc["verdict"] == "A better" and mcc["low"] > 0 and mcc["p_adjusted"] < 0.05
    # student (a), 40 steps here: distilled vs hard labels +0.007, its interval touching zero and
    # not resolved after Holm (p_adj 0.12), a verdict at the edge: with nn.Dropout's masks it was
    # resolved (+0.009, p_adj 0.02); with 63 steps (the record) it is not resolved
    a = comparison("distillation", "from-teacher (distilled) vs from-teacher (hard labels) (accuracy)")
    assert m["plans"]["from-teacher"]["steps"] == 40 and m["sizes"]["labelled"] == 1200
    assert a["family_size"] == 4 and a["verdict"] == "not resolved" and a["difference"] > 0 and a["p_adjusted"] > 0.05
    # the random student stays below its teacher (resolved); student (a), initialised from the
    # teacher's layers, comes within 0.008 of it (not resolved)
    t = comparison("distillation", "random small (distilled) vs teacher (accuracy)")
    assert t["family_size"] == 4 and t["verdict"] == "B better" and t["high"] < 0
    t = comparison("distillation", "from-teacher (distilled) vs teacher (accuracy)")
    assert t["family_size"] == 4 and t["verdict"] == "not resolved" and t["difference"] < 0
    assert not any(m["at_majority_class"].values())  # every arm learned beyond the constant answer
    assert m["students"]["from-teacher (distilled)"]["parameters"] < m["teacher"]["parameters"]
    assert all(row["train_pairs_per_second"] > 0 for row in m["students"].values())


def test_pretrained_and_transfer_findings():
    m = record("pretrained_and_transfer")["metrics"]
    c = m["comparisons"]
    # the main comparison (end-to-end vs progressive, 408 paired validation pairs) is not resolved
    main = c[m["main_comparison"]]
    assert m["main_comparison"] == "end-to-end vs progressive (accuracy)"
    assert main["verdict"] == "not resolved" and main["low"] < 0 < main["high"] and main["n"] == 408
    for name in ("end-to-end vs partial (accuracy)", "progressive vs partial (accuracy)"):
        assert c[name]["verdict"] == "not resolved" and c[name]["family_size"] == 2, name
    # every run learned beyond the majority-class floor, the partial one (top layers only, one
    # epoch) too (MCC 0.18); with nn.Dropout's masks it sat at the floor: whether it leaves it is
    # down to the run, and the chapter's generated sentence says which runs sit there
    floor = {name for name, run in m["runs"].items() if run["at_majority_class"]}
    assert floor == set()
    assert all(m["runs"][name]["mcc"] > 0.1 for name in ("end-to-end", "progressive", "partial"))
    # zero-shot: the pretrained encoder's cosine ranks no better than a random network's (Holm, 7)
    zero_shot = c["pretrained, zero-shot vs random weights (auc)"]
    assert zero_shot["verdict"] == "not resolved" and zero_shot["low"] < 0 < zero_shot["high"]
    # fine-tuning narrows the cosine gap of paraphrases over non-paraphrases (end-to-end, partial)
    for run in ("end-to-end", "partial"):
        gap = c[f"{run} vs before fine-tuning (gap)"]
        assert gap["verdict"] == "B better" and gap["high"] < 0 and gap["family_size"] == 7, run
    # what moves: the pooler and the head far more than any encoder layer; the pooler most
    e2e = m["layer_change"]["end-to-end"]
    layers = [v for g, v in e2e.items() if g.startswith("layer ")]
    assert min(e2e["pooler"], e2e["head"]) > 2 * max(layers) and e2e["pooler"] > e2e["head"]
    assert max(layers) < 0.05  # a small perturbation of the pretrained layers
    assert all(m["layer_change"]["partial"][g] == 0.0 for g in m["frozen_groups_partial"])


def test_terms_transfer_findings():
    m = record("terms_transfer")["metrics"]
    c = m["comparisons"]
    # main comparison: the books/kitchen sentiment probe loses accuracy across domains (400 reviews)
    main = c[m["main_comparison"]]
    assert m["main_comparison"] == "in-domain vs cross-domain probe (accuracy)"
    assert main["verdict"] == "A better" and main["low"] > 0 and main["n"] == 400
    assert m["domain_adaptation"]["domain_accuracy"] > 0.9  # the domains are easy to tell apart
    # self-training: no threshold resolves a difference from the labelled-only probe (Holm, 6)
    st = [v for k, v in c.items() if k.startswith("self-trained")]
    assert len(st) == 6 and all(x["verdict"] == "not resolved" and x["family_size"] == 6 for x in st)
    # dropout on 64 pairs: every run memorises (training accuracy 1) and none generalises (floor);
    # dropout 0.3 fits its training pairs less tightly (resolved), validation is not resolved
    runs = m["dropout"]["runs"]
    assert all(r["train_accuracy"] == 1.0 and r["validation_at_majority_class"] for r in runs)
    fit_ = c["dropout 0.0 on its training pairs vs dropout 0.3 on its training pairs (gold_log_likelihood)"]
    assert fit_["verdict"] == "A better" and fit_["low"] > 0 and fit_["family_size"] == 2
    assert c["dropout 0.0 on validation vs dropout 0.3 on validation (accuracy)"]["verdict"] == "not resolved"
    # adversarial: the gradient direction raises the loss far more than a random one of equal norm
    adv = m["adversarial"]
    i = adv["epsilons"].index(1.0)
    rise_gradient = adv["loss_gradient_direction"][i] - adv["clean_loss"]
    rise_random = adv["loss_random_direction"][i] - adv["clean_loss"]
    assert rise_gradient > 100 * abs(rise_random)
    # fine-tuning moves every group; feature extraction only the head
    ft = m["fine_tuning"]["relative_change"]
    assert all(v > 0 for v in ft["fine-tuning"].values())
    assert all(v == 0.0 for g, v in ft["feature extraction"].items() if g != "head")


def test_terms_text_findings():
    m = record("terms_text")["metrics"]
    c = m["comparisons"]
    # main comparison: label smoothing's calibration (1 - ECE) on 408 validation pairs, not resolved;
    # both arms learned more than the majority class, so the comparison is informative
    main = c[m["main_comparison"]]
    assert m["main_comparison"] == "label smoothing 0.1 vs cross-entropy (calibration_score)"
    assert main["verdict"] == "not resolved" and main["low"] < 0 < main["high"] and main["n"] == 408
    # accuracy, the further comparison: +0.007 here (Holm over one), not resolved, as in the record run
    # (a batch order earlier had it at +0.010, resolved: a noise-level verdict)
    accuracy = c["label smoothing 0.1 vs cross-entropy (accuracy)"]
    assert accuracy["verdict"] == "not resolved" and accuracy["low"] < 0 < accuracy["high"]
    ls = m["label_smoothing"]
    assert not ls["cross-entropy"]["at_majority_class"] and not ls["label smoothing 0.1"]["at_majority_class"]
    assert ls["label smoothing 0.1"]["mean_confidence"] < ls["cross-entropy"]["mean_confidence"]
    # language models on the MRPC test sentences (k chosen on validation), Holm over 3
    lm = {k: v for k, v in c.items() if "log_prob_per_token" in k}
    assert len(lm) == 3 and all(x["family_size"] == 3 for x in lm.values())
    neural_vs_bigram = next(x for k, x in lm.items() if "order" not in k)
    assert neural_vs_bigram["verdict"] == "B better" and neural_vs_bigram["high"] < 0  # the bigram wins
    for k, x in lm.items():
        if "order" in k:  # both models prefer natural word order
            assert x["verdict"] == "A better" and x["low"] > 0, k
    # WordPiece: fewer pieces per word with every larger vocabulary, the same [UNK] rate at all sizes
    wp = m["wordpiece"]
    assert all(a > b for a, b in zip(wp["pieces_per_word"], wp["pieces_per_word"][1:]))
    assert len(set(wp["unk_per_word"])) == 1 and wp["bpe_unk_per_word"] == 0.0
    # the attention mask makes padding invisible; contextual vectors separate the two senses of "bank"
    assert m["masking"]["padding"]["with mask"] < 1e-4 < 0.1 < m["masking"]["padding"]["without mask"]
    assert m["embedding"]["contextual_same_sense"] > m["embedding"]["contextual_other_sense"]
    # out-of-vocabulary rates grow across domains, and each domain's own vocabulary is its best
    for gap in m["vocabulary"]["diagonal_gap"].values():
        assert gap["in_domain"] < gap["cross_domain"] and gap["columns_lowest_on_diagonal"] == gap["columns"]


# --------------------------------------------------------------------------- record runs
# `make records-<part>`: whole training splits, fp32. What they resolve, and what even they do not.


def test_record_running_example_resolves_mrpc_but_not_rte():
    """All of MRPC's training pairs: pretrained still beats its random twin, which now leaves
    the floor; a third as many RTE pairs (1,222 of 2,490) for two epochs do not tell MiniLM
    from the majority answer on 277 pairs (neither did all 2,490 in the record before)."""
    main = comparison("sentence_pair_classification", "pretrained_vs_scratch", "record")
    assert main["verdict"] == "A better" and main["low"] > 0
    assert comparison("sentence_pair_classification", "rte_vs_majority", "record")["verdict"] == "not resolved"
    m = record("sentence_pair_classification", "record")["metrics"]
    assert m["rte"]["train_examples"] == 1222 and not m["mrpc"]["scratch"]["at_majority_class"]


def test_record_pretrained_and_transfer_strategies_stay_unresolved():
    main = record("pretrained_and_transfer", "record")["metrics"]["main_comparison"]
    assert comparison("pretrained_and_transfer", main, "record")["verdict"] == "not resolved"


def test_record_terms_text_neural_model_overtakes_the_bigram_with_five_times_the_steps():
    """At 200 steps (small) the bigram wins; at 1,000 steps (record) the neural model does;
    label smoothing's calibration effect stays unresolved on all of MRPC's training pairs."""
    comparisons = record("terms_text", "record")["metrics"]["comparisons"]
    neural_vs_bigram = next(c for k, c in comparisons.items() if k.startswith("neural, 1000 steps vs bigram"))
    assert neural_vs_bigram["verdict"] == "A better"
    small = record("terms_text")["metrics"]["comparisons"]
    assert next(c for k, c in small.items() if k.startswith("neural, 200 steps vs bigram"))["verdict"] == "B better"
    main = record("terms_text", "record")["metrics"]["main_comparison"]
    assert comparisons[main]["verdict"] == "not resolved"
    # the small run's accuracy gain of label smoothing (+0.010) does not hold on all the pairs
    assert comparisons["label smoothing 0.1 vs cross-entropy (accuracy)"]["verdict"] == "not resolved"


def test_record_terms_transfer_domain_shift_resolved_self_training_not():
    comparisons = record("terms_transfer", "record")["metrics"]["comparisons"]
    main = comparisons["in-domain vs cross-domain probe (accuracy)"]
    assert main["verdict"] == "A better" and main["low"] > 0.05
    assert all(c["verdict"] == "not resolved" for k, c in comparisons.items() if k.startswith("self-trained"))


def test_record_distillation_main_resolved_on_pairs_and_over_seeds():
    """In fp32 on the same 2,133 pairs: distilling into the random small student beats hard
    labels, also over three seeds; the from-teacher student's gain stays unresolved; the
    temperature does not matter at this budget, and alpha = 0 (no soft targets) is worse."""
    m = record("distillation", "record")["metrics"]
    main = m["comparisons"][m["main_comparison"]]
    assert main["verdict"] == "A better" and main["n"] == 2133
    assert m["main_over_seeds"]["verdict"] == "A better" and m["main_over_seeds"]["n"] == 3
    assert comparison("distillation", "from-teacher (distilled) vs from-teacher (hard labels) (accuracy)",
                      "record")["verdict"] == "not resolved"
    sweep = m["sweep"]["comparisons"]
    assert all(sweep[f"T = {t}, alpha = 0.5"]["verdict"] == "not resolved" for t in (1, 4, 8))
    assert sweep["T = 2, alpha = 0"]["verdict"] == "B better"


def test_record_feature_extraction_main_holds_for_seed_0_only_and_static_extractors_catch_up():
    """On all 3,668 training pairs the frozen encoder still beats the CNN from scratch trained
    with seed 0, but not the ones trained with seeds 1 and 2, and no longer beats the CNN and
    BiGRU over frozen static embeddings: the small profile's wider margins came with fewer
    training pairs. A C chosen by cross-validation still helps; weight decay 10 hurts the MLP."""
    m = record("feature_extraction", "record")["metrics"]
    assert m["train_size"] == 3668 and m["eval_size"] == 2133 and m["sparsity"]["trained_repeats"] == 2
    assert m["comparisons"]["frozen_vs_cnn_random"]["verdict"] == "A better"
    assert [r["verdict"] for r in m["main_seed_check"]] == ["A better", "not resolved", "not resolved"]
    assert {m["comparisons"][k]["verdict"] for k in ("frozen_vs_cnn", "frozen_vs_bigru")} == {"not resolved"}
    assert m["comparisons"]["linear_cv_C_vs_weakest_penalty"]["verdict"] == "A better"
    assert m["comparisons"]["mlp_weight_decay_vs_none"]["verdict"] == "B better"


def test_record_fine_tuning_main_verdict_does_not_survive_twice_the_data():
    """2,400 pairs in fp32: full vs head only is no longer resolved (full fine-tuning at 2e-4
    with seed 0 sits at the majority-class floor), LoRA still sits there too, every rate of the sweep
    collapses on validation, and over three seeds nothing is resolved: the small profile's
    verdict is fragile, and the chapter prints both."""
    m = record("fine_tuning", "record")["metrics"]
    assert m["train_examples"] == 2400 and m["scored_examples"] == 2133
    assert m["comparisons"]["full_vs_head_only"]["verdict"] == "not resolved"
    assert comparison("fine_tuning", "full_vs_head_only")["verdict"] == "A better"  # the small run
    assert m["strategies"]["full"]["at_majority_class"] and m["strategies"]["lora"]["at_majority_class"]
    assert all(m["lr_sweep"]["at_majority_class"])
    assert m["comparisons"]["seeds_full_vs_head_only"]["verdict"] == "not resolved"


def test_adversarial_fgm_buys_robustness_to_the_embedding_attack_at_a_price_in_clean_accuracy():
    """SICK, MiniLM, one epoch on 2,400 pairs, 495 validation pairs: FGM (epsilon 0.5) beats plain
    fine-tuning under the attack of its training radius (the main comparison; there FGM is no
    better than the majority class, plain far worse), at every other
    radius and under a 3-step PGD attack, but is worse on clean pairs and on the text-perturbed
    pairs; it loses less accuracy than plain does to the heavier text perturbation (at the
    lighter one the difference is not resolved). No arm sits at the
    majority class, and a step costs about as many times a plain step as it makes passes."""
    m = record("adversarial")["metrics"]
    assert m["sizes"]["evaluation"] == 495 and m["sizes"]["train"] == 2400 and m["epsilon"] == 0.5
    main = comparison("adversarial", m["main_comparison"])
    assert m["main_comparison"] == "FGM vs plain (attack 0.5)"
    assert main["verdict"] == "A better" and main["low"] > 0 and main["p_adjusted"] is None and main["n"] == 495
    for condition in ("attack 0.25", "attack 1", "attack 0.5, 3 steps", "accuracy change, text 0.25"):
        c = comparison("adversarial", f"FGM vs plain ({condition})")
        assert c["verdict"] == "A better" and c["family_size"] == 8, condition
    # at the lighter perturbation rate FGM's smaller loss (+0.028) is not resolved after Holm
    # (p_adj 0.067); with nn.Dropout's masks it was (a verdict at the edge)
    c = comparison("adversarial", "FGM vs plain (accuracy change, text 0.1)")
    assert c["verdict"] == "not resolved" and c["difference"] > 0 and c["family_size"] == 8
    for condition in ("clean", "text 0.1", "text 0.25"):
        c = comparison("adversarial", f"FGM vs plain ({condition})")
        assert c["verdict"] == "B better" and c["family_size"] == 8, condition
    assert not any(m["at_majority_class"].values())
    assert all(run["mcc"]["attack 0"] > 0.2 for run in m["runs"].values())
    # robust is not right: under the attack FGM is no better than always answering the majority
    # class, and plain fine-tuning is far worse than that constant answer
    vs_majority = m["under_attack_vs_majority"]
    assert vs_majority["FGM"]["verdict"] == "not resolved" and vs_majority["plain"]["verdict"] == "B better"
    cost = m["cost"]
    assert 1.5 < cost["FGM"]["cpu_vs_plain"] < 3 and cost["PGD"]["cpu_vs_plain"] > cost["FGM"]["cpu_vs_plain"]
    assert cost["FreeLB"]["cpu_vs_plain"] > cost["FGM"]["cpu_vs_plain"]
    assert m["attack_check"]["library_error"] < 1e-5 and m["pgd1_equals_fgm"] < 1e-5


def test_record_adversarial_pgd_and_freelb_cost_fgm_clean_accuracy_and_buy_no_more_robustness():
    """Record run (2,000 SICK pairs, fp32, all four arms, three seeds for the main comparison):
    every adversarial arm beats plain fine-tuning under the attack of its training radius and
    loses to it on clean pairs; against FGM, the costlier PGD (K = 3) and FreeLB are worse on
    clean pairs and not resolved under the attack, while a step costs them about 1.5 times an
    FGM step. The main comparison holds over the seeds. No arm sits at the majority class."""
    m = record("adversarial", "record")["metrics"]
    c = m["comparisons"]
    assert m["sizes"]["train"] == 2000 and m["settings"]["arms"] == ["plain", "FGM", "PGD", "FreeLB"]
    assert c[m["main_comparison"]]["verdict"] == "A better" and m["main_over_seeds"]["verdict"] == "A better"
    for arm in ("FGM", "PGD", "FreeLB"):
        assert c[f"{arm} vs plain (attack 0.5)"]["verdict"] == "A better", arm
        assert c[f"{arm} vs plain (clean)"]["verdict"] == "B better", arm
    for arm in ("PGD", "FreeLB"):
        clean, attacked = c[f"{arm} vs FGM (clean)"], c[f"{arm} vs FGM (attack 0.5)"]
        assert clean["verdict"] == "B better" and clean["family_size"] == 16, arm
        assert attacked["verdict"] == "not resolved" and attacked["low"] <= 0 <= attacked["high"], arm
        assert m["cost"][arm]["cpu_vs_plain"] > 1.3 * m["cost"]["FGM"]["cpu_vs_plain"], arm
    assert not any(m["at_majority_class"].values())


def test_multi_task_joint_beats_single_task_at_equal_total_updates():
    """Frozen MiniLM features, a shared layer, six heads, five seeds: with the same total number
    of updates the joint model beats RTE alone (the main comparison) and MRPC alone; with the
    same number of updates on the task only STS-B's is resolved (+0.128 Pearson, p_adj 0.047);
    the joint model fine-tuned on RTE beats RTE alone (+0.030, p_adj 0.016) but not the joint
    model; mixing strategies, joint vs sequential and the end-to-end RTE + MNLI arm are not
    resolved, and neither is forgetting (at ten times the rate, on seed 0's pairs, -0.044 with
    p_adj 0.43). With nn.Dropout's masks the last three verdicts were the other way round
    (forgetting resolved, the other two not): verdicts at the edge of Holm's correction over 16."""
    m = record("multi_task")["metrics"]
    main = m["main"]
    assert m["main_comparison"] == "joint vs single rte"
    assert main["verdict"] == "A better" and main["n"] == 5 and main["low"] > 0
    c = m["comparisons"]
    assert len(c) == 17 and c["joint vs single rte"] == main
    assert all(x["family_size"] == 16 for k, x in c.items() if k != "joint vs single rte")
    assert c["joint vs single mrpc"]["verdict"] == "A better"
    forgetting = c["forgetting at lr 0.01, seed 0 on the same pairs"]
    assert forgetting["verdict"] == "not resolved" and forgetting["difference"] < 0 and forgetting["n"] == 408
    resolved = {"joint vs single rte", "joint vs single mrpc", "joint vs single stsb (task updates)",
                "multi-task then fine-tune vs single rte"}
    assert all(c[k]["verdict"] == "A better" for k in resolved)
    assert all(x["verdict"] == "not resolved" for k, x in c.items() if k not in resolved), \
        sorted(k for k, x in c.items() if k not in resolved and x["verdict"] != "not resolved")
    # the end-to-end arms (MiniLM, one short epoch) learn nearly nothing: RTE alone answers the
    # majority class; RTE + MNLI answers both classes, below the majority-class accuracy (0.451)
    e2e = m["end_to_end"]
    assert e2e["RTE alone"]["at_majority_class"] is True and e2e["RTE + MNLI"]["rte_accuracy"] < 0.5
    assert m["end_to_end"]["RTE + MNLI"]["steps"] == 2 * m["end_to_end"]["RTE alone"]["steps"]


def test_self_training_helps_most_with_fewest_labels_and_cannot_fix_a_bad_teacher():
    """SICK, linear heads on frozen MiniLM features, five seeds per arm: self-training (three
    rounds, threshold 0.9, labelled class proportions) beats the labels alone at 100 labels
    (the main comparison), and after Holm also at 50 and 400 but not at 200; the noisy
    student's extra noise is not resolved against plain self-training at any budget, but it
    beats the same noise without pseudo-labels at 50 and 100. Threshold 0 (every prediction
    kept) gains nothing resolved; a teacher with 40% wrong labels improves with confident
    pseudo-labels but stays below the majority class."""
    m = record("self_training")["metrics"]
    c = m["comparisons"]
    main = c[m["main_comparison"]]
    assert m["main_comparison"] == "self-training (100 labels) vs supervised (100 labels)"
    assert main["verdict"] == "A better" and main["low"] > 0 and main["n"] == 5 and main["p_adjusted"] is None
    assert m["sizes"]["evaluation"] == 2000 and m["main_on_examples"]["verdict"] == "A better"
    verdicts = {b: c[f"self-training ({b} labels) vs supervised ({b} labels)"]["verdict"] for b in (50, 200, 400)}
    assert verdicts == {50: "A better", 200: "not resolved", 400: "A better"}
    for b in (50, 100, 200, 400):
        assert c[f"noisy student ({b} labels) vs self-training ({b} labels)"]["verdict"] == "not resolved"
        expected = "A better" if b in (50, 100) else "not resolved"
        assert c[f"noisy student ({b} labels) vs supervised + noise ({b} labels)"]["verdict"] == expected
        assert c[f"noisy student ({b} labels) vs self-training ({b} labels)"]["family_size"] == 11
    assert not any(m["at_majority_class"].values())
    # the pseudo-labels the threshold keeps are the easy pairs: far more accurate than the rest
    assert m["easy_pairs"]["kept"] > m["easy_pairs"]["left out"] + 0.2
    bias = m["confirmation_bias"]["comparisons"]
    assert {name: v["verdict"] for name, v in bias.items()} == {
        "good teacher, confident and balanced": "A better", "good teacher, threshold 0": "not resolved",
        "bad teacher, confident and balanced": "A better", "bad teacher, threshold 0": "not resolved",
        "bad teacher's last student vs clean labels": "not resolved"}
    assert bias["bad teacher, confident and balanced"]["value_a"] < m["majority_baseline"]
    drift = m["confirmation_bias"]["drift"]
    for name in ("good teacher, confident and balanced", "bad teacher, confident and balanced"):
        assert drift[name]["last_round"] < drift[name]["first_round"]  # more kept, less accurate, round by round
    # one end-to-end round through fit (MiniLM, 200 labels, one seed, 400 paired pairs): one draw, not
    # resolved here (-0.012); an earlier batch order had the student ahead, the record the teacher
    e2e = m["e2e"]
    assert e2e["comparison"]["verdict"] == "not resolved" and e2e["comparison"]["n"] == 400 and e2e["kept"] > 0
    assert not any(e2e["at_majority_class"].values())


def test_contrastive_simcse_lifts_a_random_encoder_but_not_the_contrastively_trained_minilm():
    """STS-B test, 1,379 pairs, Spearman of cosine similarities, paired bootstrap: supervised SimCSE
    (SNLI triplets, in-batch and hard negatives) lifts the random tiny encoder (the main comparison),
    unsupervised SimCSE lifts it too, by less (+0.025 between them, p_adj 0.051 after Holm: not
    resolved, where nn.Dropout's masks gave p_adj below 0.05), the triplet loss (margin 0.5, no
    in-batch negatives) makes it worse; the packaged MiniLM, already trained contrastively, does not move, and the tiny encoder's
    MRPC probe gains nothing resolved from SimCSE."""
    m = record("contrastive")["metrics"]
    assert m["sizes"]["sts_test"] == 1379 and m["sizes"]["train_triplets"] == 1024
    main = comparison("contrastive", m["main_comparison"])
    assert m["main_comparison"] == "supervised SimCSE vs random tiny encoder (spearman)"
    assert main["verdict"] == "A better" and main["low"] > 0 and main["p_adjusted"] is None and main["n"] == 1379
    further = {"unsupervised SimCSE vs random tiny encoder (spearman)": "A better",
               "triplet loss vs random tiny encoder (spearman)": "B better",
               "supervised SimCSE vs unsupervised SimCSE (spearman)": "not resolved",  # at the edge
               "supervised SimCSE vs triplet loss (spearman)": "A better",
               "minilm + supervised SimCSE vs minilm (packaged) (spearman)": "not resolved",
               "MRPC probe: supervised SimCSE vs random tiny encoder (accuracy)": "not resolved"}
    for name, verdict in further.items():
        c = comparison("contrastive", name)
        assert c["verdict"] == verdict and c["family_size"] == 6, name
    assert comparison("contrastive", "supervised SimCSE vs unsupervised SimCSE (spearman)")["difference"] > 0
    runs = m["runs"]
    assert abs(runs["minilm (packaged)"]["spearman"] - 0.8203) < 0.005  # the MTEB entry, reproduced
    # every trained tiny encoder spreads the sentences out (uniformity) at a cost in alignment
    for arm in ("unsupervised SimCSE", "supervised SimCSE", "triplet loss"):
        assert runs[arm]["uniformity"] < runs["random tiny encoder"]["uniformity"], arm
        assert runs[arm]["alignment"] > runs["random tiny encoder"]["alignment"], arm
    probe = m["mrpc_probe"]
    assert not probe["random tiny encoder"]["at_majority_class"] and not probe["supervised SimCSE"]["at_majority_class"]
    assert m["demo_check"]["library_error"] < 1e-5


def test_multi_source_no_mixture_or_weighting_beats_pooling_on_frozen_features():
    """Amazon, four leave-one-domain-out targets (400 test rows each), heads on frozen MiniLM
    features, three seeds: MoE-Att against pooled training (the main comparison, 1,600 paired
    rows) is not resolved, nor over the seeds, nor MoE-Avg or MDAN: Wright & Augenstein's second
    half does not hold in this setting. Weighting the sources by their measured closeness to
    the target (proxy A-distance) is ahead of pooling on the same rows (+0.012) but not resolved
    after Holm; with nn.Dropout's masks it was resolved (a verdict at the edge). No arm sits at
    the majority class; diversity at a fixed number of rows resolves nothing (all sources vs
    one, similar vs diverse pair), on Amazon or on MultiNLI's fiction target."""
    m = record("multi_source")["metrics"]
    assert m["sizes"]["rows_per_domain"] == {"train": 400, "validation": 200, "test": 400} and len(m["sizes"]["seeds"]) == 3
    main = comparison("multi_source", m["main_comparison"])
    assert m["main_comparison"] == "MoE-Att (Amazon, all targets) vs pooled (Amazon, all targets)"
    assert main["verdict"] == "not resolved" and main["n"] == 1600 and main["p_adjusted"] is None
    assert m["main_over_seeds"]["verdict"] == "not resolved" and m["main_over_seeds"]["n"] == 3
    assert m["wright_augenstein"]["moe_vs_pooled"] == {"MoE-Att": "was not resolved", "MoE-Avg": "was not resolved"}
    for arm in ("MoE-Avg", "MDAN"):
        assert comparison("multi_source", f"{arm} (Amazon, all targets) vs pooled (Amazon, all targets)")["verdict"] == "not resolved"
    weighted = comparison("multi_source", "similarity-weighted (Amazon, all targets) vs pooled (Amazon, all targets)")
    assert weighted["verdict"] == "not resolved" and weighted["family_size"] == 27 and weighted["difference"] > 0
    assert not any(m["at_majority_class"].values())
    assert all(c["verdict"] == "not resolved" for c in m["diversity"]["comparisons"].values())
    # the leave-one-source-out gate leans on a shared expert when it has one (it saw every source),
    # and on the first target that costs accuracy (0.660 vs 0.690, resolved on 400 rows; not
    # resolved with nn.Dropout's masks)
    assert m["gate"]["shared_expert"]["mean_weight"] > 1 / 4
    assert m["gate"]["shared_expert"]["comparison"]["difference"] < 0


def test_domain_shift_crossing_an_amazon_domain_costs_accuracy_and_the_close_pairs_are_blitzers():
    """Amazon reviews, frozen MiniLM features, one head per domain trained through fit, 400 test
    reviews per domain: the in-domain heads beat the other domains' heads (the main comparison,
    1,600 paired reviews), 6 of the 12 cross-domain drops are resolved after Holm (7 with
    nn.Dropout's masks), the largest (books -> electronics) among them; books-dvd and
    electronics-kitchen are the close pairs by proxy A-distance, as Blitzer et al. found, and each
    Amazon target's closest source is also its best source in hindsight. Over six pairs the
    correlation of distance and drop is positive (rho 0.90, exact p 0.028; not resolved with
    nn.Dropout's masks, a verdict at the edge). On MultiNLI the frozen features barely learn NLI:
    8 of its 25 cells sit at the majority-class floor and no drop is resolved."""
    m = record("domain_shift")["metrics"]
    assert m["sizes"]["per_domain"] == {"train": 400, "validation": 200, "test": 400}
    main = comparison("domain_shift", m["main_comparison"])
    assert m["main_comparison"] == "in-domain (amazon) vs cross-domain (amazon)"
    assert main["verdict"] == "A better" and main["n"] == 1600 and main["low"] > 0.03 and main["p_adjusted"] is None
    amazon_cells = [comparison("domain_shift", name)["verdict"] for name in m["cells"]["amazon"].values()]
    assert amazon_cells.count("A better") == 6 and "B better" not in amazon_cells
    largest = m["extremes"]["amazon"]["largest"]
    assert (largest["source"], largest["target"]) == ("books", "electronics")
    assert comparison("domain_shift", largest["comparison"])["verdict"] == "A better"
    assert not any(m["at_majority_class"]["amazon"].values())
    pad = m["proxy_a_distance"]["amazon"]
    assert sorted(pad, key=lambda k: pad[k]["proxy_a_distance"])[:2] == ["books|dvd", "electronics|kitchen"]
    assert pad["books|dvd"]["high"] < pad["books|electronics"]["low"]  # closest and farthest pair resolved apart
    closest = {"books": "dvd", "dvd": "books", "electronics": "kitchen", "kitchen": "electronics"}
    assert m["closest_source"]["amazon"] == closest == m["best_source_in_hindsight"]["amazon"]
    near_far = {name.split(" -> ")[1].split(" vs")[0]: c["verdict"] for name, c in m["closest_vs_farthest"].items()
                if name.startswith("amazon")}
    assert near_far == {"books": "A better", "dvd": "A better", "electronics": "A better", "kitchen": "not resolved"}
    r = m["correlations"]["amazon"]["proxy A-distance vs mean drop"]
    assert r["n"] == 6 and r["rho"] > 0.5 and r["verdict"] == "positive"
    assert comparison("domain_shift", "in-domain (mnli) vs cross-domain (mnli)")["verdict"] == "not resolved"
    assert sum(m["at_majority_class"]["mnli"].values()) >= 8
    assert all(comparison("domain_shift", name)["verdict"] == "not resolved" for name in m["cells"]["mnli"].values())


def test_single_source_dann_changes_the_features_but_not_the_accuracy():
    """Amazon reviews, leave one domain out (targets dvd and kitchen, three sources each), frozen
    MiniLM features with a trainable adapter, five seeds: DANN makes the target harder to tell from
    the sources (a fresh domain classifier errs more on its features: Wright & Augenstein's first
    half holds) and its accuracy is not resolved from source-only over targets and seeds (the
    main comparison, -0.011: the second half holds too, as in the record run; with nn.Dropout's
    masks source-only was ahead, resolved, -0.017); on seed 0's dvd rows source-only is ahead.
    The oracle with the target's 400 labels is no better than source-only on either target; the
    miniature TAPT (10 steps, 16,770 tokens, a new MLM head) changes nothing resolved over the
    seeds (-0.014; with nn.Dropout's masks it made the network worse). No arm sits at the
    majority class."""
    m = record("single_source")["metrics"]
    assert m["targets"] == ["dvd", "kitchen"] and len(m["seeds"]) == 5
    main = comparison("single_source", m["main_comparison"])
    assert m["main_comparison"] == "DANN vs source-only (all targets and seeds)"
    assert main["verdict"] == "not resolved" and main["n"] == 10 and main["p_adjusted"] is None
    c = m["comparisons"]
    assert c["DANN vs source-only features: domain error (all targets and seeds)"]["verdict"] == "A better"
    for t in ("dvd", "kitchen"):
        assert c[f"DANN vs source-only on {t} (seeds)"]["verdict"] == "not resolved"
        assert c[f"oracle vs source-only on {t} (seeds)"]["verdict"] == "not resolved"
        assert c[f"oracle vs source-only on {t} (seeds)"]["family_size"] == 9
        assert m["proxy_a_distance"][t]["DANN"] < m["proxy_a_distance"][t]["source-only"] < m["proxy_a_distance"][t]["frozen"]
    assert c["DANN vs source-only on dvd (test rows, seed 0)"]["verdict"] == "B better"
    assert c["DAPT vs original encoder on dvd (seeds)"]["verdict"] == "not resolved"
    assert c["DAPT vs original encoder on dvd (test rows, seed 0)"]["verdict"] == "not resolved"
    wa = m["wright_augenstein"]
    assert wa["representation_half_held"] and wa["accuracy_half_held"]
    assert not any(m["at_majority_class"].values())
    budget = m["dapt"]["budget"]
    assert budget["tokens"] < 20_000 and budget["paper_sequences"] / budget["sequences"] == 160_000
    assert m["dapt"]["held_out_after"]["mlm_loss"] < m["dapt"]["held_out_before"]["mlm_loss"]


def test_language_models_a_few_minutes_of_pretraining_buy_token_statistics_and_labels_still_matter():
    """The corpus (7.77 MB, 1,388,666 words; 11,663 training sentences dropped as evaluation
    overlap, 4,758 as duplicates) pretrains a GPT-2 and a BERT miniature for the same 200 steps.
    The causal model beats unigram counts but not bigram counts on held-out text; the masked model
    is not resolved from unigram counts on its fixed masks. Downstream (linear probes on Amazon
    sentiment, 50/200/800 labels, five seeds), the pretrained miniature BERT is not resolved from
    its random-weight twin at any budget (the main comparison); the pretrained GPT-2 miniature
    beats its random twin at 800 labels; the masked miniature beats the causal one as an encoder
    (its mean beats its [CLS] after Holm, +0.017, an edge verdict that has gone both ways);
    MiniLM beats the miniature from 200 labels on, and MiniLM with
    800 labels beats MiniLM with 50: the article's "no labelled data needed" does not hold. BERT
    is not a next-word LM."""
    m = record("language_models")["metrics"]
    corpus = m["corpus"]
    assert corpus["words"] == 1_388_666 and corpus["removed"]["evaluation_overlap"] == 11_663
    assert corpus["removed"]["duplicates"] == 4_758 and max(corpus["share_words"], key=corpus["share_words"].get) == "amazon"
    table = m["tokenizers"]["table"]
    assert table["bpe"]["exact round trip"] == 1.0 and table["wordpiece"]["exact round trip"] < 0.1
    pre = m["pretraining"]
    assert pre["causal LM (GPT-2)"]["steps"] == pre["masked LM (BERT)"]["steps"] == 200
    assert all(p["tokens_per_second"] > 0 for p in pre.values())

    def c(name: str) -> dict:
        return comparison("language_models", name)

    main = c(m["main_comparison"])
    assert m["main_comparison"] == "pretrained vs random-weight miniature BERT (all budgets and seeds)"
    assert main["verdict"] == "not resolved" and main["n"] == 15 and main["low"] < 0 < main["high"]
    assert c("causal LM vs unigram baseline (held-out loss)")["verdict"] == "A better"
    assert c("causal LM vs bigram baseline (held-out loss)")["verdict"] == "B better"
    assert c("masked LM vs unigram baseline (held-out loss)")["verdict"] == "not resolved"
    for n in (50, 200, 800):
        assert c(f"pretrained vs random-weight miniature BERT at {n} labels (seeds)")["verdict"] == "not resolved"
    assert c("MiniLM vs pretrained miniature BERT at 50 labels (seeds)")["verdict"] == "not resolved"
    for n in (200, 800):
        assert c(f"MiniLM vs pretrained miniature BERT at {n} labels (seeds)")["verdict"] == "A better"
    assert c("pretrained vs random-weight miniature GPT-2 at 800 labels (seeds)")["verdict"] == "A better"
    assert c("masked vs causal miniature as encoders at 800 labels (seeds)")["verdict"] == "A better"
    # +0.017 over five seeds: resolved after Holm over 17 (p_adj 0.045) with tlutils.dropout's masks,
    # not resolved with nn.Dropout's at the same batch order, resolved at an earlier one: at the edge
    mean_vs_cls = c("masked LM mean vs [CLS] at 800 labels (seeds)")
    assert mean_vs_cls["verdict"] == "A better" and mean_vs_cls["p_adjusted"] > 0.01
    assert all(c(name)["family_size"] == 17 for name in m["comparisons"] if name != m["main_comparison"])
    article = m["article"]
    assert article["bert_is_a_next_word_lm"] is False and article["no_labels_needed_held"] is False
    assert article["labels_matter"]["verdict"] == "A better"
    # the floor: MiniLM never sits at the majority class; some miniature probes do (the chapter names them)
    floor = m["at_majority_class"]
    assert not any(v for k, v in floor.items() if k.startswith("MiniLM"))
    assert any(v for k, v in floor.items() if k.startswith("GPT-2 mini, random weights"))


def test_recipes_switches_on_one_miniature_at_equal_compute():
    """Nine arms of one miniature (4 layers, hidden 128, WordPiece-8k), 80 steps of 32 sequences of
    up to 64 tokens each (ELECTRA 72 steps, its equal FLOPs; batch x4 20 steps), scored on the same
    1,891 masked positions of 256 held-out sequences. Sharing layers is not resolved from the
    baseline on held-out MLM loss (the main comparison), nor are NSP or SOP; factorising (E=32),
    static masking (on a 400-document subset seen about six times) and four times the batch at
    equal tokens cost held-out loss. The pair heads and both Amazon fine-tunes sit at the majority
    class: at this budget those verdicts measure nothing, and the chapter says so. ELECTRA's RTD
    accuracy is at the all-original floor."""
    m = record("recipes")["metrics"]
    assert m["arms"][0] == "BERT (MLM)" and len(m["arms"]) == 9
    assert m["recipes"]["ELECTRA"]["steps"] == 72 and m["recipes"]["batch x4"]["steps"] == 20
    assert m["heldout"]["sequences"] == 256 and m["heldout"]["masked_positions"] == 1891
    main = comparison("recipes", m["main_comparison"])
    assert m["main_comparison"] == "ALBERT shared vs BERT (MLM): held-out MLM"
    assert main["verdict"] == "not resolved" and main["p_adjusted"] is None
    c = m["comparisons"]
    for arm, other in [("ALBERT factorised", "BERT (MLM)"), ("static (subset)", "dynamic (subset)"),
                       ("batch x4", "BERT (MLM)")]:
        assert c[f"{arm} vs {other}: held-out MLM"]["verdict"] == "B better", arm
        assert c[f"{arm} vs {other}: held-out MLM"]["family_size"] == 8
    for arm in ("BERT + NSP", "BERT + SOP"):
        assert c[f"{arm} vs BERT (MLM): held-out MLM"]["verdict"] == "not resolved", arm
    for kind in ("NSP", "SOP"):
        assert c[f"BERT + SOP vs BERT + NSP: {kind} accuracy"]["verdict"] == "not resolved"
    assert c["ELECTRA vs BERT (MLM): Amazon accuracy"]["verdict"] == "not resolved"
    assert all(m["pairs"]["at_majority_class"].values()) and all(m["downstream"]["at_majority_class"].values())
    p = m["parameters"]
    for arm in ("ALBERT factorised", "ALBERT shared"):
        assert p[arm]["ALBERT formula"] == p[arm]["encoder parameters (counted)"] < p["BERT (MLM)"]["encoder parameters (counted)"]
    e = m["electra"]
    assert abs(e["final"]["rtd_accuracy"] - e["rtd_floor"]) < 0.01


def test_bert_pretraining_lowers_the_heldout_loss_and_learns_nsp_but_buys_no_downstream_gain():
    """A miniature BERT (1.88M parameters) pretrained with MLM+NSP for 300 steps (0.80M tokens):
    the held-out MLM loss falls from ln V (8.99) to 6.68 on the same 2,219 masked positions,
    resolved against the random weights and against the first snapshot (step 100); NSP accuracy
    on 105 held-out pairs rises to 0.80, resolved against chance. Downstream on Amazon (512
    training reviews, 400 test reviews, three seeds, each start at its own learning rate) the
    pretrained miniature is not resolved from random weights over seeds (the main comparison),
    and on seed 0's test reviews the random weights are better: this pretraining buys no
    accuracy. MiniLM beats the pretrained miniature."""
    m = record("bert")["metrics"]
    assert m["main_comparison"] == "pretrained vs random miniature (Amazon, seeds)"
    c = m["comparisons"]
    pre = m["pretraining"]
    assert pre["steps"] == 300 and pre["parameters"] == 1_875_778 and pre["tokens_per_second"] > 0
    assert m["masking"]["chosen_special_tokens"] == 0 and abs(m["nsp"]["not_next_share"] - 0.5) < 0.01
    assert c["held-out MLM loss: final vs random weights (same masks)"]["verdict"] == "A better"
    assert c["held-out MLM loss: final vs step 100 (same masks)"]["verdict"] == "A better"
    assert c["held-out NSP accuracy: final vs random weights (same pairs)"]["verdict"] == "A better"
    assert not m["nsp_final_at_majority_class"] and pre["curve"][-1]["held-out NSP accuracy"] > 0.75
    assert [row["step"] for row in pre["curve"]] == [0, 100, 200, 300]
    assert all(a["held-out MLM loss"] > b["held-out MLM loss"] for a, b in zip(pre["curve"], pre["curve"][1:]))
    assert m["checkpoints_measured"] is None  # a CPU run: the real checkpoints are cited only
    assert comparison("bert", m["main_comparison"])["verdict"] == "not resolved"
    assert c["pretrained vs random miniature (test rows, seed 0)"]["verdict"] == "B better"
    assert c["MiniLM vs pretrained miniature (Amazon, seeds)"]["verdict"] == "A better"
    sizes = m["sizes"]["finetune"]
    assert sizes["lr_pretrained"] < sizes["lr_random"] and sizes["train"] == 512
    assert not any(v for k, v in m["at_majority_class"].items() if "MiniLM" in k)


def test_record_domain_shift_amazon_and_mnli_shifts_resolve_with_whole_splits():
    """Whole splits (1,400 training reviews per Amazon domain, 2,000 pairs per MultiNLI genre):
    the in-domain head beats the cross-domain heads on Amazon (the main comparison) and, unlike
    the small run, on MultiNLI too; books-dvd and electronics-kitchen stay the closest pairs
    (each is the other's closest source by proxy A-distance and its best in hindsight), and no
    correlation of distance with accuracy drop is resolved over six or ten pairs."""
    m = record("domain_shift", "record")["metrics"]
    assert m["sizes"]["per_domain"] == {"train": None, "validation": None, "test": None}
    assert m["main_comparison"] == "in-domain (amazon) vs cross-domain (amazon)"
    c = m["comparisons"]
    assert c["in-domain (amazon) vs cross-domain (amazon)"]["verdict"] == "A better"
    assert c["in-domain (mnli) vs cross-domain (mnli)"]["verdict"] == "A better"
    assert comparison("domain_shift", "in-domain (mnli) vs cross-domain (mnli)")["verdict"] == "not resolved"
    pairs = {"books": "dvd", "dvd": "books", "electronics": "kitchen", "kitchen": "electronics"}
    assert m["closest_source"]["amazon"] == pairs == m["best_source_in_hindsight"]["amazon"]
    for rows in m["correlations"].values():
        assert rows["proxy A-distance vs mean drop"]["verdict"] == "not resolved"
    assert (m["extremes"]["amazon"]["largest"]["source"], m["extremes"]["amazon"]["largest"]["target"]) == ("books", "electronics")


def test_record_single_source_dann_is_not_better_frozen_or_end_to_end():
    """Whole splits, five seeds: on frozen features DANN's accuracy is not resolved from
    source-only (as in the small run; an earlier small run's source-only win did not survive
    the whole splits), while its
    features stay more domain-invariant; the oracle's edge on dvd (+0.02 over seeds) does not
    survive Holm (an earlier record resolved it: a noise-level verdict). End to end (MiniLM
    fine-tuned on dvd as the target, 250 rows per source domain, three seeds) DANN is not
    resolved from source-only. TAPT on all 800 unlabelled dvd reviews lowers the held-out MLM
    loss but buys no accuracy."""
    m = record("single_source", "record")["metrics"]
    assert m["main_comparison"] == "DANN vs source-only (all targets and seeds)"
    c = m["comparisons"]
    assert c[m["main_comparison"]]["verdict"] == "not resolved" and c[m["main_comparison"]]["n"] == 10
    assert comparison("single_source", m["main_comparison"])["verdict"] == "not resolved"
    assert c["DANN vs source-only features: domain error (all targets and seeds)"]["verdict"] == "A better"
    oracle = c["oracle vs source-only on dvd (seeds)"]
    assert oracle["verdict"] == "not resolved" and oracle["low"] > 0 and oracle["p_adjusted"] >= 0.05
    assert c["DAPT vs original encoder on dvd (seeds)"]["verdict"] == "not resolved"
    dapt = m["dapt"]
    assert dapt["budget"]["sequences"] == 800 and dapt["held_out_after"]["mlm_loss"] < dapt["held_out_before"]["mlm_loss"]
    assert "10 runs (dvd and kitchen x 5 seeds)" in c[m["main_comparison"]]["sentence"]
    e2e = m["e2e"]["comparisons"]
    assert list(e2e) == ["dvd"] and m["e2e"]["settings"]["rows"]["train"] == 250
    assert e2e["dvd"]["verdict"] == "not resolved" and e2e["dvd"]["n"] == 3
    assert not any(v for k, v in m["at_majority_class"].items() if k.startswith("end to end"))


def test_record_multi_source_no_mixture_beats_pooling_and_end_to_end_pooling_wins():
    """Whole splits, three seeds: pooled over all four Amazon targets' test rows, no mixture,
    MDAN or similarity weighting is resolved from pooling (the main comparison, MoE-Att, +0.007;
    an earlier record's +0.017 win did not survive recomputed features, fp32 round-off apart),
    while the oracle beats it; over seeds nothing is resolved. End to end on books and kitchen
    (200 rows per source, one seed) pooling beats both mixtures after Holm, and no arm sits at
    the majority class."""
    m = record("multi_source", "record")["metrics"]
    assert m["main_comparison"] == "MoE-Att (Amazon, all targets) vs pooled (Amazon, all targets)"
    c = m["comparisons"]
    main = c[m["main_comparison"]]
    assert main["verdict"] == "not resolved" and main["n"] == 1600 and main["low"] < 0 < main["high"]
    assert comparison("multi_source", m["main_comparison"])["verdict"] == "not resolved"
    assert c["oracle (Amazon, all targets) vs pooled (Amazon, all targets)"]["verdict"] == "A better"
    for arm in ("MoE-Avg", "MDAN", "similarity-weighted"):
        assert c[f"{arm} (Amazon, all targets) vs pooled (Amazon, all targets)"]["verdict"] == "not resolved", arm
    assert m["main_over_seeds"]["verdict"] == "not resolved"
    assert "was not resolved for MoE-Att" in m["wright_augenstein"]["sentence"]
    e2e = m["e2e"]
    assert e2e["run"] and set(e2e["settings"]["targets"]) == {"books", "kitchen"}
    assert e2e["settings"]["rows_per_source"] == 200
    assert len(e2e["comparisons"]) == 4
    assert all(x["verdict"] == "B better" and x["family_size"] == 4 for x in e2e["comparisons"].values())
    assert not any(arm["at_majority_class"] for target in e2e["results"].values() for arm in target.values())


def test_record_bert_longer_pretraining_lowers_the_loss_but_fine_tuning_sits_at_the_floor():
    """Three times the pretraining (1,200 steps, 3.2M tokens, fp32): the held-out MLM loss falls
    8.99 -> 6.39 on the same 2,219 masked positions and NSP reaches 0.77 on 105 held-out pairs,
    resolved. Downstream (1,000 Amazon reviews, 800 test reviews, three seeds) the pretrained
    miniature is not resolved from random weights (the main comparison) and two of its three
    seeds sit at the majority class (as does one random seed): the record names them. MiniLM
    beats the pretrained miniature."""
    m = record("bert", "record")["metrics"]
    assert m["main_comparison"] == "pretrained vs random miniature (Amazon, seeds)"
    c = m["comparisons"]
    assert c[m["main_comparison"]]["verdict"] == "not resolved" and c[m["main_comparison"]]["n"] == 3
    assert c["MiniLM vs pretrained miniature (Amazon, seeds)"]["verdict"] == "A better"
    assert c["pretrained vs random miniature (test rows, seed 0)"]["verdict"] == "B better"
    for name in ("held-out MLM loss: final vs random weights (same masks)",
                 "held-out MLM loss: final vs step 300 (same masks)",
                 "held-out NSP accuracy: final vs random weights (same pairs)"):
        assert c[name]["verdict"] == "A better", name
    pre = m["pretraining"]
    assert pre["steps"] == 1200 and [row["step"] for row in pre["curve"]] == [0, 300, 600, 900, 1200]
    assert all(a["held-out MLM loss"] > b["held-out MLM loss"] for a, b in zip(pre["curve"], pre["curve"][1:]))
    assert m["sizes"]["finetune"]["train"] == 1000 and m["sizes"]["finetune"]["test"] == 800
    floor = {k for k, v in m["at_majority_class"].items() if v}
    assert floor == {"pretrained miniature / seed 0", "pretrained miniature / seed 2", "random miniature / seed 1"}
    from tlutils.results import record_findings

    record_text = record_findings("bert")
    assert "At the majority class in this run" in record_text and "pretrained miniature / seed 2" in record_text


def test_record_recipes_longer_pretraining_keeps_sharing_unresolved_and_every_downstream_arm_at_the_floor():
    """150 steps per arm (ELECTRA 136 at equal FLOPs, batch x4 37), fp32, 2,824 masked positions
    of 382 held-out sequences: sharing layers is again not resolved from BERT on held-out MLM
    loss (the main comparison); factorising (alone or with sharing), SOP and static masking cost
    held-out loss after Holm, NSP and batch x4 are not resolved. Every pair head and every Amazon
    fine-tune sits at the majority class, so those verdicts measure nothing, and the record's
    printout names them; ELECTRA's RTD accuracy sits at the all-original floor."""
    m = record("recipes", "record")["metrics"]
    assert m["main_comparison"] == "ALBERT shared vs BERT (MLM): held-out MLM"
    assert {k: v["steps"] for k, v in m["recipes"].items() if k in ("BERT (MLM)", "ELECTRA", "batch x4")} == \
        {"BERT (MLM)": 150, "ELECTRA": 136, "batch x4": 37}
    assert m["heldout"]["sequences"] == 382 and m["heldout"]["masked_positions"] == 2824
    c = m["comparisons"]
    assert c[m["main_comparison"]]["verdict"] == "not resolved"
    for arm, other in [("ALBERT factorised", "BERT (MLM)"), ("ALBERT factorised + shared", "BERT (MLM)"),
                       ("BERT + SOP", "BERT (MLM)"), ("static (subset)", "dynamic (subset)")]:
        assert c[f"{arm} vs {other}: held-out MLM"]["verdict"] == "B better", arm
    for arm in ("BERT + NSP", "batch x4"):
        assert c[f"{arm} vs BERT (MLM): held-out MLM"]["verdict"] == "not resolved", arm
    assert all(m["pairs"]["at_majority_class"].values()) and all(m["downstream"]["at_majority_class"].values())
    assert abs(m["electra"]["final"]["rtd_accuracy"] - m["electra"]["rtd_floor"]) < 0.01


def test_record_language_models_longer_pretraining_makes_the_miniature_bert_a_worse_encoder_than_random():
    """400 steps of 32 sequences of up to 128 tokens per miniature (fp32), probes with 50 to
    2,400 labels and five seeds: the masked model now beats unigram counts, the causal model
    still does not beat bigram counts; pooled over the four budgets and five seeds (20 runs)
    the pretrained miniature BERT's features are worse than its random twin's (the main
    comparison), resolved at 800 and 2,400 labels; the pretrained GPT-2 miniature beats its
    random twin and MiniLM beats the miniature from 200 labels on. Many GPT-2 probes sit at the
    majority class, and the record's printout counts them."""
    m = record("language_models", "record")["metrics"]
    assert {k: v["steps"] for k, v in m["pretraining"].items()} == {"causal LM (GPT-2)": 400, "masked LM (BERT)": 400}
    assert m["sizes"]["budgets"] == [50, 200, 800, 2400] and m["sizes"]["seeds"] == 5
    c = m["comparisons"]
    main = c[m["main_comparison"]]
    assert main["verdict"] == "B better" and main["n"] == 20 and "20 runs (4 label budgets x 5 seeds)" in main["sentence"]
    assert c["masked LM vs unigram baseline (held-out loss)"]["verdict"] == "A better"
    assert c["causal LM vs bigram baseline (held-out loss)"]["verdict"] == "not resolved"
    for n in (800, 2400):
        assert c[f"pretrained vs random-weight miniature BERT at {n} labels (seeds)"]["verdict"] == "B better"
    for n in (200, 800, 2400):
        assert c[f"MiniLM vs pretrained miniature BERT at {n} labels (seeds)"]["verdict"] == "A better"
    assert c["pretrained vs random-weight miniature GPT-2 at 2400 labels (seeds)"]["verdict"] == "A better"
    assert m["article"]["labels_matter"]["verdict"] == "A better" and m["article"]["no_labels_needed_held"] is False
    assert not any(v for k, v in m["at_majority_class"].items() if k.startswith("MiniLM"))


def test_record_self_training_gains_hold_over_ten_seeds_but_one_end_to_end_round_hurts():
    """Ten seeds, the whole SICK test split (4,906 pairs), fp32: on frozen features
    self-training beats the labels alone at every budget (the main comparison at 100 labels)
    and the noisy student beats plain self-training; a bad teacher's confident, balanced
    students still end far below a teacher on clean labels. The one end-to-end round with the
    whole pool (the small run's single draw had the student ahead) has the teacher better on
    all 4,906 pairs."""
    m = record("self_training", "record")["metrics"]
    assert m["sizes"]["seeds"] == 10 and m["sizes"]["evaluation"] == 4906
    c = m["comparisons"]
    assert m["main_comparison"] == "self-training (100 labels) vs supervised (100 labels)"
    assert c[m["main_comparison"]]["verdict"] == "A better" and c[m["main_comparison"]]["n"] == 10
    for b in (50, 100, 200, 400):
        assert c[f"self-training ({b} labels) vs supervised ({b} labels)"]["verdict"] == "A better"
        assert c[f"noisy student ({b} labels) vs self-training ({b} labels)"]["verdict"] == "A better"
    bias = m["confirmation_bias"]["comparisons"]
    assert bias["bad teacher's last student vs clean labels"]["verdict"] == "B better"
    assert bias["bad teacher, threshold 0"]["verdict"] == "not resolved"
    e2e = m["e2e"]["comparison"]
    assert e2e["verdict"] == "B better" and e2e["n"] == 4906 and e2e["b"] == "teacher (end to end)"


def test_record_contrastive_every_triplet_widens_supervised_simcse_lead():
    """Every SNLI triplet (6,656), all 1,500 selection pairs, three seeds, fp32: supervised SimCSE
    beats the random tiny encoder on STS-B test (the main comparison, +0.167 Spearman, and over
    seeds) and beats unsupervised SimCSE and the triplet loss, which is not resolved from random;
    2,048 more MiniLM steps of supervised SimCSE leave it a little below the packaged MiniLM,
    and the MRPC probe on the tiny encoders' features is not resolved."""
    m = record("contrastive", "record")["metrics"]
    assert m["sizes"]["train_triplets"] == 6656 and m["sizes"]["sts_select"] == 1500
    c = m["comparisons"]
    main = c[m["main_comparison"]]
    assert m["main_comparison"] == "supervised SimCSE vs random tiny encoder (spearman)"
    assert main["verdict"] == "A better" and main["n"] == 1379 and m["main_over_seeds"]["verdict"] == "A better"
    for name in ("unsupervised SimCSE vs random tiny encoder (spearman)", "supervised SimCSE vs unsupervised SimCSE (spearman)",
                 "supervised SimCSE vs triplet loss (spearman)"):
        assert c[name]["verdict"] == "A better", name
    assert c["triplet loss vs random tiny encoder (spearman)"]["verdict"] == "not resolved"
    assert c["minilm + supervised SimCSE vs minilm (packaged) (spearman)"]["verdict"] == "B better"
    assert c["MRPC probe: supervised SimCSE vs random tiny encoder (accuracy)"]["verdict"] == "not resolved"


def test_record_adversarial_every_method_trades_clean_accuracy_for_robustness_under_attack():
    """All four arms on 2,000 SICK pairs in fp32: FGM, PGD and FreeLB each beat plain
    fine-tuning under the attack of the training radius and each lose to it on clean pairs
    (Holm over the further comparisons); FGM's lead under attack holds over three seeds. The
    small run's finding that FGM loses less accuracy to text perturbations is not resolved."""
    m = record("adversarial", "record")["metrics"]
    assert m["sizes"]["train"] == 2000 and set(m["runs"]) == {"plain", "FGM", "PGD", "FreeLB"}
    assert not any(m["at_majority_class"].values())
    c = m["comparisons"]
    assert m["main_comparison"] == "FGM vs plain (attack 0.5)" and c["FGM vs plain (attack 0.5)"]["low"] > 0
    for arm in ("FGM", "PGD", "FreeLB"):
        assert c[f"{arm} vs plain (attack 0.5)"]["verdict"] == "A better"
        assert c[f"{arm} vs plain (clean)"]["verdict"] == "B better"
    seeds = m["main_over_seeds"]
    assert seeds["verdict"] == "A better" and seeds["n"] == 3 and seeds["low"] > 0
    assert {c[f"FGM vs plain (accuracy change, text {r})"]["verdict"] for r in ("0.1", "0.25")} == {"not resolved"}


def test_record_multi_task_the_small_runs_joint_gain_on_rte_does_not_hold_on_whole_splits():
    """Whole training splits, three seeds, fp32, 2,000 steps per feature arm: joint training vs
    single-task RTE (the main comparison, which the small run resolved for joint) is not
    resolved, and neither is any other comparison (16 after Holm). The end-to-end pair on 1,000
    RTE pairs sits at the majority class, and the record's printout says so."""
    m = record("multi_task", "record")["metrics"]
    assert m["main_comparison"] == "joint vs single rte" and m["settings"]["e2e_rte"] == 1000
    assert m["sizes"]["rte"]["train"] == 2490 and m["settings"]["steps"] == 2000
    assert comparison("multi_task", "joint vs single rte")["verdict"] == "A better"  # the small run
    c = m["comparisons"]
    assert c[m["main_comparison"]]["verdict"] == "not resolved" and c[m["main_comparison"]]["n"] == 3
    assert all(x["verdict"] == "not resolved" for x in c.values()) and len(c) == 17
    assert all(run["at_majority_class"] for run in m["end_to_end"].values())
    from tlutils.results import record_findings

    assert "end_to_end: RTE alone" in record_findings("multi_task").splitlines()[-1]
