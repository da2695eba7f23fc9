"""A prepared check of the training engine on a GPU, for the day a machine with one is lent.

Such a machine has no network, no ``datasets`` package and receives at most 64 MiB of files, so
the check needs only torch, transformers, accelerate and safetensors, and brings its own data:

    python benchmarks/gpu_check.py prepare ASSETS      # here: the packaged MiniLM in fp16
                                                       # (about 45 MB) and MRPC as JSON Lines
    bash benchmarks/gpu_check.sh ASSETS OUT            # there: writes OUT/gpu_check.json

What it checks, in order (``--dry-run`` runs the same code on a CPU with tiny sizes; the test
suite does that, so the script cannot rot before a GPU is lent):

1. which precision ``auto`` picks, and the T4 rule (bf16 only from compute capability 8.0,
   tested with a mocked capability, since the lent GPU is not a T4);
2. the GPU's measured matrix-multiply peak in that precision;
3. ``fit``'s throughput on a randomly initialised BERT-base (12 layers, 768 hidden, 128
   tokens; batch 64 and 256, eager and ``torch.compile``) and its model FLOPs utilisation (MFU): training FLOPs per token ``6 N + 12 L d T``
   (Chowdhery et al. 2022, PaLM, appendix B; N non-embedding parameters, L layers, d hidden
   size, T tokens) times tokens per second, over the measured peak and over the data-sheet peak;
4. bf16 and fp16 autocast (fp16 with accelerate's gradient scaler): no NaN, and the loss
   falls on a fixed batch;
5. fine-tuning the fp16-shipped MiniLM (loaded back in fp32) on MRPC, scored on its
   validation pairs against the majority class with the book's paired bootstrap.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlutils.bench import matmul_tflops, training_flops  # noqa: E402
from tlutils.config import resolve_mixed_precision, set_seed  # noqa: E402
from tlutils.data import get_task, read_jsonl  # noqa: E402
from tlutils.train import TrainConfig, fit, predict  # noqa: E402

# Dense bf16/fp16 tensor-core peaks from the vendors' data sheets (TFLOP/s, without sparsity).
DATASHEET_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0,
                    "L40S": 362.0, "V100": 125.0, "T4": 65.0}
SIZES = {  # the GPU run, and the same code in miniature for the CPU dry run
    "gpu": dict(layers=12, hidden=768, heads=12, seq=128, batch=64, warm_steps=20, steps=200,
                matmul=8192, fixed_steps=40, mrpc_train=None, mrpc_eval=None, mrpc_epochs=3),
    "dry": dict(layers=2, hidden=64, heads=2, seq=32, batch=8, warm_steps=2, steps=4,
                matmul=256, fixed_steps=30, mrpc_train=32, mrpc_eval=16, mrpc_epochs=1),
}


def prepare(assets: Path) -> None:
    """Write the MiniLM checkpoint in fp16 (config and tokenizer as shipped) and MRPC's train
    and validation splits as JSON Lines into ``assets``."""
    import os
    import shutil

    from safetensors.torch import load_file, save_file

    from tlutils.models import packaged_minilm_path

    source, target = Path(packaged_minilm_path()), assets / "minilm-fp16"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    weights = load_file(str(source / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
              str(target / "model.safetensors"), metadata={"format": "pt"})
    data = Path(os.environ.get("TLUTILS_DATA_DIR", ROOT.parent / "shared" / "data")) / "mrpc"
    (assets / "mrpc").mkdir(exist_ok=True)
    for split in ("train", "validation"):
        shutil.copy(data / f"{split}.jsonl", assets / "mrpc" / f"{split}.jsonl")
    size = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file()) / 2**20
    print(f"prepared {assets}: {size:.1f} MiB")


def precision_rule() -> dict[str, str]:
    """``auto`` on GPUs of each generation, with the capability mocked (a T4 is sm_75)."""
    out = {}
    for name, capability in (("T4 (7.5)", (7, 5)), ("A100 (8.0)", (8, 0)), ("H100/H200 (9.0)", (9, 0))):
        with mock.patch.object(torch.cuda, "get_device_capability", return_value=capability), \
                mock.patch.object(torch.cuda, "is_bf16_supported", return_value=True):
            out[name] = resolve_mixed_precision("auto", cpu=False)
    assert out["T4 (7.5)"] == "fp16" and out["A100 (8.0)"] == out["H100/H200 (9.0)"] == "bf16", out
    return out


def random_bert(sizes: dict[str, int], num_labels: int = 2) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(num_hidden_layers=sizes["layers"], hidden_size=sizes["hidden"],
                        num_attention_heads=sizes["heads"], intermediate_size=4 * sizes["hidden"],
                        num_labels=num_labels)
    return BertForSequenceClassification(config)


def synthetic_examples(n: int, seq: int, vocab: int = 30522, seed: int = 0) -> list[dict[str, Any]]:
    """Token ids of fixed length with random binary labels: a throughput workload."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (n, seq), generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    return [{"input_ids": row.tolist(), "attention_mask": [1] * seq, "labels": int(y)}
            for row, y in zip(ids, labels)]


def throughput(sizes: dict[str, int], precision: str, device: torch.device, peak: float,
               datasheet: float | None, cpu: bool, compile: bool = False) -> dict[str, Any]:
    """fit on a random BERT: samples/s and MFU over the steps after ``warm_steps`` (the first
    steps pay for kernel selection and, compiled, for compilation)."""
    set_seed(0)
    model = random_bert(sizes).to(device)
    data = synthetic_examples(sizes["batch"] * (sizes["warm_steps"] + sizes["steps"]), sizes["seq"])
    times: list[float] = []
    config = TrainConfig(epochs=1, batch_size=sizes["batch"], learning_rate=1e-4, mixed_precision=precision,
                         progress=False, select_best=False, cpu=cpu, compile=compile)
    history = fit(model, data, config=config, callbacks=[lambda state: times.append(time.perf_counter())])
    timed = times[sizes["warm_steps"]:]  # each after an optimizer step (the step's loss is synchronised)
    samples_per_second = sizes["batch"] * (len(timed) - 1) / (timed[-1] - timed[0])
    per_sample = training_flops(model, sizes["seq"])
    achieved = per_sample * samples_per_second / 1e12
    return {"model": f"random BERT, {sizes['layers']} layers, {sizes['hidden']} hidden, {sizes['seq']} tokens",
            "compiled": compile, "parameters": sum(p.numel() for p in model.parameters()),
            "batch_size": sizes["batch"], "timed_steps": len(timed) - 1, "samples_per_second": samples_per_second,
            "seconds_steps_2_to_warm": times[sizes["warm_steps"]] - times[0] if sizes["warm_steps"] else 0.0,
            "achieved_tflops": achieved, "mfu_of_measured_peak": achieved / peak,
            "mfu_of_datasheet_peak": achieved / datasheet if datasheet else None,
            "peak_memory_mb": history.peak_memory_mb, "precision": history.mixed_precision,
            "final_loss": history.steps[-1]["loss"]}


def fixed_batch(sizes: dict[str, int], precision: str, cpu: bool) -> dict[str, Any]:
    """Train on one batch repeatedly: the loss must stay finite and fall (memorising it)."""
    set_seed(0)
    small = dict(sizes, layers=2, hidden=128, heads=2)
    model = random_bert(small)
    data = synthetic_examples(16, 32, seed=1)
    history = fit(model, data, config=TrainConfig(epochs=sizes["fixed_steps"], batch_size=16, learning_rate=1e-3,
                                                  warmup_fraction=0.0, mixed_precision=precision,
                                                  progress=False, select_best=False, cpu=cpu))
    losses = [s["loss"] for s in history.steps]
    finite = all(math.isfinite(v) for v in losses)
    return {"precision": history.mixed_precision, "first_loss": losses[0], "last_loss": losses[-1],
            "finite": finite, "falls": finite and losses[-1] < 0.5 * losses[0]}


def tokenize_rows(rows: list[dict[str, Any]], tokenizer: Any, max_length: int = 128) -> list[dict[str, Any]]:
    """Sentence pairs -> model inputs, without ``datasets``."""
    enc = tokenizer([r["text_a"] for r in rows], [r["text_b"] for r in rows], truncation=True,
                    max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{**{k: enc[k][i] for k in keys}, "labels": r["label"]} for i, r in enumerate(rows)]


def fine_tune_minilm(assets: Path, sizes: dict[str, Any], precision: str, cpu: bool) -> dict[str, Any]:
    """The packaged MiniLM (shipped in fp16, trained in fp32 weights with autocast) on MRPC."""
    import numpy as np
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tlutils.stats import at_majority_class, compare

    task = get_task("mrpc")
    folder = assets / "minilm-fp16"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = {s: read_jsonl(assets / "mrpc" / f"{s}.jsonl", task) for s in ("train", "validation")}
    train = tokenize_rows(rows["train"][:sizes["mrpc_train"]], tokenizer)
    val = tokenize_rows(rows["validation"][:sizes["mrpc_eval"]], tokenizer)
    set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).float()
    config = TrainConfig(epochs=sizes["mrpc_epochs"], batch_size=32, learning_rate=5e-5, mixed_precision=precision,
                         progress=False, select_best=False, cpu=cpu)
    history = fit(model, train, val, task=task, config=config)
    logits, labels = predict(model, val, mixed_precision=precision)
    predictions = logits.argmax(-1)
    majority = np.full_like(labels, np.bincount([r["labels"] for r in train]).argmax())
    comparison = compare(labels, predictions, majority, names=("fine-tuned MiniLM", "majority class"))
    return {"train_pairs": len(train), "validation_pairs": len(val), "epochs": sizes["mrpc_epochs"],
            "samples_per_second": history.samples_per_second, "train_seconds": history.train_seconds,
            "epochs_record": history.epochs, "at_majority_class": bool(at_majority_class(predictions, labels)),
            "vs_majority": comparison.as_dict(), "sentence": comparison.sentence()}


def run(assets: Path, out: Path, dry_run: bool) -> dict[str, Any]:
    cpu = dry_run or not torch.cuda.is_available()
    if not dry_run and cpu:
        raise SystemExit("No GPU visible: run with --dry-run on a CPU.")
    sizes = SIZES["dry" if dry_run else "gpu"]
    device = torch.device("cpu" if cpu else "cuda")
    name = torch.cuda.get_device_name() if not cpu else platform.processor() or "cpu"
    precision = resolve_mixed_precision("auto", cpu=cpu)
    report: dict[str, Any] = {
        "device": name, "capability": list(torch.cuda.get_device_capability()) if not cpu else None,
        "torch": torch.__version__, "dry_run": dry_run, "auto_precision": precision,
        "precision_rule": precision_rule()}
    began = time.perf_counter()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    report["matmul_tflops"] = peak = matmul_tflops(sizes["matmul"], dtype, device, repeats=10, warmups=3)
    datasheet = next((v for k, v in DATASHEET_TFLOPS.items() if k in name), None)
    report["datasheet_tflops"] = datasheet
    report["throughput"] = throughput(sizes, precision, device, peak, datasheet, cpu)
    # Eager PyTorch launches one kernel per operation; with small batches a fast GPU waits for
    # the CPU. A 4x batch and torch.compile (fused kernels) show how much of the gap that is.
    report["throughput_variants"] = {}
    for batch_factor, compiled in ((4, False), (1, True), (4, True)):
        if compiled and cpu:  # compiling on a CPU takes minutes: the dry run skips it
            continue
        variant = dict(sizes, batch=sizes["batch"] * batch_factor, steps=max(sizes["steps"] // batch_factor, 2),
                       warm_steps=max(sizes["warm_steps"] // batch_factor, 2))
        name_ = f"batch {variant['batch']}, {'compiled' if compiled else 'eager'}"
        report["throughput_variants"][name_] = throughput(variant, precision, device, peak, datasheet, cpu, compiled)
    report["fixed_batch"] = {p: fixed_batch(sizes, p, cpu) for p in (("bf16", "fp16") if not cpu else ("bf16", "no"))}
    report["minilm_mrpc"] = fine_tune_minilm(assets, sizes, precision, cpu)
    report["seconds"] = time.perf_counter() - began
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    t, m = report["throughput"], report["minilm_mrpc"]
    print(f"{name}: auto precision {precision}; matmul peak {peak:.1f} TFLOP/s (data sheet {datasheet})")
    print(f"fit, {t['model']}: {t['samples_per_second']:.0f} samples/s, {t['achieved_tflops']:.1f} TFLOP/s, "
          f"MFU {t['mfu_of_measured_peak']:.1%} of the measured peak"
          + (f", {t['mfu_of_datasheet_peak']:.1%} of the data sheet's" if datasheet else ""))
    for variant, v in report["throughput_variants"].items():
        print(f"  {variant}: {v['samples_per_second']:.0f} samples/s, MFU {v['mfu_of_measured_peak']:.1%}")
    for p, r in report["fixed_batch"].items():
        print(f"fixed batch, {p}: loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}, finite {r['finite']}, falls {r['falls']}")
    print(f"MiniLM (fp16 on disk) on MRPC, {m['train_pairs']} pairs x {m['epochs']} epochs: {m['sentence']}")
    print(f"total {report['seconds']:.0f} s")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the fp16 MiniLM and MRPC JSONL into ASSETS")
    p.add_argument("assets", type=Path)
    r = sub.add_parser("run", help="run the check (on a GPU, or --dry-run on a CPU)")
    r.add_argument("assets", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.assets)
    else:
        report = run(args.assets, args.out, args.dry_run)
        failed = [p for p, r in report["fixed_batch"].items() if not r["falls"]]
        if failed:
            raise SystemExit(f"the loss did not fall on a fixed batch in {', '.join(failed)}")


if __name__ == "__main__":
    main()
