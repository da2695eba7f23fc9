"""Results files written by chapters (tlutils.results)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tlutils import results
from tlutils.config import get_profile
from tlutils.results import load_results, save_results, summary

CHAPTER = "03-running-example"


def test_save_then_load_round_trips(isolated_outputs):
    metrics = {"pretrained": {"accuracy": 0.84, "f1": 0.88}, "scratch": {"accuracy": 0.68},
               "note": "smoke run", "epochs": 2, "curve": [0.5, 0.6]}
    path = save_results(CHAPTER, metrics, profile=get_profile("smoke"), wall_time_s=12.5)
    assert path == isolated_outputs / CHAPTER / "metrics.json"
    record = load_results(CHAPTER)
    assert record["metrics"] == metrics
    assert load_results(CHAPTER, root=isolated_outputs) == record


def test_results_file_is_valid_json_with_its_context(isolated_outputs):
    profile = get_profile("small")
    path = save_results(CHAPTER, {"accuracy": 0.8}, profile=profile, wall_time_s=3.25)
    record = json.loads(path.read_text())
    assert record["chapter"] == CHAPTER
    assert record["profile"] == "small" and record["model"] == profile.model_name
    assert record["wall_time_s"] == 3.25
    env = record["environment"]
    assert env["torch"] == torch.__version__ and env["cpu_count"] >= 1
    assert {"python", "transformers", "device", "torch_threads"} <= set(env)
    assert record["created"].endswith("+00:00")
    assert not list(path.parent.glob("*.tmp"))


def test_wall_time_may_be_unknown(isolated_outputs):
    save_results(CHAPTER, {}, profile=get_profile("smoke"))
    assert load_results(CHAPTER)["wall_time_s"] is None


def test_numpy_and_torch_values_become_plain_json(isolated_outputs):
    metrics = {"accuracy": np.float32(0.75), "n": np.int64(408), "ok": np.bool_(True),
               "curve": np.array([0.5, 0.25]), "loss": torch.tensor(0.125),
               "matrix": torch.tensor([[1, 2], [3, 4]]), "by_label": {np.int64(1): np.float64(0.5)},
               "pair": (np.int32(1), 2.0)}
    path = save_results(CHAPTER, metrics, profile=get_profile("smoke"))
    stored = json.loads(path.read_text())["metrics"]
    assert stored == {"accuracy": 0.75, "n": 408, "ok": True, "curve": [0.5, 0.25], "loss": 0.125,
                      "matrix": [[1, 2], [3, 4]], "by_label": {"1": 0.5}, "pair": [1, 2.0]}
    assert type(stored["n"]) is int and type(stored["ok"]) is bool


@pytest.mark.parametrize("bad", [float("nan"), np.float32("nan"), float("inf"), torch.tensor(float("nan"))])
def test_non_finite_values_are_refused_and_the_old_file_is_kept(isolated_outputs, bad):
    path = save_results(CHAPTER, {"accuracy": 0.8}, profile=get_profile("smoke"))
    with pytest.raises(ValueError):
        save_results(CHAPTER, {"accuracy": 0.9, "nested": {"f1": bad}}, profile=get_profile("smoke"))
    assert json.loads(path.read_text())["metrics"] == {"accuracy": 0.8}
    assert not list(path.parent.glob("*.tmp"))


def test_a_second_save_replaces_the_first(isolated_outputs):
    save_results(CHAPTER, {"accuracy": 0.5}, profile=get_profile("smoke"))
    save_results(CHAPTER, {"accuracy": 0.6}, profile=get_profile("small"))
    record = load_results(CHAPTER)
    assert record["metrics"] == {"accuracy": 0.6} and record["profile"] == "small"


def test_summary_lists_each_chapter(isolated_outputs):
    save_results("05-distillation", {"accuracy": 0.7}, profile=get_profile("small"), wall_time_s=200.0)
    save_results(CHAPTER, {"accuracy": 0.8}, profile=get_profile("smoke"), wall_time_s=30.0)
    (isolated_outputs / "empty-chapter").mkdir()
    rows = summary()
    assert [r["chapter"] for r in rows] == [CHAPTER, "05-distillation"]
    assert rows[0]["profile"] == "smoke" and rows[0]["model"] == "tiny-bert" and rows[0]["wall_time_s"] == 30.0
    assert rows[1]["profile"] == "small" and rows[1]["model"] == "minilm"
    assert summary(isolated_outputs) == rows


def test_summary_of_an_empty_folder(isolated_outputs):
    assert summary() == []


def test_main_prints_the_chapters(isolated_outputs, capsys):
    results.main([])
    assert "no results yet" in capsys.readouterr().out
    save_results(CHAPTER, {"accuracy": 0.8}, profile=get_profile("smoke"), wall_time_s=42.4)
    results.main([])
    out = capsys.readouterr().out
    assert CHAPTER in out and "tiny-bert" in out and "42 s" in out


def test_plain_leaves_python_values_alone():
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": math.pi}}
    assert results._plain(value) == value


def test_keep_records_copies_real_runs_only(isolated_outputs, tmp_path):
    save_results("smoke_chapter", {"accuracy": 0.5}, profile=get_profile("smoke"), wall_time_s=1.0)
    save_results("small_chapter", {"accuracy": 0.8}, profile=get_profile("small"), wall_time_s=90.0)
    kept = results.keep_records(destination=tmp_path / "records")
    assert [p.name for p in kept] == ["small_chapter.small.json"]
    record = json.loads(kept[0].read_text())
    assert record["metrics"] == {"accuracy": 0.8} and record["wall_time_s"] == 90.0


def test_environment_records_cpu_flags_and_precision():
    from tlutils.results import SPEED_FLAGS, environment

    env = environment("no")
    assert env["precision"] == "no" and set(env["cpu"]["flags"]) <= set(SPEED_FLAGS)
    assert isinstance(env["cpu"]["model"], str) and env["cpu"]["model"]
    assert environment()["precision"] in ("no", "bf16", "fp16")  # auto, resolved for this machine


def test_record_provenance_names_command_date_cpu_and_precision(tmp_path, monkeypatch):
    from tlutils.config import get_profile
    from tlutils.results import load_record, provenance, record_metrics, save_results

    monkeypatch.setenv("TLUTILS_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("TLUTILS_RECORD_COMMAND", "make records-traditional")
    path = save_results("demo", {"x": 1}, profile=get_profile("record"), wall_time_s=600.0)
    record = json.loads(path.read_text())
    assert record["command"] == "make records-traditional" and record["environment"]["precision"] == "no"
    line = provenance(record)
    assert "`make records-traditional`" in line and "10.0 min" in line and "fp32" in line
    assert record["created"][:10] in line and record["environment"]["cpu"]["model"] in line
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "demo.record.json").write_text(path.read_text())
    assert load_record("demo", root=tmp_path / "kept")["metrics"] == {"x": 1}
    assert load_record("missing", root=tmp_path / "kept") is None
    assert record_metrics("demo", root=tmp_path / "kept") == {"x": 1}
    assert record_metrics("missing", root=tmp_path / "kept") == {}  # a chapter whose record was never made


def test_record_findings_print_provenance_and_the_stored_sentences(tmp_path, monkeypatch):
    from tlutils.config import get_profile
    from tlutils.results import record_findings, save_results
    from tlutils.stats import compare

    import numpy as np

    y = np.array([0, 1] * 50)
    found = compare(y, y, 1 - y, names=("right", "wrong"))
    monkeypatch.setenv("TLUTILS_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("TLUTILS_RECORD_COMMAND", "make records-concepts")
    path = save_results("demo", {"comparisons": {"main": found.as_dict()}}, profile=get_profile("record"),
                        wall_time_s=60.0)
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "demo.record.json").write_text(path.read_text())
    text = record_findings("demo", root=tmp_path / "kept")
    first, second = text.splitlines()
    assert "`make records-concepts`" in first and "fp32" in first
    assert second == f"- {found.sentence()}" and "right better" in second
    assert "No record run of other is committed yet" in record_findings("other", root=tmp_path / "kept")
    with pytest.raises(KeyError, match="no comparison 'absent'"):
        record_findings("demo", ["absent"], root=tmp_path / "kept")


def test_record_findings_read_nested_sections_and_skip_empty_ones(tmp_path):
    from tlutils.results import record_findings
    from tlutils.stats import compare

    import numpy as np

    y = np.array([0, 1] * 50)
    one = compare(y, y, 1 - y, names=("a", "b")).as_dict()
    record = {"chapter": "demo", "profile": "record", "environment": {}, "created": "2026-11-29",
              "metrics": {"comparisons": {"x": one}, "over_seeds": one, "sweep": {"comparisons": {"t": one}},
                          "empty": None}}
    (tmp_path / "demo.record.json").write_text(json.dumps(record))
    text = record_findings("demo", root=tmp_path, sections=("comparisons", "over_seeds", "sweep.comparisons", "empty"))
    assert text.count(one["sentence"]) == 3
    assert "majority class" not in text


def test_record_findings_name_the_runs_at_the_majority_class(tmp_path):
    """A run that predicts one class is called that next to the record's verdicts."""
    from tlutils.results import record_findings

    flags = {"pretrained / seed 0": True, "random / seed 0": False, "mnli": {"telephone -> government": True}}
    record = {"chapter": "demo", "profile": "record", "environment": {}, "created": "2026-11-29",
              "metrics": {"at_majority_class": flags, "downstream": {"at_majority_class": {"ELECTRA": True}},
                          "comparisons": {}}}
    (tmp_path / "demo.record.json").write_text(json.dumps(record))
    last = record_findings("demo", root=tmp_path).splitlines()[-1]
    assert last.startswith("- At the majority class in this run")
    assert last.endswith(": pretrained / seed 0, mnli: telephone -> government, downstream: ELECTRA.")
    assert "random" not in last


def test_environment_records_the_commit():
    from tlutils.results import environment

    commit = environment()["commit"]
    assert commit is None or len(commit.rstrip("+")) >= 7


def test_many_runs_at_the_majority_class_are_counted_per_arm(tmp_path):
    from tlutils.results import record_findings

    flags = {f"{arm} / seed {s}": True for arm in ("GPT-2 mini", "BERT mini") for s in range(4)}
    flags["BERT mini / seed 9"] = False
    record = {"chapter": "demo", "profile": "record", "environment": {}, "created": "2026-11-29",
              "metrics": {"at_majority_class": flags}}
    (tmp_path / "demo.record.json").write_text(json.dumps(record))
    assert record_findings("demo", root=tmp_path).splitlines()[-1].endswith(": GPT-2 mini (4 runs), BERT mini (4 runs).")
