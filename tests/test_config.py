"""Profiles, seeding, precision and output folders (tlutils.config)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tlutils import config
from tlutils.config import (PROFILE_NAMES, PROFILES, Profile, get_profile, output_dir,
                            project_root, resolve_mixed_precision, resolve_profile_name, set_seed)
from tlutils.errors import ConfigError, TLUtilsError


@pytest.mark.parametrize("name, model", [("smoke", "tiny-bert"), ("small", "minilm"),
                                         ("full", "bert-base-uncased")])
def test_get_profile_returns_the_named_profile(name, model):
    profile = get_profile(name)
    assert isinstance(profile, Profile)
    assert profile.name == name
    assert profile.model_name == model
    assert profile == PROFILES[name]


def test_profiles_trade_fidelity_for_time():
    smoke, small, record, full = (get_profile(n) for n in PROFILE_NAMES)
    assert smoke.max_train_examples <= 64 and smoke.max_eval_examples <= 64
    assert small.max_train_examples > smoke.max_train_examples
    assert full.max_train_examples is None and full.max_eval_examples is None
    # the record profile: the small profile's model on whole splits, fp32 pinned, three seeds
    assert record.model_name == small.model_name and record.max_train_examples is None
    assert record.mixed_precision == "no" and len(record.seeds) == 3


def test_auto_honours_the_environment(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in PROFILE_NAMES:
        monkeypatch.setenv("TLUTILS_PROFILE", name)
        assert get_profile("auto").name == name
        assert get_profile().name == name  # "auto" is the default


def test_auto_ignores_a_blank_environment_value(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TLUTILS_PROFILE", "  ")
    assert resolve_profile_name("auto") == "small"


def test_auto_is_small_without_cuda_and_full_with_it(monkeypatch):
    monkeypatch.delenv("TLUTILS_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_profile("auto").name == "small"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_profile("auto").name == "full"


def test_explicit_name_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("TLUTILS_PROFILE", "full")
    assert get_profile("smoke").name == "smoke"


@pytest.mark.parametrize("name", ["medium", "Smoke", ""])
def test_unknown_profile_names_the_valid_ones(name):
    with pytest.raises(ConfigError) as info:
        get_profile(name)
    message = str(info.value)
    assert repr(name) in message
    for valid in (*PROFILE_NAMES, "auto"):
        assert valid in message
    assert isinstance(info.value, TLUtilsError) and isinstance(info.value, ValueError)


def test_unknown_profile_from_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("TLUTILS_PROFILE", "tiny")
    with pytest.raises(ConfigError, match="TLUTILS_PROFILE") as info:
        get_profile("auto")
    assert "'tiny'" in str(info.value) and "smoke" in str(info.value)


def test_overrides_change_only_the_given_fields():
    base = get_profile("small")
    registered = PROFILES["small"].epochs
    changed = get_profile("small", epochs=registered + 5, batch_size=8)
    assert (changed.epochs, changed.batch_size) == (registered + 5, 8)
    assert changed.replace(epochs=base.epochs, batch_size=base.batch_size) == base
    assert PROFILES["small"].epochs == registered  # the registry is untouched


def test_replace_returns_a_copy_of_a_frozen_profile():
    smoke = get_profile("smoke")
    longer = smoke.replace(max_length=256)
    assert longer.max_length == 256 and smoke.max_length == 128
    assert longer.name == smoke.name
    with pytest.raises(AttributeError):
        smoke.epochs = 10  # type: ignore[misc]


def _draws():
    return torch.rand(5).tolist(), np.random.rand(5).tolist(), [random.random() for _ in range(5)]


def test_set_seed_repeats_torch_numpy_and_python_draws():
    set_seed(123)
    first = _draws()
    set_seed(123)
    assert _draws() == first
    set_seed(124)
    other = _draws()
    for a, b in zip(first, other):
        assert a != b


@pytest.mark.parametrize("mode", ["no", "bf16"])
@pytest.mark.parametrize("cpu", [True, False])
def test_explicit_precision_passes_through(mode, cpu):
    assert resolve_mixed_precision(mode, cpu=cpu) == mode


def test_fp16_passes_on_a_gpu_and_is_refused_on_a_cpu():
    assert resolve_mixed_precision("fp16", cpu=False) == "fp16"
    with pytest.raises(ConfigError, match="bf16' or 'no'"):
        resolve_mixed_precision("fp16", cpu=True)


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="'auto', 'no', 'bf16' or 'fp16'"):
        resolve_mixed_precision("fp8", cpu=True)


def test_auto_precision_on_this_cpu_follows_native_bf16():
    expected = "bf16" if config.cpu_supports_bf16() else "no"
    assert resolve_mixed_precision("auto", cpu=True) == expected


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_auto_precision_on_a_cpu_uses_bf16_only_where_native(monkeypatch, native, expected):
    monkeypatch.setattr(config, "cpu_supports_bf16", lambda: native)
    assert resolve_mixed_precision("auto", cpu=True) == expected


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((8, 0), "bf16"), ((8, 6), "bf16"),
                                                    ((9, 0), "bf16"), ((7, 0), "fp16")])
def test_auto_precision_on_a_gpu_follows_compute_capability(monkeypatch, capability, expected):
    # A T4 (sm_75) reports is_bf16_supported() == True through emulation: the capability decides.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert resolve_mixed_precision("auto", cpu=False) == expected


@pytest.mark.parametrize("rank, expected", [(None, True), ("0", True), ("1", False)])
def test_is_main_process_reads_the_launchers_rank(monkeypatch, rank, expected):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert config.is_main_process() is expected


def test_cpu_is_inferred_from_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError):
        resolve_mixed_precision("fp16")


def test_output_dir_respects_the_environment(isolated_outputs):
    path = output_dir("03-running-example")
    assert path == isolated_outputs / "03-running-example"
    assert path.is_dir()


def _fake_project(root: Path) -> Path:
    (root / "tlutils").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    sub = root / "book" / "pretrained"
    sub.mkdir(parents=True)
    return sub


def test_project_root_finds_the_repository_from_a_subfolder(tmp_path):
    sub = _fake_project(tmp_path / "repo")
    assert project_root(sub) == (tmp_path / "repo").resolve()
    assert project_root(tmp_path / "repo") == (tmp_path / "repo").resolve()


def test_project_root_needs_both_markers(tmp_path):
    (tmp_path / "_toc.yml").write_text("root: intro\n")  # no tlutils/ folder
    assert project_root(tmp_path) is None
    (tmp_path / "tlutils").write_text("a file, not a package folder")
    assert project_root(tmp_path) is None


def test_project_root_of_this_checkout():
    repo = Path(__file__).resolve().parents[1]
    assert project_root(repo / "tests") == repo


def test_output_dir_defaults_to_the_repository_outputs(tmp_path, monkeypatch):
    sub = _fake_project(tmp_path / "repo")
    monkeypatch.delenv("TLUTILS_OUTPUT_DIR", raising=False)
    monkeypatch.chdir(sub)
    assert output_dir("ch") == (tmp_path / "repo").resolve() / "outputs" / "ch"


def test_output_dir_outside_a_repository_uses_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("TLUTILS_OUTPUT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert output_dir("ch").resolve() == tmp_path.resolve() / "outputs" / "ch"


def test_stopwatch_measures_elapsed_time(monkeypatch):
    now = iter([10.0, 12.5])
    monkeypatch.setattr(config.time, "perf_counter", lambda: next(now))
    assert config.Stopwatch().elapsed() == pytest.approx(2.5)


def test_stopwatch_laps_charge_each_stage_the_time_since_the_previous_lap(monkeypatch):
    now = iter([10.0, 11.0, 14.0, 14.5, 16.0, 17.0, 17.25])
    monkeypatch.setattr(config.time, "perf_counter", lambda: next(now))
    clock = config.Stopwatch()  # 10.0
    assert clock.lap("data") == pytest.approx(1.0)  # 11.0
    assert clock.lap("training") == pytest.approx(3.0)  # 14.0
    assert clock.since_lap() == pytest.approx(0.5)  # 14.5
    clock.lap("data")  # 16.0: a stage named twice adds up
    assert clock.laps == pytest.approx({"data": 3.0, "training": 3.0})
    assert clock.elapsed() == pytest.approx(7.0)  # 17.0
    assert clock.since_lap() == pytest.approx(1.25)  # 17.25


def test_quiet_progress_silences_both_libraries_and_restores_them():
    import datasets
    from transformers.utils import logging as hf_logging

    from tlutils.config import quiet_progress

    datasets.enable_progress_bars()
    hf_logging.enable_progress_bar()
    with quiet_progress():
        assert not datasets.is_progress_bar_enabled() and not hf_logging.is_progress_bar_enabled()
    assert datasets.is_progress_bar_enabled() and hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    with quiet_progress():
        pass
    assert not datasets.is_progress_bar_enabled()  # a state that was off stays off
    datasets.enable_progress_bars()


@pytest.fixture
def bf16_cpu(monkeypatch, tmp_path):
    """A CPU whose flags include avx512_bf16, with no instruction-set cap in the environment."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    real_path = config.Path
    monkeypatch.setattr(config, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    for name in config.ISA_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("variable, value", [("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2"),
                                             ("MKL_ENABLE_INSTRUCTIONS", "AVX2"), ("DNNL_MAX_CPU_ISA", "AVX512_CORE")])
def test_an_isa_cap_below_bf16_turns_native_bf16_off(monkeypatch, bf16_cpu, variable, value):
    # A CPU with avx512_bf16, capped to older instructions, is measured as the older kind: fp32.
    assert config.cpu_supports_bf16()
    monkeypatch.setenv(variable, value)
    assert config.isa_caps() == {variable: value}
    assert not config.cpu_supports_bf16()
    assert resolve_mixed_precision("auto", cpu=True) == "no"


def test_an_isa_cap_that_keeps_bf16_leaves_it_on(monkeypatch, bf16_cpu):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert config.cpu_supports_bf16()


def test_records_name_the_isa_caps_they_ran_under(monkeypatch):
    from tlutils.results import cpu_info

    for name in config.ISA_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert "isa_caps" not in cpu_info()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert cpu_info()["isa_caps"] == {"ATEN_CPU_CAPABILITY": "avx2"}


def test_records_and_the_precision_rule_read_the_cpu_through_one_reader(bf16_cpu):
    """cpu_info (what records say) and cpu_supports_bf16 (what auto picks) see the same flags."""
    from tlutils.results import cpu_info

    assert config.read_cpuinfo()["flags"] == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_info()["flags"] == ["avx2", "avx512f", "avx512_bf16"] and config.cpu_supports_bf16()
