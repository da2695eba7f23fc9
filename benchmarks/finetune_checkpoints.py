"""Fine-tune the five real checkpoints on MRPC and RTE with one recipe, over seeds (GPU + hub).

    python benchmarks/finetune_checkpoints.py --seeds 0 1 2 --out benchmarks/results/checkpoints.json

Runs :func:`tlutils.checkpoints.finetune_checkpoint` for every checkpoint, task and seed with
:class:`tlutils.checkpoints.FinetuneRecipe`, prints accuracy and F1 per checkpoint and task as
mean ± sd over the seeds next to the cited numbers (:data:`tlutils.checkpoints.CITED`, in their
own column), and writes every run (predictions included, so paired comparisons can be drawn
later) to ``--out``. It needs the Hugging Face hub (downloads) and a GPU for a sane run time
(its run time was not measured here: no GPU and no hub); the chapter *BERT* runs one seed of it in the
``full`` profile.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from tlutils.checkpoints import CHECKPOINTS, CITED, GLUE_TASKS, FinetuneRecipe, finetune_checkpoint
    from tlutils.results import _plain, environment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", default=list(CHECKPOINTS))
    parser.add_argument("--tasks", nargs="+", default=list(GLUE_TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-train-examples", type=int, default=None, help="a subset, for a quick check")
    parser.add_argument("--out", default="benchmarks/results/checkpoints.json")
    args = parser.parse_args(argv)

    recipe = FinetuneRecipe()
    began = time.time()
    runs = []
    for name in args.checkpoints:
        for task in args.tasks:
            for seed in args.seeds:
                r = finetune_checkpoint(name, task, recipe=recipe, seed=seed, max_train_examples=args.max_train_examples)
                print(f"{name} {task} seed {seed}: accuracy {r['accuracy']:.4f}, F1 {r['f1']:.4f} "
                      f"({r['wall_seconds'] / 60:.1f} min, {r['precision']})", flush=True)
                runs.append({k: v for k, v in r.items() if k != "history"})
    cited = {row["checkpoint"]: row for row in CITED}
    print("\ncheckpoint | task | accuracy (measured, mean ± sd) | F1 (measured) | cited (metric and source as stated)")
    for name in args.checkpoints:
        for task in args.tasks:
            acc = [r["accuracy"] for r in runs if r["checkpoint"] == name and r["task"] == task]
            f1 = [r["f1"] for r in runs if r["checkpoint"] == name and r["task"] == task]
            sd = (lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0)
            print(f"{name} | {task} | {np.mean(acc):.4f} ± {sd(acc):.4f} | {np.mean(f1):.4f} ± {sd(f1):.4f} | "
                  f"{cited.get(name, {}).get(task, '-')}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_plain({"recipe": recipe.to_dict(), "seeds": args.seeds, "runs": runs, "cited": CITED,
                                      "minutes": (time.time() - began) / 60,
                                      "environment": environment(runs[0]["precision"] if runs else None)}), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
