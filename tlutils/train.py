"""The one training engine: ``fit``, built on Hugging Face ``accelerate``.

``accelerate`` does device placement, mixed precision (bf16/fp16), gradient accumulation and
multi-GPU (``accelerate launch``); ``fit`` adds what every chapter needs around it: AdamW with
weight-decay groups, linear warmup and decay, gradient clipping, evaluation each epoch,
best-model selection, early stopping, progress bars, a :class:`History`, atomic checkpoints
every N steps and an exact resume (model, optimizer, scheduler, RNG states, position in the
epoch).

Methods plug in as a loss function ``loss_fn(model, batch) -> (loss, stats)``, not as copies
of the loop: distillation, adversarial training or a domain loss are a few lines each.
The running-example chapter explains the loop cell by cell before it calls ``fit``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from tlutils.config import Profile, resolve_mixed_precision
from tlutils.data import MODEL_INPUTS, TaskSpec, get_task, make_loader
from tlutils.errors import CheckpointMismatchError, ConfigError, NonFiniteLossError
from tlutils.metrics import compute_metrics

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset

LossFn = Callable[[torch.nn.Module, dict], "tuple[torch.Tensor, dict[str, float]]"]
Callback = Callable[[dict], None]
CHECKPOINT, CHECKPOINT_OLD, CHECKPOINT_TMP = "checkpoint", "checkpoint.old", "checkpoint.tmp"


@dataclass
class TrainConfig:
    """Settings of one ``fit`` run. Build it from a profile with :meth:`from_profile`."""

    epochs: int = 3
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    batch_size: int = 32
    eval_batch_size: int = 128
    grad_accum_steps: int = 1
    max_grad_norm: Optional[float] = 1.0  # None: no clipping
    mixed_precision: str = "auto"  # see tlutils.config.resolve_mixed_precision
    seed: int = 0
    group_by_length: bool = True
    select_best: bool = True  # restore the weights of the best evaluation at the end
    early_stopping_patience: Optional[int] = None  # epochs without improvement; None: never
    checkpoint_dir: Optional[str] = None  # None: no checkpoints
    checkpoint_every: Optional[int] = None  # optimizer steps between checkpoints (and each epoch end)
    resume: bool = False  # continue from checkpoint_dir's checkpoint if there is one
    max_steps: Optional[int] = None  # stop after this many optimizer steps
    progress: Optional[bool] = None  # None: on unless TLUTILS_PROGRESS=0
    cpu: bool = False  # force the CPU even when a GPU is visible

    @classmethod
    def from_profile(cls, profile: Profile, **overrides: Any) -> "TrainConfig":
        """Take epochs, learning rate, batch sizes, warmup, decay and precision from a profile."""
        names = {f.name for f in fields(cls)}
        base = {k: v for k, v in asdict(profile).items() if k in names}
        return cls(**{**base, **overrides})


@dataclass
class History:
    """What happened during ``fit``: per-step losses, per-epoch metrics, speed and memory."""

    task: str
    main_metric: str
    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: Optional[int] = None
    best_score: Optional[float] = None
    train_seconds: float = 0.0
    train_samples: int = 0
    peak_memory_mb: float = 0.0
    mixed_precision: str = "no"
    stopped_early: bool = False

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0

    @property
    def best(self) -> dict[str, float]:
        """The epoch record chosen as best (the last one when there was no evaluation)."""
        if self.best_epoch is None:
            return self.epochs[-1] if self.epochs else {}
        return next(e for e in self.epochs if e["epoch"] == self.best_epoch)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["samples_per_second"] = self.samples_per_second
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "History":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------- pieces


def linear_warmup_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: 0 -> 1 linearly over ``warmup_steps``, then 1 -> 0 at
    ``total_steps`` (BERT's schedule, Devlin et al., 2019, https://arxiv.org/abs/1810.04805)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def weight_decay_groups(model: torch.nn.Module, learning_rate: float,
                        weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: decay matrices, not biases or LayerNorm weights (1-D tensors).

    Learning rates are absolute numbers in each group (methods such as layer-wise decay build
    their own groups and pass them to ``fit(param_groups=...)``).
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": learning_rate},
              {"params": no_decay, "weight_decay": 0.0, "lr": learning_rate}]
    return [g for g in groups if g["params"]]


def default_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The model's own loss (cross-entropy, or MSE for regression): ``model(**batch).loss``.

    Only the model's inputs and ``labels`` are passed on, so a split that carries extra columns
    (a distillation teacher's ``teacher_logits``) trains with plain labels too.
    """
    return model(**{k: v for k, v in batch.items() if k in (*MODEL_INPUTS, "labels")}).loss, {}


def make_accelerator(mixed_precision: str, grad_accum_steps: int = 1, cpu: bool = False) -> "Accelerator":
    """A fresh ``Accelerator`` for one run.

    ``accelerate`` keeps its settings in process-wide singletons, so a notebook that trains a
    bf16 model and then an fp32 one would fail ("AcceleratorState has already been
    initialized"). The per-run state is reset here; the distributed set-up (``PartialState``)
    is kept, so ``accelerate launch`` still works.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum_steps,
                       cpu=cpu, step_scheduler_with_optimizer=True)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: allocated CUDA memory on a GPU, the process's resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _progress_enabled(flag: Optional[bool]) -> bool:
    return flag if flag is not None else os.environ.get("TLUTILS_PROGRESS", "1") != "0"


def _tqdm() -> Any:
    """``tqdm.auto.tqdm``: a widget bar in Jupyter when ipywidgets is installed (Colab), a text
    bar otherwise, without tqdm's warning about the missing widgets in every rendered chapter."""
    import warnings

    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        from tqdm.auto import tqdm
    return tqdm


def _fingerprint(model: torch.nn.Module, task: TaskSpec) -> dict[str, Any]:
    config = getattr(model, "config", None)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "num_labels")
    return {"task": task.name, "model_class": type(model).__name__,
            **{k: getattr(config, k, None) for k in keys}}


# --------------------------------------------------------------------------- prediction


@torch.inference_mode()
def _predict_batches(model: torch.nn.Module, loader: Iterable[dict], n: int,
                     accelerator: Optional["Accelerator"] = None,
                     autocast_dtype: Optional[torch.dtype] = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels in dataset order (batches are length-sorted, ``idx`` restores order)."""
    model.eval()
    device = next(model.parameters()).device
    logits = labels = None
    for batch in loader:
        if accelerator is None:
            batch = {k: v.to(device) for k, v in batch.items()}
        idx = batch.pop("idx")
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).logits.float()  # (B, C)
        gold = batch["labels"]
        if accelerator is not None:
            idx, out, gold = accelerator.gather_for_metrics((idx, out, gold))
        if logits is None:
            logits = torch.zeros((n, out.shape[-1]), dtype=torch.float)
            labels = torch.zeros((n,), dtype=gold.dtype)
        logits[idx.cpu()] = out.cpu()
        labels[idx.cpu()] = gold.cpu()
    return logits.numpy(), labels.numpy()


def predict(model: torch.nn.Module, dataset: "Dataset", *, batch_size: int = 128,
            pad_token_id: Optional[int] = None, mixed_precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, C)`` and labels ``(N,)`` of a tokenized split, in the split's order.

    Runs on the model's device, with bf16/fp16 autocast where :func:`resolve_mixed_precision`
    allows it (set ``mixed_precision="no"`` for bit-exact fp32).
    """
    device = next(model.parameters()).device
    precision = resolve_mixed_precision(mixed_precision, cpu=device.type != "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    pad = pad_token_id if pad_token_id is not None else getattr(model.config, "pad_token_id", 0) or 0
    loader = make_loader(dataset, batch_size, shuffle=False, pad_token_id=pad)
    return _predict_batches(model, loader, len(dataset), autocast_dtype=dtype)


def evaluate(model: torch.nn.Module, dataset: "Dataset", task: TaskSpec | str, *,
             batch_size: int = 128, mixed_precision: str = "auto") -> dict[str, float]:
    """The task's metrics (:attr:`TaskSpec.metrics`) of ``model`` on a tokenized split."""
    task = get_task(task) if isinstance(task, str) else task
    logits, labels = predict(model, dataset, batch_size=batch_size, mixed_precision=mixed_precision)
    return compute_metrics(logits, labels, task.metrics)


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(checkpoint_dir: os.PathLike) -> Optional[Path]:
    """The newest complete checkpoint in ``checkpoint_dir`` (``checkpoint``, else the previous
    one kept while a new one was being written), or None."""
    for name in (CHECKPOINT, CHECKPOINT_OLD):
        path = Path(checkpoint_dir) / name
        if (path / "trainer_state.json").is_file():
            return path
    return None


def _save_checkpoint(accelerator: "Accelerator", checkpoint_dir: Path, state: dict[str, Any],
                     best_state: Optional[dict[str, torch.Tensor]]) -> Path:
    """Write a checkpoint atomically: into ``checkpoint.tmp``, then renamed into place, so a
    kill at any moment leaves a complete ``checkpoint`` or ``checkpoint.old``."""
    from safetensors.torch import save_file

    final, old, tmp = (checkpoint_dir / n for n in (CHECKPOINT, CHECKPOINT_OLD, CHECKPOINT_TMP))
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if best_state is not None:
            save_file(best_state, str(tmp / "best_model.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------- fit


def fit(
    model: torch.nn.Module,
    train_data: "Dataset",
    eval_data: Optional["Dataset"] = None,
    *,
    task: TaskSpec | str,
    config: Optional[TrainConfig] = None,
    loss_fn: LossFn = default_loss,
    param_groups: Optional[list[dict[str, Any]]] = None,
    callbacks: Sequence[Callback] = (),
    pad_token_id: Optional[int] = None,
) -> History:
    """Train ``model`` on a tokenized split and evaluate it after every epoch.

    Args:
        model: a Hugging Face model whose forward takes the batch dict and returns ``.loss``
            and ``.logits`` (see :func:`tlutils.models.load_model`).
        train_data: a split from :func:`tlutils.data.tokenize_task`.
        eval_data: the split scored after each epoch (None: no evaluation, no selection).
        task: the task (its ``metrics[0]`` selects the best epoch; higher is better).
        config: a :class:`TrainConfig` (default settings if None).
        loss_fn: ``loss_fn(model, batch) -> (loss, stats)``; the batch holds ``input_ids``,
            ``attention_mask``, ``token_type_ids``, ``labels`` (and ``teacher_logits`` when the
            split has that column, see :data:`tlutils.data.FLOAT_COLUMNS`) on the right device. Stats
            (floats) are averaged per epoch into the history.
        param_groups: AdamW parameter groups with absolute ``lr`` values (default:
            :func:`weight_decay_groups`). The warmup/decay schedule scales every group.
        callbacks: called as ``callback(state)`` after every optimizer step, with ``state``
            holding ``epoch``, ``batch`` (position in the epoch), ``global_step`` and ``loss``.
        pad_token_id: padding id (default: ``model.config.pad_token_id``).

    Returns:
        a :class:`History`; the model is left with the best epoch's weights (if
        ``config.select_best``), on the device it was trained on, in eval mode.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; names the step and the last checkpoint.
        CheckpointMismatchError: ``resume`` found a checkpoint of another model or task.
    """
    tqdm = _tqdm()
    config = config or TrainConfig()
    task = get_task(task) if isinstance(task, str) else task
    if config.epochs < 1:
        raise ConfigError(f"epochs={config.epochs}: train for at least one epoch.")
    if config.resume and not config.checkpoint_dir:
        raise ConfigError("resume=True needs checkpoint_dir (the folder the killed run wrote to).")
    precision = resolve_mixed_precision(config.mixed_precision,
                                        cpu=config.cpu or not torch.cuda.is_available())
    accelerator = make_accelerator(precision, config.grad_accum_steps, config.cpu)
    pad = pad_token_id if pad_token_id is not None else getattr(model.config, "pad_token_id", 0) or 0
    # Lengths rounded up to a multiple of 8: tensor cores want it on GPUs, and on CPUs it bounds
    # the number of distinct batch shapes (oneDNN caches work per shape; with every length its
    # own shape, resident memory kept growing over an epoch and peaked 19% above the Trainer's).
    multiple = 8
    train_loader = make_loader(train_data, config.batch_size, shuffle=True, seed=config.seed,
                               pad_token_id=pad, group_by_length=config.group_by_length,
                               pad_to_multiple_of=multiple)
    eval_loader = None
    if eval_data is not None:
        eval_loader = make_loader(eval_data, config.eval_batch_size, shuffle=False,
                                  pad_token_id=pad, pad_to_multiple_of=multiple)

    updates_per_epoch = math.ceil(len(train_loader) / config.grad_accum_steps)
    total_steps = config.epochs * updates_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = int(config.warmup_fraction * total_steps)
    groups = param_groups if param_groups is not None else weight_decay_groups(
        model, config.learning_rate, config.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)  # one kernel, not a loop
    procs = accelerator.num_processes  # accelerate steps the scheduler once per process
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: linear_warmup_decay(s, warmup_steps * procs, total_steps * procs))
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)

    history = History(task=task.name, main_metric=task.main_metric, mixed_precision=precision)
    fingerprint = _fingerprint(accelerator.unwrap_model(model), task)
    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    best_state: Optional[dict[str, torch.Tensor]] = None
    start_epoch, skip_batches, global_step, bad_epochs = 0, 0, 0, 0
    running = {"loss": 0.0, "seen": 0, "stats": {}}  # sums over the current epoch so far
    last_checkpoint: Optional[Path] = None

    if ckpt_dir is not None and config.resume and latest_checkpoint(ckpt_dir) is not None:
        path = latest_checkpoint(ckpt_dir)
        saved = json.loads((path / "trainer_state.json").read_text())
        if saved["fingerprint"] != fingerprint:
            raise CheckpointMismatchError(
                f"Checkpoint {path} was written for {saved['fingerprint']}, but this run is "
                f"{fingerprint}; use another checkpoint_dir or resume=False.")
        accelerator.load_state(str(path))
        history = History.from_dict(saved["history"])
        start_epoch, skip_batches = saved["epoch"], saved["batch"]
        global_step, bad_epochs, running = saved["global_step"], saved["bad_epochs"], saved["running"]
        if (path / "best_model.safetensors").is_file():
            from safetensors.torch import load_file

            best_state = load_file(str(path / "best_model.safetensors"))
        last_checkpoint = path

    def checkpoint(epoch: int, batch: int) -> None:
        nonlocal last_checkpoint
        state = {"epoch": epoch, "batch": batch, "global_step": global_step, "bad_epochs": bad_epochs,
                 "running": running if batch else {"loss": 0.0, "seen": 0, "stats": {}},
                 "fingerprint": fingerprint, "history": history.to_dict()}
        last_checkpoint = _save_checkpoint(accelerator, ckpt_dir, state, best_state)

    show = _progress_enabled(config.progress) and accelerator.is_local_main_process
    done = config.max_steps is not None and global_step >= config.max_steps
    for epoch in range(start_epoch, config.epochs):
        if done or (config.early_stopping_patience is not None
                    and bad_epochs >= config.early_stopping_patience):
            break
        model.train()
        train_loader.set_epoch(epoch)  # the prepared loader passes the epoch on to our batch sampler
        batches = train_loader
        if skip_batches:  # resuming mid-epoch: the same order, minus the batches already trained on
            batches = accelerator.skip_first_batches(train_loader, skip_batches)
            batches.set_epoch(epoch)
        start_batch, skip_batches = skip_batches, 0
        if not start_batch:
            running = {"loss": 0.0, "seen": 0, "stats": {}}
        stat_sums, began = running["stats"], time.perf_counter()
        bar = tqdm(batches, total=len(train_loader), initial=start_batch, disable=not show,
                   leave=False, desc=f"epoch {epoch + 1}/{config.epochs}")
        for batch_index, batch in enumerate(bar, start=start_batch + 1):
            batch.pop("idx")
            with accelerator.accumulate(model):
                loss, stats = loss_fn(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            value = loss.detach().float().item()
            if not math.isfinite(value):
                where = f"{last_checkpoint}" if last_checkpoint else "none (set checkpoint_dir to keep one)"
                raise NonFiniteLossError(
                    f"Loss is {value} at optimizer step {global_step + 1} (epoch {epoch + 1}, "
                    f"batch {batch_index}); last good checkpoint: {where}. Lower the learning "
                    f"rate or use mixed_precision='no', check the labels, then resume.")
            n = batch["input_ids"].shape[0] * procs
            running["loss"] += value * n
            running["seen"] += n
            for key, v in stats.items():
                stat_sums[key] = stat_sums.get(key, 0.0) + float(v) * n
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            history.steps.append({"step": global_step, "epoch": epoch + batch_index / len(train_loader),
                                  "loss": value, "lr": scheduler.get_last_lr()[0]})
            if show and global_step % 10 == 0:
                bar.set_postfix(loss=f"{running['loss'] / running['seen']:.4f}")
            if ckpt_dir is not None and config.checkpoint_every and global_step % config.checkpoint_every == 0:
                checkpoint(epoch, batch_index)
            for callback in callbacks:
                callback({"epoch": epoch, "batch": batch_index, "global_step": global_step, "loss": value})
            if config.max_steps is not None and global_step >= config.max_steps:
                done = True
                break
        bar.close()
        history.train_seconds += time.perf_counter() - began
        history.train_samples += running["seen"]
        seen = max(running["seen"], 1)
        record = {"epoch": epoch + 1, "train_loss": running["loss"] / seen,
                  **{k: v / seen for k, v in stat_sums.items()}}
        if eval_loader is not None:
            logits, labels = _predict_batches(model, eval_loader, len(eval_data), accelerator)
            record.update({f"eval_{k}": v for k, v in compute_metrics(logits, labels, task.metrics).items()})
            score = record[f"eval_{task.main_metric}"]
            if history.best_score is None or score > history.best_score:
                history.best_score, history.best_epoch, bad_epochs = score, epoch + 1, 0
                if config.select_best:
                    unwrapped = accelerator.unwrap_model(model)
                    best_state = {k: v.detach().cpu().clone() for k, v in unwrapped.state_dict().items()}
            else:
                bad_epochs += 1
        history.epochs.append(record)
        if ckpt_dir is not None:
            checkpoint(epoch + 1, 0)

    history.stopped_early = bad_epochs >= (config.early_stopping_patience or math.inf)
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if config.select_best and best_state is not None:
        model.load_state_dict(best_state)
    history.peak_memory_mb = peak_memory_mb(accelerator.device)
    model.eval()
    if accelerator.device.type == "cuda":  # release cached GPU memory for the next run; on a CPU
        accelerator.free_memory()  # its full gc.collect() only costs ~0.5 s per fit
    return history
