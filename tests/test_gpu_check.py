"""The prepared GPU check, run on the CPU in miniature (the same code, tiny sizes), with the
``datasets`` package hidden as on the GPU machine, so the script cannot rot before a GPU is lent."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "benchmarks" / "gpu_check.py"
HIDE_DATASETS = ("import runpy, sys; sys.modules['datasets'] = None; sys.argv = sys.argv[1:]; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")


def test_gpu_check_prepares_under_64_mib_and_dry_runs_without_datasets(tmp_path):
    assets, out = tmp_path / "assets", tmp_path / "out"
    prepared = subprocess.run([sys.executable, str(CHECK), "prepare", str(assets)], capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    size = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    assert size + sum(p.stat().st_size for p in (ROOT / "tlutils").rglob("*.py")) < 60 * 2**20  # room for the tree
    ran = subprocess.run([sys.executable, "-c", HIDE_DATASETS, str(CHECK), "run", str(assets), str(out), "--dry-run"],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["precision_rule"]["T4 (7.5)"] == "fp16"
    assert report["throughput"]["samples_per_second"] > 0 and 0 < report["throughput"]["mfu_of_measured_peak"] < 1
    assert all(r["finite"] and r["falls"] for r in report["fixed_batch"].values())
    assert report["minilm_mrpc"]["vs_majority"]["verdict"] in ("A better", "B better", "not resolved")
    assert "MFU" in ran.stdout


def test_gpu_check_shell_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0
