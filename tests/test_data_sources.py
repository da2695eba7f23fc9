"""Before a build: which tasks can be read at all, and the one line that says what to do."""

from __future__ import annotations

import subprocess
import sys

from tlutils.data import TASKS, data_check_message, hub_reachable, missing_data


def test_the_staged_folder_serves_every_task(data_dir):
    assert missing_data(data_dir=data_dir, hub=False) == []


def test_without_folder_or_hub_every_task_is_missing_and_the_line_names_both_fixes(tmp_path):
    missing = missing_data(data_dir=tmp_path, hub=False)
    assert missing == list(TASKS)
    line = data_check_message(missing)
    assert "\n" not in line and "TLUTILS_DATA_DIR" in line and "hub" in line
    assert "sick" in line.split("no hub source")[0].split("(")[-1]  # the tasks that need the folder are named
    assert "python -m tlutils data --fetch sick sick_relatedness amazon --to DIR" in line  # and how to get it


def test_with_the_hub_only_the_tasks_without_a_hub_source_are_missing(tmp_path):
    missing = missing_data(data_dir=tmp_path, hub=True)
    assert missing and all(TASKS[name].hub is None for name in missing)
    assert {"mrpc", "rte"}.isdisjoint(missing)


def test_offline_switch_means_no_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False


def test_cli_data_check_exits_2_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TLUTILS_DATA_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "tlutils", "data", "--tasks", "mrpc", "sick"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "No data for mrpc, sick" in proc.stderr
