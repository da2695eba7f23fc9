"""Results files: every chapter writes ``outputs/<chapter>/metrics.json``.

Tests assert on these files and the book's results pages read them, so a number in the prose
is always one the notebook computed when it ran. ``python -m tlutils.results`` prints the
chapters found, with their profile and wall time.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from tlutils.config import OUTPUT_ENV, Profile, is_main_process, output_dir, project_root

COMMAND_ENV = "TLUTILS_RECORD_COMMAND"  # set by `make records-small` / `make records-<part>`: how a record was made


def _plain(value: Any) -> Any:
    """Turn NumPy/torch scalars and containers into JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and the instruction-set flags that decide its speed (bf16 or not).

    Two machines of "the same" kind differ here (AVX2-only vs native bf16), and a throughput
    or a verdict measured on one may not hold on the other: every record carries this, and
    the instruction-set caps of the environment where any are set (``isa_caps``).
    """
    from tlutils.config import isa_caps, read_cpuinfo

    cpu = read_cpuinfo()
    info = {"model": cpu["model"] or platform.processor() or platform.machine(),
            "flags": [f for f in SPEED_FLAGS if f in cpu["flags"]]}
    caps = isa_caps()  # a run capped to older instructions measures that older kind of CPU
    return {**info, "isa_caps": caps} if caps else info


def environment(precision: Optional[str] = None) -> dict[str, Any]:
    """Where the numbers were measured: versions, device, CPU flags, threads and precision."""
    import transformers

    from tlutils.config import resolve_mixed_precision

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "device": device,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu": cpu_info(), "precision": resolve_mixed_precision(precision or "auto"),
            "commit": git_commit()}


def git_commit() -> Optional[str]:
    """The commit of the code that made a record (``+`` when the tree had changes), if in git."""
    import subprocess

    root = project_root()
    if root is None:
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def save_results(chapter: str, metrics: dict[str, Any], *, profile: Profile,
                 wall_time_s: Optional[float] = None) -> Path:
    """Write ``metrics`` (nested dicts of numbers and strings) for ``chapter``; return the path.

    Only the main process writes (rank 0 under ``accelerate launch``); the write is atomic."""
    record = {"chapter": chapter, "profile": profile.name, "model": profile.model_name,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": os.environ.get(COMMAND_ENV),
              "wall_time_s": _plain(wall_time_s), "environment": environment(profile.mixed_precision),
              "metrics": _plain(metrics)}
    path = output_dir(chapter) / "metrics.json"
    if not is_main_process():  # under accelerate launch only rank 0 writes
        return path
    tmp = path.with_name(f"metrics.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, allow_nan=False))
    tmp.replace(path)
    return path


def shown_path(path: os.PathLike) -> str:
    """``path`` as a chapter prints it: relative to the project (``outputs/x/metrics.json``) or to
    ``$TLUTILS_OUTPUT_DIR``, never the machine's absolute path (which the published page would show)."""
    path = Path(path).resolve()
    bases = [(Path(os.environ[OUTPUT_ENV]).resolve(), f"${OUTPUT_ENV}/")] if os.environ.get(OUTPUT_ENV) else []
    root = project_root()
    bases += [(root.resolve(), "")] if root else []
    for base, prefix in bases:
        if path.is_relative_to(base):
            return prefix + path.relative_to(base).as_posix()
    return path.name


def load_results(chapter: str, root: Optional[os.PathLike] = None) -> dict[str, Any]:
    """Read the results file of ``chapter`` (from ``root`` or the default outputs folder)."""
    path = (Path(root) / chapter if root else output_dir(chapter)) / "metrics.json"
    return json.loads(path.read_text())


def summary(root: Optional[os.PathLike] = None) -> list[dict[str, Any]]:
    """One row per chapter results file: chapter, profile, model, wall time."""
    base = Path(root) if root else Path(os.environ.get(OUTPUT_ENV) or (project_root() or Path.cwd()) / "outputs")
    rows = []
    for path in sorted(base.glob("*/metrics.json")):
        record = json.loads(path.read_text())
        rows.append({k: record.get(k) for k in ("chapter", "profile", "model", "wall_time_s", "created")})
    return rows


RECORDS_DIR = Path("benchmarks") / "results" / "chapters"


def records_dir() -> Path:
    """The committed records folder of this project (``benchmarks/results/chapters``)."""
    return (project_root() or Path.cwd()) / RECORDS_DIR


def load_record(chapter: str, profile: str = "record",
                root: Optional[os.PathLike] = None) -> Optional[dict[str, Any]]:
    """The committed record ``<chapter>.<profile>.json``, or None when it was never made.

    Chapters use it to show the resolved result of a longer run next to their own small run:
    ``rec = load_record("fine_tuning")``, then :func:`provenance` and the record's comparisons.
    """
    base = Path(root) if root else records_dir()
    path = base / f"{chapter}.{profile}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def record_metrics(chapter: str, profile: str = "record", root: Optional[os.PathLike] = None) -> dict[str, Any]:
    """The ``metrics`` of :func:`load_record`, or ``{}`` when the record was never made, so a
    chapter can ask ``record_metrics("fine_tuning").get("comparisons", {})`` either way."""
    return (load_record(chapter, profile, root) or {}).get("metrics") or {}


def provenance(record: dict[str, Any]) -> str:
    """One line saying how a record was made: command, date, minutes, CPU and its flags, precision."""
    env = record.get("environment", {})
    cpu = env.get("cpu", {})
    flags = ", ".join(cpu.get("flags", [])) or "flags not recorded"
    minutes = (record.get("wall_time_s") or 0) / 60
    precision = {"no": "fp32"}.get(env.get("precision"), env.get("precision") or "precision not recorded")
    return (f"{record.get('profile', '?')} run of {record.get('chapter', '?')}: "
            f"`{record.get('command', 'command not recorded')}`, {record.get('created', '?')[:10]}, "
            f"{minutes:.1f} min on {env.get('cpu_count', '?')} cores of {cpu.get('model', env.get('device', '?'))} "
            f"({flags}), {precision}, {record.get('model', '?')}"
            + (f", commit {env['commit']}" if env.get("commit") else ""))


def record_findings(chapter: str, keys: Optional[Sequence[str]] = None, profile: str = "record",
                    root: Optional[os.PathLike] = None,
                    sections: Sequence[str] = ("comparisons",)) -> str:
    """A committed record's findings, for a chapter to print next to its own run: one line of
    provenance, then the generated sentence of each stored comparison. Says so when the record
    was never made.

    Args:
        keys: which comparisons of ``metrics["comparisons"]``, in that order (default all).
        sections: where the record keeps comparisons: dotted paths into its metrics, each a
            dict of stored comparisons or one (e.g. ``"main_over_seeds"``, ``"sweep.comparisons"``);
            an empty or missing section is skipped.

    Example:
        >>> print(record_findings("sentence_pair_classification", ["rte_vs_majority"]))
    """
    record = load_record(chapter, profile, root)
    if record is None:
        return (f"No {profile} run of {chapter} is committed yet: `make records-<part>` makes one "
                f"(benchmarks/results/chapters/{chapter}.{profile}.json).")
    lines = [f"The {provenance(record)}:"]
    for section in sections:
        found: Any = record.get("metrics", {})
        for part in section.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if not found:
            continue
        stored = {"": found} if "sentence" in found else found
        chosen = list(keys) if keys is not None and section == "comparisons" else list(stored)
        missing = [k for k in chosen if k not in stored]
        if missing:
            raise KeyError(f"{chapter}.{profile}.json has no comparison {', '.join(map(repr, missing))} "
                           f"(it has {', '.join(map(repr, stored))}).")
        lines += [f"- {stored[k]['sentence']}" for k in chosen]
    floor = at_majority_class_runs(record.get("metrics", {}))
    if len(floor) > 6:  # many seeds and budgets: one entry per arm, with its count of runs
        arms = collections.Counter(name.split(" / ")[0] for name in floor)
        floor = [arm if n == 1 else f"{arm} ({n} runs)" for arm, n in arms.items()]
    if floor:
        lines.append(f"- At the majority class in this run (one class predicted for every example: "
                     f"their accuracy measures nothing): {', '.join(floor)}.")
    return "\n".join(lines)


def at_majority_class_runs(metrics: Any, prefix: str = "") -> list[str]:
    """The runs a record flags as sitting at the majority class: the true entries of every
    ``at_majority_class`` dict in its metrics (at the top or inside a section such as
    ``downstream``), by name; a section's name and nested names are joined by ``": "``."""
    if not isinstance(metrics, dict):
        return []
    found: list[str] = []
    for key, value in metrics.items():
        if key == "at_majority_class":
            found += _true_flags(value, prefix)
        elif isinstance(value, dict):
            found += at_majority_class_runs(value, f"{prefix}{key}: ")
    return found


def _true_flags(flags: Any, prefix: str) -> list[str]:
    if isinstance(flags, dict):
        return [name for key, value in flags.items() for name in _true_flags(value, f"{prefix}{key}: ")]
    return [prefix[:-2]] if flags is True else []


def stored_comparisons(metrics: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every comparison stored anywhere in a record's metrics, by dotted path.

    A stored comparison is what :meth:`tlutils.stats.Comparison.as_dict` wrote (it has a
    ``verdict`` and a generated ``sentence``); ``comparisons.full_vs_head_only`` and
    ``sweep.comparisons.T=4`` are paths of this kind.
    """
    found: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and "verdict" in value and "sentence" in value:
            found[path] = value
        elif isinstance(value, dict):
            found.update(stored_comparisons(value, f"{path}."))
    return found


FINDING_FIELDS = ("chapter", "profile", "path", "main", "a", "b", "metric", "value_a", "value_b",
                  "difference", "low", "high", "n", "method", "p_adjusted", "family_size", "verdict",
                  "sentence")


def findings(root: Optional[os.PathLike] = None,
             profiles: Sequence[str] = ("small", "record", "full")) -> list[dict[str, Any]]:
    """One row per comparison in every committed record: what the book found, run by run.

    Rows carry the record's chapter and profile, the comparison's dotted path in the metrics,
    whether it is the chapter's main comparison (``metrics["main_comparison"]``), and the stored
    fields of :meth:`tlutils.stats.Comparison.as_dict` (arms, metric, values, interval, verdict,
    generated sentence). Nothing is recomputed: the verdicts are the ones the chapters printed.

    Args:
        root: the records folder (default ``benchmarks/results/chapters`` of the project).
        profiles: which records to read.

    Returns:
        rows (dicts with :data:`FINDING_FIELDS`), ordered by chapter, profile, path.
    """
    base = Path(root) if root else records_dir()
    rows = []
    for path in sorted(base.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("profile") not in profiles:
            continue
        metrics = record.get("metrics", {})
        main = metrics.get("main_comparison")
        for where, c in stored_comparisons(metrics).items():
            row = {"chapter": record.get("chapter"), "profile": record.get("profile"), "path": where,
                   "main": main is not None and where == f"comparisons.{main}",
                   **{f: c.get(f) for f in FINDING_FIELDS[4:]}}
            rows.append(row)
    return rows


def keep_records(root: Optional[os.PathLike] = None, destination: Optional[os.PathLike] = None,
                 profiles: tuple[str, ...] = ("small", "record", "full")) -> list[Path]:
    """Copy the results files of real (not smoke) runs to the committed records folder.

    ``make records-small`` calls this after a build, so ``benchmarks/results/chapters/<chapter>.<profile>.json``
    holds the measurements behind the published book; tests assert the chapters' claims on
    those records (a smoke run checks that a chapter works, not what it finds).
    """
    base = Path(root) if root else Path(os.environ.get(OUTPUT_ENV) or (project_root() or Path.cwd()) / "outputs")
    dest = Path(destination) if destination else records_dir()
    kept = []
    for path in sorted(base.glob("*/metrics.json")):
        record = json.loads(path.read_text())
        if record.get("profile") not in profiles:
            continue
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / f"{record['chapter']}.{record['profile']}.json"
        target.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        kept.append(target)
    return kept


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m tlutils.results``: chapter wall times; ``--keep``: also copy the records."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--keep", action="store_true",
                        help=f"copy small/record/full results files to {RECORDS_DIR}")
    parser.add_argument("--root", default=None, help="the outputs folder to read (default: outputs/)")
    args = parser.parse_args(argv)
    rows = summary(args.root)
    if not rows:
        print("no results yet: run a chapter (make book) first")
        return
    print(f"{'chapter':<34} {'profile':<7} {'model':<20} {'wall time':>10}")
    for r in rows:
        wall = f"{r['wall_time_s']:.0f} s" if r["wall_time_s"] is not None else "-"
        print(f"{r['chapter']:<34} {r['profile']:<7} {r['model']:<20} {wall:>10}")
    if args.keep:
        for path in keep_records(args.root):
            print(f"kept {path}")


if __name__ == "__main__":
    main()
