"""A training run in its own process, for the kill-and-resume test (see test_train.py).

Usage: python train_worker.py OUT_DIR CHECKPOINT_DIR [--kill-at STEP] [--resume]
Writes OUT_DIR/final.safetensors and OUT_DIR/history.json when training ends.
"""

import json
import os
import signal
import sys
from pathlib import Path

from safetensors.torch import save_file

from tlutils.config import get_profile, set_seed
from tlutils.data import load_task, tokenize_task
from tlutils.models import load_model, load_tokenizer
from tlutils.train import TrainConfig, fit


def main() -> None:
    out, ckpt = Path(sys.argv[1]), sys.argv[2]
    kill_at = int(sys.argv[sys.argv.index("--kill-at") + 1]) if "--kill-at" in sys.argv else None
    cfg = get_profile("smoke")
    set_seed(0)
    data = load_task("mrpc", max_train_examples=48, max_eval_examples=32)
    encoded, _ = tokenize_task(data, load_tokenizer(cfg.model_name), "mrpc", cfg.max_length)
    model = load_model(cfg.model_name, 2, seed=0)

    def kill(state: dict) -> None:  # a real SIGKILL: no cleanup, no flush, like a lost machine
        if state["global_step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    config = TrainConfig.from_profile(cfg, epochs=3, batch_size=8, checkpoint_dir=ckpt,
                                      checkpoint_every=4, resume="--resume" in sys.argv,
                                      progress=False)
    history = fit(model, encoded["train"], encoded["validation"], task="mrpc", config=config,
                  callbacks=[kill] if kill_at else [])
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "final.safetensors"))
    (out / "history.json").write_text(json.dumps(history.to_dict()))


if __name__ == "__main__":
    main()
