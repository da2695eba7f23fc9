"""Benchmark: ``tlutils.train.fit`` against ``transformers.Trainer``, with its defaults and with
its own speed flags on.

Same model (the packaged MiniLM-L6), same data (MRPC train, scored on MRPC validation), same
batch size, epochs and learning rate; each engine runs in its own process so that peak memory
is its own. Three engines: ``fit``; the Trainer as a reader calls it (defaults); the Trainer
tuned (bf16 where the CPU has native bf16, ``train_sampling_strategy="group_by_length"``,
padding to a multiple of 8). Prints samples/s of each, ``fit``'s ratio against both, the
validation scores with a paired verdict (``tlutils.stats.compare``) and ``fit``'s fraction of
the machine's own limit (training FLOPs per pair at the benchmark's lengths over the measured
matrix-multiply peak in the precision used), and writes them to
``benchmarks/results/fit_vs_trainer.json``::

    python -m tlutils.bench                 # full MRPC train, 3 epochs (about 15 minutes on 2 cores)
    python -m tlutils.bench --train 512 --epochs 1   # a quick look
    python -m tlutils.bench --train 1600 --epochs 1 --lr 2e-4 --repeats 3   # the committed records

What ``fit`` does differently is visible in its settings: bf16 autocast where the CPU has
native bf16 (see :func:`tlutils.config.resolve_mixed_precision`), length-grouped batches with
dynamic padding, a fused AdamW step, and on a CPU dropout masks drawn from a quarter of the
random numbers (:mod:`tlutils.dropout`; ``TrainConfig(fast_dropout=False)`` turns them off).
The Trainer runs as a reader would call it: defaults.
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


def _data(train: int | None, seed: int, eval_pairs: int | None = None):
    from tlutils.data import load_task, tokenize_task
    from tlutils.models import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    data = load_task("mrpc", max_train_examples=train, max_eval_examples=eval_pairs, seed=seed)
    encoded, _ = tokenize_task(data, tokenizer, "mrpc", 128)
    return tokenizer, encoded


def run_fit(args: argparse.Namespace) -> dict[str, Any]:
    """Train with ``tlutils.train.fit`` and score on validation."""
    from tlutils.config import set_seed
    from tlutils.models import load_model
    from tlutils.metrics import compute_metrics
    from tlutils.train import TrainConfig, fit, predict

    set_seed(args.seed)
    _, encoded = _data(args.train, args.seed, args.eval)
    model = load_model("minilm", 2, seed=args.seed)
    config = TrainConfig(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
                         seed=args.seed, select_best=False, progress=False)
    history = fit(model, encoded["train"], None, task="mrpc", config=config)
    logits, labels = predict(model, encoded["validation"])
    scores = compute_metrics(logits, labels, ("accuracy", "f1", "mcc"))
    lengths = [int(8 * -(-n // 8)) for n in encoded["train"]["length"]]  # as fit pads: multiples of 8
    peak = peak_rss_mb()  # before the limit's own matrices, which are not part of training
    return {"samples_per_second": history.samples_per_second, "train_seconds": history.train_seconds,
            "mixed_precision": history.mixed_precision, "fast_dropout": history.fast_dropout,
            **{f"eval_{k}": v for k, v in scores.items()},
            "predictions": logits.argmax(-1).tolist(), "labels": labels.tolist(), "peak_rss_mb": peak,
            "limit": machine_limit(model, lengths, history.mixed_precision)}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports ``ru_maxrss`` in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_flops(model: Any, length: int) -> float:
    """Training FLOPs of one example of ``length`` tokens: ``(6 N + 12 L d T) T`` (Chowdhery et
    al. 2022, PaLM, appendix B; N the parameters without the embeddings, L layers, d hidden)."""
    config = model.config
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    n = sum(p.numel() for p in model.parameters()) - embeddings
    return (6 * n + 12 * config.num_hidden_layers * config.hidden_size * length) * length


def matmul_tflops(n: int, dtype: Any, device: Any = "cpu", repeats: int = 5, warmups: int = 1) -> float:
    """Measured TFLOP/s of an n x n x n matrix product (mean of ``repeats`` after ``warmups``)."""
    import torch

    device = torch.device(device)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(warmups):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - began) / 1e12


def machine_limit(model: Any, lengths: list[int], precision: str) -> dict[str, float]:
    """The machine's own limit for this training: :func:`training_flops` per pair at these
    lengths over the measured peak of a 2048^3 matrix product in the precision used."""
    import torch

    flops = sum(training_flops(model, t) for t in lengths) / len(lengths)
    peak = matmul_tflops(2048, torch.bfloat16 if precision == "bf16" else torch.float32) * 1e12
    return {"flops_per_pair": flops, "matmul_peak_tflops": peak / 1e12, "pairs_per_second_limit": peak / flops}


def run_trainer(args: argparse.Namespace, tuned: bool = False) -> dict[str, Any]:
    """Train with ``transformers.Trainer``: its defaults but for the shared settings, or
    (``tuned``) with bf16 where native, length-grouped sampling and padding to a multiple of 8."""
    import tempfile

    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from tlutils.config import cpu_supports_bf16, set_seed
    from tlutils.metrics import compute_metrics
    from tlutils.models import load_model
    from tlutils.train import predict

    set_seed(args.seed)
    tokenizer, encoded = _data(args.train, args.seed, args.eval)
    model = load_model("minilm", 2, seed=args.seed)
    bf16 = tuned and cpu_supports_bf16()
    flags = dict(bf16=bf16, train_sampling_strategy="group_by_length", length_column_name="length") if tuned else {}
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch_size,
                                  per_device_eval_batch_size=128, num_train_epochs=args.epochs,
                                  learning_rate=args.lr, seed=args.seed, use_cpu=True,
                                  eval_strategy="no", save_strategy="no", report_to="none",
                                  disable_tqdm=True, **flags)
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8) if tuned else None
        trainer = Trainer(model=model, args=targs, train_dataset=encoded["train"],
                          processing_class=tokenizer, data_collator=collator)
        began = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - began
    # Every engine's model is scored by the same code, in dataset order (tlutils.train.predict), so
    # the paired comparison pairs the same examples; with the tuned Trainer's own predict, its
    # predictions paired with fit's labels gave another accuracy than with its own.
    logits, labels = predict(trainer.model, encoded["validation"])
    scores = compute_metrics(logits, labels, ("accuracy", "f1", "mcc"))
    samples = len(encoded["train"]) * args.epochs
    return {"samples_per_second": samples / seconds, "train_seconds": seconds,
            "mixed_precision": "bf16" if bf16 else "no", **{f"eval_{k}": v for k, v in scores.items()},
            "predictions": logits.argmax(-1).tolist(), "labels": labels.tolist()}


ENGINES = ("fit", "trainer", "trainer-tuned")


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's runs summarised: the first run's scores and predictions (the same seed gives
    the same model), the median of the speeds and peak memories, every run's speed, and for
    ``fit`` every run's fraction of the machine's limit (each run measures its own limit)."""
    import numpy as np

    out = dict(runs[0])
    for key in ("samples_per_second", "train_seconds", "peak_rss_mb"):
        out[key] = float(np.median([r[key] for r in runs]))
    out["samples_per_second_runs"] = [r["samples_per_second"] for r in runs]
    if "limit" in out:
        out["fraction_of_limit_runs"] = [r["samples_per_second"] / r["limit"]["pairs_per_second_limit"] for r in runs]
    return out


def _child(args: argparse.Namespace) -> None:
    result = {"fit": run_fit, "trainer": run_trainer,
              "trainer-tuned": lambda a: run_trainer(a, tuned=True)}[args.engine](args)
    result.setdefault("peak_rss_mb", peak_rss_mb())  # training and scoring, in this engine's own process
    print("RESULT " + json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=None, help="training pairs (default: all 3,668)")
    parser.add_argument("--eval", type=int, default=None, help="validation pairs (default: all 408)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5, help="Trainer's default learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each engine, in turn; speeds, memory and fit's fraction of the limit are "
                             "their medians (the committed 1,600-pair records use 3: one run varies by a few %%)")
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/fit_vs_trainer.json")
    args = parser.parse_args(argv)
    if args.engine:
        return _child(args)

    shared = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
              "--lr", str(args.lr), "--seed", str(args.seed)]
    for flag in ("train", "eval"):
        if getattr(args, flag):
            shared += [f"--{flag}", str(getattr(args, flag))]
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in ENGINES}
    for _ in range(args.repeats):  # engines in turn, so that a slow spell of the machine hits all of them
        for engine in ENGINES:
            proc = subprocess.run([sys.executable, "-m", "tlutils.bench", "--engine", engine, *shared],
                                  capture_output=True, text=True, check=True)
            line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
            runs[engine].append(json.loads(line[len("RESULT "):]))
    results = {engine: median_run(engine_runs) for engine, engine_runs in runs.items()}
    for engine in ENGINES:
        print(f"{engine:>8}: {results[engine]['samples_per_second']:.1f} samples/s"
              + (f" (median of {args.repeats}: " + ", ".join(f"{v:.1f}" for v in results[engine]["samples_per_second_runs"])
                 + ")" if args.repeats > 1 else "") + ", "
              f"validation accuracy {results[engine]['eval_accuracy']:.4f}, "
              f"F1 {results[engine]['eval_f1']:.4f}, peak RSS {results[engine]['peak_rss_mb']:.0f} MB, "
              f"precision {results[engine]['mixed_precision']}", flush=True)
    import numpy as np

    from tlutils.results import environment
    from tlutils.stats import compare

    fit_ = results["fit"]
    ratios = {e: fit_["samples_per_second"] / results[e]["samples_per_second"] for e in ENGINES[1:]}
    verdicts = {e: compare(np.array(fit_["labels"]), np.array(fit_["predictions"]), np.array(results[e]["predictions"]),
                           names=("fit", e)).as_dict() for e in ENGINES[1:]}
    fraction = float(np.median(fit_["fraction_of_limit_runs"]))
    for e in ENGINES[1:]:
        print(f"fit / {e}: {ratios[e]:.2f}x; {verdicts[e]['sentence']}")
    memory = {e: fit_["peak_rss_mb"] / results[e]["peak_rss_mb"] for e in ENGINES[1:]}
    print("fit's peak memory: " + "; ".join(f"{memory[e]:.2f}x {e}'s" for e in ENGINES[1:]))
    limits = [r["limit"] for r in runs["fit"]]  # each run measured its own
    print(f"fit at {fraction:.0%} of this machine's limit ("
          + ("; ".join(f"{f:.0%} of {lim['pairs_per_second_limit']:.1f} pairs/s at {lim['matmul_peak_tflops']:.2f} TFLOP/s"
                       for f, lim in zip(fit_["fraction_of_limit_runs"], limits))
          + f"{'; the median of its runs' if args.repeats > 1 else ''}, {fit_['mixed_precision']})"))
    from tlutils.stats import at_majority_class

    for engine, r in results.items():  # the verdicts keep what the predictions showed
        r["at_majority_class"] = bool(at_majority_class(np.array(r.pop("predictions")), np.array(r.pop("labels"))))
    floor = [e for e, r in results.items() if r["at_majority_class"]]
    if floor:
        print(f"at the majority-class floor (one answer for nearly every pair): {', '.join(floor)}; their validation "
              f"comparisons say nothing about the engines (train longer, or with more pairs, to compare scores)")
    record = {"settings": vars(args) | {"engine": None, "model": "minilm", "task": "mrpc"},
              "results": results, "speedup": ratios["trainer"], "speedup_vs_tuned": ratios["trainer-tuned"],
              "peak_memory_ratio": memory,
              "validation_verdicts": verdicts, "fraction_of_machine_limit": fraction,
              "accuracy_difference_points": 100 * (fit_["eval_accuracy"] - results["trainer"]["eval_accuracy"]),
              "environment": environment(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
