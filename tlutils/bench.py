"""Benchmark: ``tlutils.train.fit`` against ``transformers.Trainer`` with its defaults.

Same model (the packaged MiniLM-L6), same data (MRPC train, scored on MRPC validation), same
batch size, epochs and learning rate; each engine runs in its own process so that peak memory
is its own. Prints samples/s of each, their ratio and both validation scores, and writes them
to ``benchmarks/results/fit_vs_trainer.json``::

    python -m tlutils.bench                 # full MRPC train, 3 epochs (about 15 minutes on 2 cores)
    python -m tlutils.bench --train 512 --epochs 1   # a quick look

What ``fit`` does differently is visible in its settings: bf16 autocast where the CPU has
native bf16 (see :func:`tlutils.config.resolve_mixed_precision`), length-grouped batches with
dynamic padding, a fused AdamW step. The Trainer runs as a reader would call it: defaults.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _data(train: int | None, seed: int):
    from tlutils.data import load_task, tokenize_task
    from tlutils.models import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    data = load_task("mrpc", max_train_examples=train, seed=seed)
    encoded, _ = tokenize_task(data, tokenizer, "mrpc", 128)
    return tokenizer, encoded


def run_fit(args: argparse.Namespace) -> dict[str, Any]:
    """Train with ``tlutils.train.fit`` and score on validation."""
    from tlutils.config import set_seed
    from tlutils.models import load_model
    from tlutils.train import TrainConfig, evaluate, fit

    set_seed(args.seed)
    _, encoded = _data(args.train, args.seed)
    model = load_model("minilm", 2, seed=args.seed)
    config = TrainConfig(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
                         seed=args.seed, select_best=False, progress=False)
    history = fit(model, encoded["train"], None, task="mrpc", config=config)
    scores = evaluate(model, encoded["validation"], "mrpc")
    return {"samples_per_second": history.samples_per_second, "train_seconds": history.train_seconds,
            "mixed_precision": history.mixed_precision, **{f"eval_{k}": v for k, v in scores.items()}}


def run_trainer(args: argparse.Namespace) -> dict[str, Any]:
    """Train with ``transformers.Trainer`` (defaults but for the shared settings)."""
    import tempfile

    from transformers import Trainer, TrainingArguments

    from tlutils.config import set_seed
    from tlutils.metrics import compute_metrics
    from tlutils.models import load_model

    set_seed(args.seed)
    tokenizer, encoded = _data(args.train, args.seed)
    model = load_model("minilm", 2, seed=args.seed)
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch_size,
                                  per_device_eval_batch_size=128, num_train_epochs=args.epochs,
                                  learning_rate=args.lr, seed=args.seed, use_cpu=True,
                                  eval_strategy="no", save_strategy="no", report_to="none",
                                  disable_tqdm=True)
        trainer = Trainer(model=model, args=targs, train_dataset=encoded["train"],
                          processing_class=tokenizer)
        began = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - began
        output = trainer.predict(encoded["validation"])
    scores = compute_metrics(output.predictions, output.label_ids, ("accuracy", "f1", "mcc"))
    samples = len(encoded["train"]) * args.epochs
    return {"samples_per_second": samples / seconds, "train_seconds": seconds,
            "mixed_precision": "no", **{f"eval_{k}": v for k, v in scores.items()}}


def _child(args: argparse.Namespace) -> None:
    result = (run_fit if args.engine == "fit" else run_trainer)(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=None, help="training pairs (default: all 3,668)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5, help="Trainer's default learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=("fit", "trainer"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/fit_vs_trainer.json")
    args = parser.parse_args(argv)
    if args.engine:
        return _child(args)

    shared = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
              "--lr", str(args.lr), "--seed", str(args.seed)]
    if args.train:
        shared += ["--train", str(args.train)]
    results = {}
    for engine in ("fit", "trainer"):
        proc = subprocess.run([sys.executable, "-m", "tlutils.bench", "--engine", engine, *shared],
                              capture_output=True, text=True, check=True)
        line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
        results[engine] = json.loads(line[len("RESULT "):])
        print(f"{engine:>8}: {results[engine]['samples_per_second']:.1f} samples/s, "
              f"validation accuracy {results[engine]['eval_accuracy']:.4f}, "
              f"F1 {results[engine]['eval_f1']:.4f}, peak RSS {results[engine]['peak_rss_mb']:.0f} MB, "
              f"precision {results[engine]['mixed_precision']}", flush=True)
    ratio = results["fit"]["samples_per_second"] / results["trainer"]["samples_per_second"]
    gap = 100 * (results["fit"]["eval_accuracy"] - results["trainer"]["eval_accuracy"])
    print(f"speed-up fit / Trainer: {ratio:.2f}x; accuracy difference {gap:+.1f} points")
    from tlutils.results import environment

    record = {"settings": vars(args) | {"engine": None, "model": "minilm", "task": "mrpc"},
              "results": results, "speedup": ratio, "accuracy_difference_points": gap,
              "environment": environment(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
