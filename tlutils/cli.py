"""The command line: ``python -m tlutils <command>`` (also ``accelerate launch -m tlutils ...``).

Commands::

    python -m tlutils train --task mrpc --profile smoke --output runs/mrpc
    python -m tlutils train --task rte --model minilm --epochs 3 --lr 3e-5 --output runs/rte --resume
    python -m tlutils evaluate --model runs/mrpc/model --split validation
    python -m tlutils predict --model runs/mrpc/model --pair "He left." "He went away."
    python -m tlutils predict --model runs/mrpc/model --jsonl pairs.jsonl
    python -m tlutils bench --train 512 --epochs 1
    python -m tlutils results
    python -m tlutils data --fetch amazon sick --to ~/tlutils-data

``train`` writes ``OUTPUT/model`` (see :func:`tlutils.models.save_model`), ``OUTPUT/history.json``
and checkpoints in ``OUTPUT/checkpoints`` (``--resume`` continues a killed run from them).
Every command takes ``--help``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from tlutils.config import PROFILE_NAMES, is_main_process
from tlutils.errors import ConfigError, DataNotFoundError, TLUtilsError


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from tlutils.config import get_profile, set_seed
    from tlutils.data import load_task, tokenize_task
    from tlutils.models import load_model, load_tokenizer, save_model
    from tlutils.train import TrainConfig, fit

    overrides = {k: v for k, v in {"model_name": args.model, "max_train_examples": args.max_train,
                                    "max_eval_examples": args.max_eval}.items() if v is not None}
    profile = get_profile(args.profile, **overrides)
    set_seed(args.seed)
    data = load_task(args.task, ("train", "validation"), profile=profile, seed=args.seed)
    tokenizer = load_tokenizer(profile.model_name)
    encoded, _ = tokenize_task(data, tokenizer, args.task, args.max_length or profile.max_length)
    model = load_model(profile.model_name, _num_labels(args.task), seed=args.seed)
    out = Path(args.output)
    config = TrainConfig.from_profile(profile, seed=args.seed, checkpoint_dir=str(out / "checkpoints"),
                                      resume=args.resume, **{k: v for k, v in {
                                          "epochs": args.epochs, "learning_rate": args.lr,
                                          "batch_size": args.batch_size}.items() if v is not None})
    history = fit(model, encoded["train"], encoded["validation"], task=args.task, config=config)
    save_model(model, tokenizer, out / "model", args.task)
    summary = {"task": args.task, "model": profile.model_name, "profile": profile.name,
               "best_epoch": history.best_epoch, "best": history.best,
               "samples_per_second": history.samples_per_second, "output": str(out / "model")}
    if is_main_process():
        (out / "history.json").write_text(json.dumps(history.to_dict(), indent=1))
    return summary


def _num_labels(task: str) -> int:
    from tlutils.data import get_task

    return get_task(task).num_labels


def _load(folder: str):
    from tlutils.models import load_model, load_tokenizer, saved_task

    task = saved_task(folder)
    if task is None:
        raise SystemExit(f"{folder} was not written by `python -m tlutils train` (no tlutils_task.json): "
                         f"pass the OUTPUT/model folder of a train run.")
    return load_model(folder), load_tokenizer(folder), task


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from tlutils.data import load_task, tokenize_task
    from tlutils.train import evaluate

    model, tokenizer, task = _load(args.model)
    task = args.task or task
    data = load_task(task, (args.split,), max_eval_examples=args.max_eval)
    encoded, _ = tokenize_task(data, tokenizer, task, args.max_length)
    metrics = evaluate(model, encoded[args.split], task, batch_size=args.batch_size)
    return {"task": task, "split": args.split, "examples": len(encoded[args.split]), **metrics}


def _predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tlutils.data import get_task
    from tlutils.models import predict_texts

    model, tokenizer, task = _load(args.model)
    fields = get_task(task).text_fields
    if args.pair:
        texts = [tuple(args.pair)]
    elif args.text:
        texts = [args.text]
    else:
        rows = [json.loads(line) for line in Path(args.jsonl).read_text(encoding="utf-8").splitlines() if line.strip()]
        missing = [f for f in fields if rows and f not in rows[0]]
        if missing:
            raise SystemExit(f"{args.jsonl}: each line needs {', '.join(fields)} (task {task}); missing {', '.join(missing)}.")
        texts = [tuple(r[f] for f in fields) if len(fields) == 2 else r[fields[0]] for r in rows]
    if len(fields) == 2 and any(not isinstance(t, tuple) for t in texts):
        raise SystemExit(f"Task {task} classifies sentence pairs: use --pair TEXT_A TEXT_B or a JSONL file.")
    return predict_texts(model, tokenizer, texts, max_length=args.max_length)


def _data(args: argparse.Namespace) -> dict[str, Any]:
    """Where each task's data come from; a one-line DataNotFoundError when some have no source.
    With ``--fetch``: download those tasks from their pinned origins into ``--to`` (see
    :mod:`tlutils.fetch`) and print the ``TLUTILS_DATA_DIR=...`` line to set."""
    from tlutils.data import TASKS, data_check_message, get_task, hub_reachable, local_split_path, missing_data

    if args.fetch:
        if args.tasks:
            raise ConfigError("--tasks checks and --fetch downloads: use one of them (python -m tlutils data "
                              "--fetch amazon --to DIR).")
        return _fetch(args.fetch, args.to)
    if args.to:
        raise ConfigError("--to goes with --fetch (python -m tlutils data --fetch amazon --to DIR).")
    names = args.tasks or list(TASKS)
    hub = hub_reachable()
    missing = missing_data(names, hub=hub)
    if missing:
        raise DataNotFoundError(data_check_message(missing))
    return {name: "local" if (p := local_split_path(get_task(name), "train")) is not None and p.is_file() else "hub"
            for name in names}


def _fetch(names: Sequence[str], to: Optional[str]) -> dict[str, Any]:
    from tlutils import fetch
    from tlutils.data import DATA_ENV, TASKS, get_task
    from tlutils.fetch import SOURCES

    if not to:
        raise ConfigError("--fetch needs --to DIR, the data folder to write (e.g. --to ~/tlutils-data).")
    unfetchable = [name for name in names if get_task(name).folder not in SOURCES]  # before any download
    if unfetchable:
        raise ConfigError(f"{', '.join(unfetchable)}: no download source; --fetch takes "
                          f"{', '.join(n for n, t in TASKS.items() if t.folder in SOURCES)} (the others load "
                          f"from the Hugging Face hub).")
    folder = Path(to).expanduser().resolve()
    written: dict[str, str] = {}
    for name in names:
        task = get_task(name)
        if task.folder in written:
            continue  # sick and sick_relatedness: one folder
        out = fetch.fetch_task(name, folder)
        written[task.folder] = str(out)
        if is_main_process():
            source = SOURCES[task.folder]
            print(f"{task.folder}: downloaded from github.com/{source.repo} (commit {source.commit[:7]}) to {out}; "
                  f"{fetch.licence_line(name)}.", file=sys.stderr)
    if is_main_process():
        print(f"export {DATA_ENV}={folder}", file=sys.stderr)
    return {"data_dir": str(folder), "fetched": written, "set": f"{DATA_ENV}={folder}"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tlutils", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune a model on a task and save it",
                           description="Fine-tune a model on a task with fit, then save it to OUTPUT/model.",
                           epilog="example: python -m tlutils train --task mrpc --profile smoke --output runs/mrpc")
    train.add_argument("--task", required=True, help="a registered task: mrpc, rte, stsb, snli, sick, mnli, amazon")
    train.add_argument("--profile", default="auto", choices=("auto", *PROFILE_NAMES),
                       help="sizes, model and rates (default: full on a GPU, small otherwise)")
    train.add_argument("--model", help="override the profile's model: an alias (minilm, tiny-bert), hub name or folder")
    train.add_argument("--output", required=True, help="folder for the model, history and checkpoints")
    train.add_argument("--epochs", type=int)
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--max-train", type=int, help="training examples (default: the profile's)")
    train.add_argument("--max-eval", type=int, help="validation examples (default: the profile's)")
    train.add_argument("--max-length", type=int, help="tokens per example (default: the profile's)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints")

    ev = sub.add_parser("evaluate", help="score a saved model on a split",
                        epilog="example: python -m tlutils evaluate --model runs/mrpc/model --split validation")
    ev.add_argument("--model", required=True, help="a folder written by train (OUTPUT/model)")
    ev.add_argument("--task", help="default: the task the model was trained on")
    ev.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    ev.add_argument("--max-eval", type=int)
    ev.add_argument("--max-length", type=int, default=128)
    ev.add_argument("--batch-size", type=int, default=128)

    pr = sub.add_parser("predict", help="label names and probabilities for raw text",
                        epilog='example: python -m tlutils predict --model runs/mrpc/model --pair "He left." "He went."')
    pr.add_argument("--model", required=True, help="a folder written by train (OUTPUT/model)")
    source = pr.add_mutually_exclusive_group(required=True)
    source.add_argument("--pair", nargs=2, metavar=("TEXT_A", "TEXT_B"), help="one sentence pair")
    source.add_argument("--text", help="one text (single-text tasks)")
    source.add_argument("--jsonl", help="a JSON Lines file with the task's text fields (text_a, text_b)")
    pr.add_argument("--max-length", type=int, default=128)

    data = sub.add_parser("data", help="which tasks can be read (local folder or hub); exit 2 if some cannot; "
                                       "--fetch downloads the tasks the hub lacks",
                          epilog="examples: python -m tlutils data --tasks mrpc sick\n"
                                 "          python -m tlutils data --fetch amazon sick --to ~/tlutils-data",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    data.add_argument("--tasks", nargs="+", default=None, help="default: every registered task")
    data.add_argument("--fetch", nargs="+", metavar="TASK", default=None,
                      help="download these tasks (amazon, sick) from their pinned GitHub origins, check every "
                           "file's git hash, convert and split them into --to")
    data.add_argument("--to", metavar="DIR", help="the data folder --fetch writes (then set TLUTILS_DATA_DIR=DIR)")

    sub.add_parser("bench", help="fit against transformers.Trainer (see python -m tlutils.bench --help)",
                   add_help=False)
    sub.add_parser("results", help="chapter wall times; --keep copies the records", add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("bench", "results"):
        from tlutils import bench, results

        return (bench.main if argv[0] == "bench" else results.main)(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = {"train": _train, "evaluate": _evaluate, "predict": _predict, "data": _data}[args.command](args)
    except TLUtilsError as err:  # a mistake with a known fix: one line, not a traceback
        parser.exit(2, f"python -m tlutils {args.command}: error: {err}\n")
    if not is_main_process():
        return
    if isinstance(result, list):
        for row in result:
            print(json.dumps(row))
    else:
        print(json.dumps(result, indent=1))
