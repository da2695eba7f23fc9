"""Pretraining runs: the recipe cache, snapshots, throughput, and an exact resume after a stop."""

from __future__ import annotations

import pytest
import torch
from pretraining_helpers import tiny_corpus

from tlutils.pretraining import Recipe, pretrain, recipe_key
from tlutils.pretraining.runs import run_folder

TINY = Recipe(family="bert", objective="mlm+nsp", vocab_size=80, hidden=32, layers=2, heads=2, intermediate=64,
              max_length=32, steps=6, batch_size=8, heldout_fraction=0.1, max_heldout_examples=16,
              mixed_precision="no", learning_rate=2e-3)


class Stop(Exception):
    """Raised by a callback to stop a run as a kill would (after the step's checkpoint)."""


@pytest.fixture(scope="module")
def corpus():
    return tiny_corpus(150)


def weights(run):
    return {k: v.clone() for k, v in run.load().state_dict().items()}


def test_recipe_key_covers_every_field_and_the_inputs():
    base = recipe_key(TINY, "c", "t", "no")
    assert recipe_key(TINY, "c", "t", "no") == base
    for change in ({"steps": 9}, {"seed": 1}, {"masking": "static"}, {"share_layers": True}, {"batch_size": 16}):
        assert recipe_key(TINY.replace(**change), "c", "t", "no") != base
    assert len({base, recipe_key(TINY, "c2", "t", "no"), recipe_key(TINY, "c", "t2", "no"),
                recipe_key(TINY, "c", "t", "bf16")}) == 4


def test_pretrain_records_throughput_keeps_snapshots_and_is_cached(corpus, isolated_outputs, capsys):
    run = pretrain(TINY.replace(snapshot_every=3, eval_every=3), corpus=corpus, progress=False)
    record = run.record
    assert run.folder.is_relative_to(isolated_outputs / "pretraining" / "runs")
    assert record["steps"] == 6 and record["snapshots"] == [3] and [s for s, _ in run.snapshots] == [3]
    assert record["tokens_per_second"] > 0 and record["trained_tokens"] > 6 * 8 * 5
    assert record["trained_tokens"] <= 6 * 8 * 32 and record["precision"] == "no"
    assert record["final"]["mlm_loss"] < record["initial"]["mlm_loss"]  # it learns something in 6 steps
    assert [e["step"] for e in record["history"]["evaluations"]] == [3, 6]
    assert not (run.folder / "checkpoint").exists()  # the resume state is dropped once done
    assert "tokens/s" in capsys.readouterr().out
    from transformers import AutoModelForSequenceClassification

    classifier = run.load(AutoModelForSequenceClassification, num_labels=2)
    assert torch.equal(classifier.bert.embeddings.word_embeddings.weight,
                       run.load().bert.embeddings.word_embeddings.weight)
    assert run.load(step=3) is not None and len(run.tokenizer) == 80

    calls = []
    again = pretrain(TINY.replace(snapshot_every=3, eval_every=3), corpus=corpus, callbacks=[calls.append])
    assert calls == [] and again.record == record and "cached" in capsys.readouterr().out


@pytest.mark.parametrize("family, objective", [("bert", "mlm+nsp"), ("electra", "electra")])
def test_a_stopped_run_resumes_to_the_same_weights(corpus, isolated_outputs, family, objective):
    """Stopped after step 3 (its checkpoint written), then asked for again: the same weights as
    a run that was never stopped (dropout, masks, ELECTRA's samples, data order all restored)."""
    recipe = TINY.replace(family=family, objective=objective)
    straight = weights(pretrain(recipe, corpus=corpus, checkpoint_every=3, progress=False, verbose=False))

    def stop(state):
        if state["global_step"] == 3:
            raise Stop

    with pytest.raises(Stop):  # force: train again in the same folder (same cached tokenizer)
        pretrain(recipe, corpus=corpus, checkpoint_every=3, callbacks=[stop], force=True, progress=False)
    assert (run_folder(recipe, corpus) / "checkpoint" / "checkpoint").is_dir()
    assert not (run_folder(recipe, corpus) / "record.json").exists()
    resumed = pretrain(recipe, corpus=corpus, checkpoint_every=3, progress=False, verbose=False)
    assert resumed.record["resumed"] and resumed.record["steps"] == 6
    again = weights(resumed)
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[k], again[k]) for k in straight)
