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

import contextlib
import itertools
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
from tlutils.dropout import fast_dropout
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
    compile: bool = False  # torch.compile the model: fewer, fused kernels (see benchmarks/gpu_check.py)
    fast_dropout: Optional[bool] = None  # cheaper dropout masks (tlutils.dropout); None: on a CPU only
    eval_every: Optional[int] = None  # also evaluate (and select) every N optimizer steps: large data sets
    log_with: Optional[Any] = None  # accelerate trackers: "tensorboard", "wandb", ... or tracker objects
    project_dir: Optional[str] = None  # where file-based trackers write (default: checkpoint_dir or "runs")

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
    best_epoch: Optional[float] = None  # fractional for a mid-epoch evaluation (eval_every)
    best_score: Optional[float] = None
    train_seconds: float = 0.0
    train_samples: int = 0
    train_tokens: int = 0  # non-padding tokens trained on (the attention mask's ones), every rank
    peak_memory_mb: float = 0.0
    mixed_precision: str = "no"
    fast_dropout: bool = False  # dropout masks from tlutils.dropout (TrainConfig.fast_dropout)
    stopped_early: bool = False
    evaluations: list[dict[str, float]] = field(default_factory=list)  # every N steps (eval_every)
    best_step: Optional[int] = None  # the optimizer step of the best evaluation

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Non-padding tokens per second of training (pretraining throughput)."""
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0

    @property
    def best(self) -> dict[str, float]:
        """The evaluation chosen as best: an epoch's record, or a mid-epoch one (the last epoch
        when there was no evaluation)."""
        if self.best_epoch is None:
            return self.epochs[-1] if self.epochs else {}
        return next(e for e in (*self.epochs, *self.evaluations) if e["epoch"] == self.best_epoch)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["samples_per_second"] = self.samples_per_second
        out["tokens_per_second"] = self.tokens_per_second
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


def make_accelerator(mixed_precision: str, cpu: bool = False, find_unused_parameters: bool = False,
                     log_with: Any = None, project_dir: Optional[str] = None) -> "Accelerator":
    """A fresh ``Accelerator`` for one run (``fit`` accumulates gradients and steps its
    schedule itself, so neither is handed to accelerate).

    ``accelerate`` keeps its settings in process-wide singletons, so a notebook that trains a
    bf16 model and then an fp32 one would fail ("AcceleratorState has already been
    initialized"). The per-run state is reset here; the distributed set-up (``PartialState``)
    is kept, so ``accelerate launch`` still works.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu, kwargs_handlers=handlers,
                       log_with=log_with, project_dir=project_dir)


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


# --------------------------------------------------------------------------- prediction


@torch.inference_mode()
def _predict_batches(model: torch.nn.Module, loader: Iterable[dict], n: int,
                     accelerator: Optional["Accelerator"] = None,
                     autocast_dtype: Optional[torch.dtype] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Logits and labels in dataset order (batches are length-sorted, ``idx`` restores order);
    labels are None for an unlabelled split."""
    model.eval()
    device = next(model.parameters()).device
    logits = labels = None
    for batch in loader:
        if accelerator is None:
            batch = {k: v.to(device) for k, v in batch.items()}
        idx = batch.pop("idx")
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).logits.float()  # (B, C)
        gold = batch.get("labels")
        if accelerator is not None:
            idx, out = accelerator.gather_for_metrics((idx, out))
            gold = accelerator.gather_for_metrics(gold) if gold is not None else None
        if logits is None:
            logits = torch.zeros((n, out.shape[-1]), dtype=torch.float)
            labels = torch.zeros((n,), dtype=gold.dtype) if gold is not None else None
        logits[idx.cpu()] = out.cpu()
        if labels is not None:
            labels[idx.cpu()] = gold.cpu()
    return logits.numpy(), (labels.numpy() if labels is not None else None)


def predict(model: torch.nn.Module, dataset: Any, *, batch_size: int = 128,
            pad_token_id: Optional[int] = None, mixed_precision: str = "auto") -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Logits ``(N, C)`` and labels ``(N,)`` of a tokenized split, in the split's order; the
    labels are None for an unlabelled split (``load_task(..., unlabelled=...)``).

    Runs on the model's device, with bf16/fp16 autocast where :func:`resolve_mixed_precision`
    allows it (set ``mixed_precision="no"`` for bit-exact fp32).
    """
    device = next(model.parameters()).device
    precision = resolve_mixed_precision(mixed_precision, cpu=device.type != "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    pad = pad_token_id if pad_token_id is not None else getattr(
        getattr(model, "config", None), "pad_token_id", 0) or 0
    loader = make_loader(dataset, batch_size, shuffle=False, pad_token_id=pad)
    return _predict_batches(model, loader, len(dataset), autocast_dtype=dtype)


def evaluate(model: torch.nn.Module, dataset: "Dataset", task: TaskSpec | str, *,
             batch_size: int = 128, mixed_precision: str = "auto") -> dict[str, float]:
    """The task's metrics (:attr:`TaskSpec.metrics`) of ``model`` on a tokenized split."""
    task = get_task(task) if isinstance(task, str) else task
    logits, labels = predict(model, dataset, batch_size=batch_size, mixed_precision=mixed_precision)
    if labels is None:
        raise ConfigError("evaluate needs a labelled split; this one has no labels (use predict).")
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
                     best_state: Optional[dict[str, torch.Tensor]],
                     scheduler_state: Optional[dict[str, Any]] = None) -> Path:
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
        if scheduler_state is not None:
            torch.save(scheduler_state, tmp / "scheduler.pt")
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


EvalFn = Callable[[torch.nn.Module, Any], "dict[str, float]"]
EpochCallback = Callable[[dict], None]


@dataclass
class TrainState:
    """Where a run is: saved with every checkpoint and loaded as one object on resume."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch already trained on
    global_step: int = 0  # optimizer steps
    bad_epochs: int = 0  # evaluations in a row without improvement
    running_loss: float = 0.0  # sums over the current epoch so far
    running_seen: int = 0
    running_tokens: int = 0
    running_stats: dict[str, float] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    history: Optional[History] = None

    def start_epoch(self) -> None:
        self.batch, self.running_loss, self.running_seen, self.running_stats = 0, 0.0, 0, {}
        self.running_tokens = 0

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "history"}
        out["history"] = self.history.to_dict() if self.history else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        names = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in names and k != "history"})
        state.history = History.from_dict(data["history"]) if data.get("history") else None
        return state


IGNORE_INDEX = -100  # cross-entropy's ignore_index: an example without a hard label

RESUME_KEYS = ("epochs", "learning_rate", "weight_decay", "warmup_fraction", "batch_size",
               "grad_accum_steps", "seed", "group_by_length", "max_steps")
# fast_dropout is not among them: it draws other masks, but the position in the data is the same


def run_fingerprint(model: torch.nn.Module, task_name: Optional[str], config: TrainConfig,
                    precision: str, num_processes: int) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the model, the task, and every setting
    that decides the position in the data (batch size, accumulation, seed, epochs, processes)."""
    model_config = getattr(model, "config", None)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "num_labels")
    return {"task": task_name, "model_class": type(model).__name__,
            **{k: getattr(model_config, k, None) for k in keys},
            **{k: getattr(config, k) for k in RESUME_KEYS},
            "mixed_precision": precision, "num_processes": num_processes}


def check_config(config: TrainConfig) -> None:
    """Reject settings that would train nothing or crash later, with the fix in one line."""
    for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum_steps"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name}={getattr(config, name)}: use a positive integer.")
    if config.early_stopping_patience is not None and config.early_stopping_patience < 1:
        raise ConfigError(f"early_stopping_patience={config.early_stopping_patience}: use None (never stop "
                          f"early) or the number of evaluations without improvement to wait (>= 1).")
    if config.eval_every is not None and config.eval_every < 1:
        raise ConfigError(f"eval_every={config.eval_every}: use None or a positive number of optimizer steps.")
    if config.max_steps is not None and config.max_steps < 1:
        raise ConfigError(f"max_steps={config.max_steps}: use None or a positive number of optimizer steps.")
    if not 0 <= config.warmup_fraction < 1:
        raise ConfigError(f"warmup_fraction={config.warmup_fraction}: use a fraction in [0, 1).")
    if config.resume and not config.checkpoint_dir:
        raise ConfigError("resume=True needs checkpoint_dir (the folder the killed run wrote to).")


def check_labels(model: torch.nn.Module, task: Optional[TaskSpec], data: Any) -> None:
    """A classifier needs an output for every class of the task (else: IndexError on a CPU, a
    device-side assert that kills the runtime on a GPU)."""
    if task is None or task.is_regression:
        return
    outputs = getattr(getattr(model, "config", None), "num_labels", None)
    if outputs is not None and outputs < task.num_labels:
        raise ConfigError(f"The model has {outputs} outputs but task {task.name!r} has {task.num_labels} "
                          f"classes: load it with num_labels={task.num_labels} "
                          f"(load_model(name, {task.num_labels})).")
    columns = getattr(data, "column_names", None)
    if outputs is not None and isinstance(columns, list) and "labels" in columns and len(data):
        labels = [y for y in data["labels"] if y != IGNORE_INDEX]  # -100: no hard label (distillation)
        if not labels:
            return
        low, high = min(labels), max(labels)
        if low < 0 or high >= outputs:
            raise ConfigError(f"Labels run from {low} to {high} but the model has {outputs} outputs: "
                              f"check the task ({task.name!r}) and load_model(name, num_labels).")


def default_eval_fn(task: TaskSpec, batch_size: int, pad_token_id: int,
                    accelerator: Optional["Accelerator"] = None) -> EvalFn:
    """Score a tokenized split with the task's metrics (predictions gathered across ranks)."""
    cache: dict[int, Any] = {}

    def evaluate_split(model: torch.nn.Module, data: Any) -> dict[str, float]:
        key = id(data)
        if key not in cache:  # one loader per split, prepared once
            loader = make_loader(data, batch_size, shuffle=False, pad_token_id=pad_token_id,
                                 pad_to_multiple_of=8)
            cache[key] = accelerator.prepare_data_loader(loader) if accelerator is not None else loader
        logits, labels = _predict_batches(model, cache[key], len(data), accelerator)
        if labels is None:
            raise ConfigError("The evaluation split has no labels: pass a labelled split as eval_data, "
                              "or an eval_fn that scores unlabelled data.")
        return compute_metrics(logits, labels, task.metrics)

    return evaluate_split


def evaluate_across_ranks(eval_fn: EvalFn, model: torch.nn.Module, eval_data: Any, *, rank: int = 0,
                          num_processes: int = 1, shard: bool = False) -> dict[str, float]:
    """Run an evaluation under data parallelism so that every rank gets the same metrics.

    Without ``shard`` every rank evaluates the whole split and the main process's metrics are
    returned on every rank (an evaluation that draws random masks, or differs in the last bit,
    would otherwise let the ranks keep different best epochs or stop at different times, and
    hang). With ``shard`` rank ``r`` of ``N`` evaluates rows ``[r * ceil(n / N), (r + 1) *
    ceil(n / N))`` and the metrics are the shares' means weighted by their row counts, which is
    exact for metrics that are means over rows (accuracy, a mean loss); a mean over tokens
    is weighted by rows, so it is exact only when the shares hold equal token counts.

    Raises:
        ConfigError: fewer rows than ranks with ``shard``, or ranks that return other metrics.
    """
    if num_processes == 1:
        return dict(eval_fn(model, eval_data))
    import torch.distributed as dist

    if not shard:
        decided = [dict(eval_fn(model, eval_data))]
        dist.broadcast_object_list(decided, src=0)  # the main process's metrics, on every rank
        return decided[0]
    size = len(eval_data)
    if size < num_processes:
        raise ConfigError(f"shard_eval needs at least one evaluation row per rank ({size} rows, "
                          f"{num_processes} ranks): pass more rows or shard_eval=False.")
    per = math.ceil(size / num_processes)
    rows = range(min(rank * per, size), min((rank + 1) * per, size))
    share = eval_data.select(rows) if hasattr(eval_data, "select") else torch.utils.data.Subset(eval_data, rows)
    mine = (len(rows), {k: float(v) for k, v in eval_fn(model, share).items()} if len(rows) else None)
    every: list[Any] = [None] * num_processes
    dist.all_gather_object(every, mine)  # every rank gets every rank's (rows, metrics)
    scored = [(n, m) for n, m in every if m is not None]
    names = list(scored[0][1])
    if any(list(m) != names for _, m in scored):
        raise ConfigError(f"With shard_eval every rank must return the same metrics; got "
                          f"{sorted({tuple(m) for _, m in scored})}.")
    total = sum(n for n, _ in scored)
    return {k: sum(n * m[k] for n, m in scored) / total for k in names}


def _batches_from(loader: Iterable[dict], skip: int) -> Iterable[dict]:
    """The loader's batches without the first ``skip`` (resuming mid-epoch: same order)."""
    return itertools.islice(loader, skip, None) if skip else loader


def _all_finite(accelerator: "Accelerator", *values: float) -> bool:
    """True when ``values`` are finite on every rank (one all-reduce under data parallelism),
    so all ranks stop together instead of one rank raising while the others hang."""
    bad = float(not all(math.isfinite(v) for v in values))
    if accelerator.num_processes > 1:
        flag = torch.tensor([bad], device=accelerator.device)
        bad = float(accelerator.reduce(flag, reduction="sum").item())
    return bad == 0.0


def fit(
    model: torch.nn.Module,
    train_data: Any,
    eval_data: Any = None,
    *,
    task: Optional[TaskSpec | str] = None,
    config: Optional[TrainConfig] = None,
    loss_fn: LossFn = default_loss,
    param_groups: Optional[list[dict[str, Any]]] = None,
    callbacks: Sequence[Callback] = (),
    pad_token_id: Optional[int] = None,
    batch_sampler: Optional[Any] = None,
    collate_fn: Optional[Callable[[list[dict]], dict]] = None,
    eval_fn: Optional[EvalFn] = None,
    epoch_callbacks: Sequence[EpochCallback] = (),
    select_metric: Optional[str] = None,
    greater_is_better: bool = True,
    shard_eval: bool = False,
) -> History:
    """Train ``model`` on a tokenized split and evaluate it after every epoch.

    Args:
        model: a module whose forward takes the batch's model inputs (a Hugging Face model:
            ``.loss`` and ``.logits``, see :func:`tlutils.models.load_model`); any module works
            with a ``loss_fn`` (and an ``eval_fn`` when it has no ``.logits``).
        train_data: a split from :func:`tlutils.data.tokenize_task`, or any map-style dataset of
            dicts with ``input_ids`` (and what ``loss_fn`` needs).
        eval_data: the split scored after each epoch (None and no ``eval_fn``: no evaluation,
            no selection).
        task: the task; its metrics score ``eval_data`` and ``metrics[0]`` selects the best
            epoch. Optional with an ``eval_fn``.
        config: a :class:`TrainConfig` (default settings if None).
        loss_fn: ``loss_fn(model, batch) -> (loss, stats)``; the batch holds what the collator
            made (``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``, and
            ``teacher_logits`` when the split has that column) on the right device. Stats
            (floats) are averaged per epoch into the history.
        param_groups: AdamW parameter groups with absolute ``lr`` values (default:
            :func:`weight_decay_groups`). The warmup/decay schedule scales every group.
        callbacks: called as ``callback(state)`` after every optimizer step, with ``state``
            holding ``epoch``, ``batch`` (position in the epoch), ``global_step`` and ``loss``;
            a callback with an ``on_train_begin(state)`` method is also called once before the
            first step (``global_step`` 0, or the step a resumed run continues from).
        pad_token_id: padding id (default: ``model.config.pad_token_id``).
        batch_sampler: yields lists of indices into ``train_data`` (mixing tasks, pairing source
            and target examples); default: length-grouped batches, one disjoint shard per rank.
            Its ``set_epoch(epoch)`` is called before each epoch when it has one; under
            ``accelerate launch`` it must shard by rank itself.
        collate_fn: a list of examples (dicts with ``idx``) -> a dict of tensors, e.g. MLM
            masking; default :class:`tlutils.data.PadCollator`.
        eval_fn: ``eval_fn(model, eval_data) -> metrics``, called after each epoch with the
            model in eval mode (regression, per-task metrics, held-out MLM loss); default: the
            task's metrics on ``eval_data``. Under ``accelerate launch`` every rank calls it
            and the main process's metrics decide on every rank (so all ranks keep the same
            best epoch and stop together), unless ``shard_eval``.
        epoch_callbacks: called as ``callback(record)`` after each epoch (and its evaluation)
            with the epoch's record: ``epoch``, ``train_loss``, the stats and ``eval_*`` metrics.
        select_metric: the evaluation metric that picks the best epoch (default: the task's
            main metric, else the first one ``eval_fn`` returns).
        greater_is_better: False for losses and perplexities.
        shard_eval: the ``eval_fn``'s metrics are means over examples (a loss, an accuracy),
            so each rank scores only its own contiguous share of ``eval_data`` and the shares'
            metrics are averaged, weighted by their sizes (:func:`evaluate_across_ranks`):
            the evaluation takes 1/N of the time. Not for F1, MCC or correlations.

    Returns:
        a :class:`History`; the model is left with the best epoch's weights (if
        ``config.select_best``), on the device it was trained on, in eval mode.

    Raises:
        NonFiniteLossError: the loss or the gradient norm became NaN/inf; raised before the
            update is applied (on every rank), so the model keeps its last finite weights.
        CheckpointMismatchError: ``resume`` found a checkpoint of another model, task or setting.
        ConfigError: a setting that would train nothing or crash (with the fix).
    """
    config = config or TrainConfig()
    task = get_task(task) if isinstance(task, str) else task
    check_config(config)
    if task is None and eval_data is not None and eval_fn is None:
        raise ConfigError("fit needs task= to score eval_data (its metrics), or an eval_fn.")
    if shard_eval and eval_fn is None:
        raise ConfigError("shard_eval=True applies to a custom eval_fn (the task's own evaluation already "
                          "splits the rows across ranks): pass an eval_fn or drop shard_eval.")
    check_labels(model, task, train_data)
    # cpu=True also where no GPU is visible: accelerate sets up gloo (MULTI_CPU) only then
    on_cpu = config.cpu or not torch.cuda.is_available()
    precision = resolve_mixed_precision(config.mixed_precision, cpu=on_cpu)
    groups = param_groups if param_groups is not None else weight_decay_groups(
        model, config.learning_rate, config.weight_decay)
    # Parameters in the optimizer that are frozen now and trained later (gradual unfreezing):
    # DDP registers its all-reduce hooks only for parameters that require grad when it wraps
    # the model, so they are unfrozen for the wrap, and DDP is told some may get no gradient.
    frozen_now = [p for g in groups for p in g["params"] if not p.requires_grad]
    accelerator = make_accelerator(precision, on_cpu, find_unused_parameters=bool(frozen_now),
                                   log_with=config.log_with,
                                   project_dir=config.project_dir or config.checkpoint_dir or "runs")
    if config.log_with is not None:  # the run's settings, then loss, rate and metrics as it goes
        accelerator.init_trackers(task.name if task else "tlutils",
                                  config={k: v for k, v in asdict(config).items() if isinstance(v, (int, float, str, bool))})
    pad = pad_token_id if pad_token_id is not None else getattr(
        getattr(model, "config", None), "pad_token_id", 0) or 0
    # Lengths rounded up to a multiple of 8: tensor cores want it on GPUs, and on CPUs it bounds
    # the number of distinct batch shapes (oneDNN caches work per shape; with every length its
    # own shape, resident memory kept growing over an epoch and peaked 19% above the Trainer's).
    train_loader = make_loader(train_data, config.batch_size, shuffle=True, seed=config.seed, pad_token_id=pad,
                               group_by_length=config.group_by_length, pad_to_multiple_of=8,
                               num_replicas=accelerator.num_processes, rank=accelerator.process_index,
                               batch_sampler=batch_sampler, collate_fn=collate_fn,
                               pin_memory=accelerator.device.type == "cuda")
    evaluate_fn = eval_fn
    if evaluate_fn is None and eval_data is not None:
        evaluate_fn = default_eval_fn(task, config.eval_batch_size, pad, accelerator)
    selecting = evaluate_fn is not None

    # The schedule counts this rank's optimizer steps: the loader is already this rank's shard.
    batches_per_epoch = len(train_loader)
    updates_per_epoch = math.ceil(batches_per_epoch / config.grad_accum_steps)
    total_steps = config.epochs * updates_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = int(config.warmup_fraction * total_steps)
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)  # one kernel, not a loop
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: linear_warmup_decay(s, warmup_steps, total_steps))
    for param in frozen_now:
        param.requires_grad_(True)
    model, optimizer = accelerator.prepare(model, optimizer)
    for param in frozen_now:
        param.requires_grad_(False)
    if config.compile:  # the caller's module keeps the weights; unwrap_model undoes the wrapper
        model = torch.compile(model)
    unwrapped = accelerator.unwrap_model(model)
    main_metric = select_metric or (task.main_metric if task else None)

    state = TrainState(fingerprint=run_fingerprint(unwrapped, task.name if task else None, config,
                                                   precision, accelerator.num_processes))
    # On a CPU the dropout masks cost 16% of a step; tlutils.dropout draws them from a quarter of
    # the random numbers (1.15x the throughput). GPUs draw them inside fused kernels already.
    use_fast_dropout = config.fast_dropout if config.fast_dropout is not None else accelerator.device.type == "cpu"
    state.history = History(task=task.name if task else "", main_metric=main_metric or "",
                            mixed_precision=precision, fast_dropout=use_fast_dropout)
    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    best_state: Optional[dict[str, torch.Tensor]] = None
    last_checkpoint: Optional[Path] = None
    if ckpt_dir is not None and config.resume and latest_checkpoint(ckpt_dir) is not None:
        path = latest_checkpoint(ckpt_dir)
        saved = TrainState.from_dict(json.loads((path / "trainer_state.json").read_text()))
        if saved.fingerprint != state.fingerprint:
            changed = sorted(k for k in {**saved.fingerprint, **state.fingerprint}
                             if saved.fingerprint.get(k) != state.fingerprint.get(k))
            differences = "; ".join(f"{k}: {saved.fingerprint.get(k)!r} there, {state.fingerprint.get(k)!r} here"
                                    for k in changed)
            raise CheckpointMismatchError(
                f"Checkpoint {path} was written by another run ({differences}); use another "
                f"checkpoint_dir, resume=False, or the same settings.")
        accelerator.load_state(str(path))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        state = saved
        if (path / "best_model.safetensors").is_file():
            from safetensors.torch import load_file

            best_state = load_file(str(path / "best_model.safetensors"))
        last_checkpoint = path
    history = state.history

    clock: dict[str, Optional[float]] = {"since": None}  # when the time not yet in history began

    def count_time() -> None:
        """Add the training time since the last count to the history (so a checkpoint written
        mid-epoch carries it, and a resumed run's throughput counts only real training time)."""
        if clock["since"] is not None:
            now = time.perf_counter()
            history.train_seconds += now - clock["since"]
            clock["since"] = now

    def checkpoint() -> None:
        nonlocal last_checkpoint
        count_time()
        last_checkpoint = _save_checkpoint(accelerator, ckpt_dir, state.to_dict(), best_state,
                                           scheduler.state_dict())
        if clock["since"] is not None:  # writing the checkpoint is not training time
            clock["since"] = time.perf_counter()

    def train_epoch(epoch: int) -> bool:
        """One epoch (or what is left of it after a resume); True when max_steps was reached."""
        sampler = train_loader.batch_sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # a new order every epoch, on every rank
        if not state.batch:
            state.start_epoch()
        model.train()
        clock["since"], start = time.perf_counter(), state.batch
        bar = tqdm(_batches_from(train_loader, start), total=batches_per_epoch, initial=start,
                   disable=not show, leave=False, desc=f"epoch {epoch + 1}/{config.epochs}")
        window_start = (start // config.grad_accum_steps) * config.grad_accum_steps
        try:
            for index, batch in enumerate(bar, start=start):
                batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items() if k != "idx"}
                window = min(config.grad_accum_steps, batches_per_epoch - window_start)  # short at the end
                last = index + 1 == window_start + window
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    loss, stats = loss_fn(model, batch)
                    value = loss.detach().float().item()
                    if not _all_finite(accelerator, value):
                        raise _non_finite("Loss", value, state.global_step, epoch, index, last_checkpoint)
                    accelerator.backward(loss / window)
                n = batch["input_ids"].shape[0]
                state.running_loss += value * n
                state.running_seen += n
                state.running_tokens += (int(batch["attention_mask"].sum()) if "attention_mask" in batch
                                         else batch["input_ids"].numel())
                for key, v in stats.items():
                    state.running_stats[key] = state.running_stats.get(key, 0.0) + float(v) * n
                state.batch = index + 1
                if not last:
                    continue
                window_start = index + 1
                if config.max_grad_norm is not None:
                    norm = float(accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm))
                    if not _all_finite(accelerator, norm):
                        raise _non_finite("Gradient norm", norm, state.global_step, epoch, index, last_checkpoint)
                optimizer.step()
                if not getattr(optimizer, "step_was_skipped", False):  # fp16: an overflow skips the step
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.global_step += 1
                history.steps.append({"step": state.global_step, "epoch": epoch + state.batch / batches_per_epoch,
                                      "loss": value, "lr": scheduler.get_last_lr()[0]})
                if show and state.global_step % 10 == 0:
                    bar.set_postfix(loss=f"{state.running_loss / state.running_seen:.4f}")
                if config.log_with is not None:
                    accelerator.log({"train/loss": value, "train/lr": scheduler.get_last_lr()[0]}, step=state.global_step)
                if selecting and config.eval_every and state.global_step % config.eval_every == 0:
                    point = {"step": state.global_step, "epoch": epoch + state.batch / batches_per_epoch}
                    count_time()  # evaluating is not training time
                    evaluate_and_select(point)
                    history.evaluations.append(point)
                    model.train()
                    clock["since"] = time.perf_counter()
                if ckpt_dir is not None and config.checkpoint_every and state.global_step % config.checkpoint_every == 0:
                    checkpoint()
                for callback in callbacks:
                    callback({"epoch": epoch, "batch": state.batch, "global_step": state.global_step, "loss": value})
                if config.max_steps is not None and state.global_step >= config.max_steps:
                    return True
            return False
        finally:
            bar.close()
            count_time()
            clock["since"] = None

    def evaluate_and_select(record: dict[str, Any]) -> None:
        """Score the model, keep its weights if it is the best so far, count bad epochs."""
        nonlocal best_state, main_metric
        model.eval()
        metrics = evaluate_across_ranks(evaluate_fn, accelerator.unwrap_model(model), eval_data,
                                        rank=accelerator.process_index, num_processes=accelerator.num_processes,
                                        shard=shard_eval)
        record.update({f"eval_{k}": v for k, v in metrics.items()})
        if main_metric is None:
            main_metric = history.main_metric = next(iter(metrics))
        if main_metric not in metrics:
            raise ConfigError(f"select_metric={main_metric!r} is not among the evaluation's metrics "
                              f"({', '.join(metrics)}).")
        score = float(metrics[main_metric])
        better = history.best_score is None or (score > history.best_score if greater_is_better
                                                else score < history.best_score)
        if better:
            history.best_score, history.best_epoch, state.bad_epochs = score, record["epoch"], 0
            history.best_step = state.global_step
            if config.select_best:
                weights = accelerator.unwrap_model(model).state_dict()
                best_state = {k: v.detach().cpu().clone() for k, v in weights.items()}
        else:
            state.bad_epochs += 1
        if config.log_with is not None:
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.global_step)

    tqdm = _tqdm()
    show = _progress_enabled(config.progress) and accelerator.is_local_main_process
    finished = False
    for callback in callbacks:  # e.g. gradual unfreezing sets the trainable layers of a resumed step
        if hasattr(callback, "on_train_begin"):
            callback.on_train_begin({"epoch": state.epoch, "batch": state.batch, "global_step": state.global_step})
    masks = contextlib.ExitStack()
    try:
        if use_fast_dropout:
            masks.enter_context(fast_dropout(unwrapped))
        done = config.max_steps is not None and state.global_step >= config.max_steps
        for epoch in range(state.epoch, config.epochs):
            if done or (config.early_stopping_patience is not None
                        and state.bad_epochs >= config.early_stopping_patience):
                break
            done = train_epoch(epoch)
            totals = torch.tensor([state.running_loss, state.running_seen, state.running_tokens,
                                   *[state.running_stats[k] for k in sorted(state.running_stats)]],
                                  dtype=torch.float64, device=accelerator.device)
            if accelerator.num_processes > 1:  # the epoch's loss over every rank's examples
                totals = accelerator.reduce(totals, reduction="sum")
            seen = max(float(totals[1]), 1.0)
            history.train_samples += int(totals[1])
            history.train_tokens += int(totals[2])
            record = {"epoch": epoch + 1, "train_loss": float(totals[0]) / seen,
                      **{k: float(v) / seen for k, v in zip(sorted(state.running_stats), totals[3:])}}
            if selecting and history.evaluations and history.evaluations[-1]["step"] == state.global_step:
                record.update({k: v for k, v in history.evaluations[-1].items() if k.startswith("eval_")})
            elif selecting:  # (not twice for the same weights when eval_every ends on the epoch)
                evaluate_and_select(record)
            history.epochs.append(record)
            for callback in epoch_callbacks:
                callback(dict(record))
            state.epoch, state.batch = epoch + 1, 0
            state.start_epoch()
            if ckpt_dir is not None:
                checkpoint()
        finished = True
    finally:  # also after an error: the caller's model without accelerate's wrappers, in eval mode
        masks.close()  # its own dropout modules and attention back
        model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        model.eval()
        if config.log_with is not None:
            accelerator.end_training()
    history.stopped_early = (config.early_stopping_patience is not None
                             and state.bad_epochs >= config.early_stopping_patience
                             and len(history.epochs) < config.epochs)
    if finished and config.select_best and best_state is not None:
        model.load_state_dict(best_state)
    history.peak_memory_mb = peak_memory_mb(accelerator.device)
    if accelerator.device.type == "cuda":  # release cached GPU memory for the next run; on a CPU
        accelerator.free_memory()  # its full gc.collect() only costs ~0.5 s per fit
    return history


def _non_finite(what: str, value: float, step: int, epoch: int, index: int,
                last_checkpoint: Optional[Path]) -> NonFiniteLossError:
    where = f"{last_checkpoint}" if last_checkpoint else "none (set checkpoint_dir to keep one)"
    return NonFiniteLossError(
        f"{what} is {value} at optimizer step {step + 1} (epoch {epoch + 1}, batch {index + 1}); the "
        f"update was not applied; last good checkpoint: {where}. Lower the learning rate or use "
        f"mixed_precision='no', check the labels, then resume.")
