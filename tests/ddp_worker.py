"""One rank of a data-parallel ``fit`` run, for tests/test_distributed.py.

Usage: accelerate launch --multi_gpu --num_processes 2 tests/ddp_worker.py OUT_DIR [BATCH_SIZE] [unfreeze|nan|evalfn]
(``nan``: rank 1's loss is NaN at its third step; each rank records whether it raised.
``evalfn``: a custom evaluation whose scores differ by rank, then one sharded across ranks).
(or plain ``python`` for the one-process reference). Each rank writes OUT_DIR/rank<r>.json:
the examples of every batch it trained on, its learning rates, its history and a digest of
its final weights.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch

from tlutils.config import get_profile, set_seed
from tlutils.data import PadCollator, load_task, tokenize_task
from tlutils.methods.finetune import GradualUnfreezing
from tlutils.models import load_model, load_tokenizer
from tlutils.errors import NonFiniteLossError
from tlutils.train import TrainConfig, fit


def main() -> None:
    out = Path(sys.argv[1])
    batch_size = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    unfreeze = "unfreeze" in sys.argv[3:]  # gradual unfreezing: layers join the training later
    nan = "nan" in sys.argv[3:]
    cfg = get_profile("smoke")
    set_seed(0)
    data = load_task("mrpc", max_train_examples=96, max_eval_examples=32)
    tokenizer = load_tokenizer(cfg.model_name)
    encoded, _ = tokenize_task(data, tokenizer, "mrpc", cfg.max_length)
    model = load_model(cfg.model_name, 2, seed=0)
    pad = PadCollator(tokenizer.pad_token_id, 8)
    batches: list[list[int]] = []

    def collate(examples):  # the examples each batch of this rank holds
        batches.append([e["idx"] for e in examples])
        return pad(examples)

    config = TrainConfig.from_profile(cfg, epochs=3, batch_size=batch_size, learning_rate=1e-3,
                                      mixed_precision="no", progress=False, seed=0)
    extra = {}
    if unfreeze:
        unfreezer = GradualUnfreezing(model, every=2)
        extra = {"param_groups": unfreezer.param_groups(1e-3, 0.0), "callbacks": [unfreezer]}
    rank = int(__import__("os").environ.get("RANK", "0"))
    if nan:
        calls = []

        def nan_on_rank1(model_, batch):
            calls.append(1)
            loss = model_(**batch).loss
            return (loss * float("nan") if rank == 1 and len(calls) == 3 else loss), {}

        try:
            fit(model, encoded["train"], task="mrpc", config=config, loss_fn=nan_on_rank1)
            raised = ""
        except NonFiniteLossError as err:
            raised = str(err)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{rank}.json").write_text(json.dumps({"raised": raised, "steps": len(calls)}))
        return
    if "evalfn" in sys.argv[3:]:
        scores = {0: [0.1, 0.3, 0.2], 1: [0.3, 0.1, 0.2]}[rank]  # rank 1 alone would keep epoch 1 and stop
        calls = []

        def by_rank(model_, data_):
            calls.append(len(data_))
            return {"score": scores[len(calls) - 1]}

        patient = TrainConfig.from_profile(cfg, epochs=3, batch_size=batch_size, learning_rate=1e-3,
                                           mixed_precision="no", progress=False, seed=0, early_stopping_patience=1)
        history = fit(model, encoded["train"], encoded["validation"], config=patient, eval_fn=by_rank)
        shares = []

        def positive_share(model_, data_):  # a mean over rows: exact when sharded
            shares.append(len(data_))
            return {"positive": sum(data_["labels"]) / len(data_)}

        sharded = fit(model, encoded["train"], encoded["validation"], config=patient, eval_fn=positive_share,
                      shard_eval=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{rank}.json").write_text(json.dumps({
            "history": history.to_dict(), "calls": calls, "sharded": sharded.to_dict(), "shares": shares,
            "positive": sum(encoded["validation"]["labels"]) / len(encoded["validation"])}))
        return
    history = fit(model, encoded["train"], encoded["validation"], task="mrpc", config=config,
                  collate_fn=collate, **extra)
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "batches": batches, "per_epoch": len(batches) // 3, "history": history.to_dict(),
        "weights": digest.hexdigest(), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
