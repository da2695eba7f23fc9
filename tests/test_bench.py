"""The benchmark runs its three engines end to end (in miniature) and writes its record."""

import json
import subprocess
import sys


def test_bench_compares_fit_with_both_trainers_and_the_machine_limit(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "tlutils", "bench", "--train", "32", "--eval", "32", "--epochs", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert set(record["results"]) == {"fit", "trainer", "trainer-tuned"}
    assert record["speedup"] > 0 and record["speedup_vs_tuned"] > 0
    assert 0 < record["fraction_of_machine_limit"] < 1.5
    assert {v["verdict"] for v in record["validation_verdicts"].values()} <= {"A better", "B better", "not resolved"}
    assert "machine's limit" in done.stdout and "fit's peak memory" in done.stdout
    assert all(r["peak_rss_mb"] > 100 for r in record["results"].values())
    assert set(record["peak_memory_ratio"]) == {"trainer", "trainer-tuned"}
    assert all(isinstance(r["at_majority_class"], bool) for r in record["results"].values())
