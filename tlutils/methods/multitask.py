"""Multi-task learning with hard parameter sharing: one encoder, one head per task.

The pieces plug into :func:`tlutils.train.fit` (the book's one training loop):

- :class:`MultiTaskModel` -- a shared encoder (a Hugging Face encoder, or a small trainable
  :class:`CachedFeatureEncoder` over frozen features) and one head per task: classification
  (cross-entropy) or regression (MSE);
- :class:`MultiTaskDataset` -- several tokenized splits as one map-style dataset;
- :func:`mixing_rates` and :class:`TaskBatchSampler` -- which task each batch comes from:
  proportional, temperature-scaled (rate ∝ n^(1/T)) or round-robin; every batch holds one
  task (``fit(batch_sampler=...)``);
- :class:`MultiTaskCollator` -- pads a batch and adds its ``task_id`` (``fit(collate_fn=...)``);
- :func:`make_multitask_loss_fn` and :func:`make_multitask_eval_fn` -- ``fit``'s ``loss_fn``
  and per-task metrics after every epoch (``eval_fn``).

The chapter *Multi-task learning* (``book/traditional/multi_task.md``) derives and measures
them; *Terms II* (section ``term-multi-task-learning``) introduces the idea.
"""

from __future__ import annotations

import bisect
import math
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from tlutils.data import PadCollator, TASKS, example_lengths, get_task, length_grouped_batches, make_loader
from tlutils.errors import ConfigError, DataError
from tlutils.methods.features import encode_texts, mean_pool, pair_features
from tlutils.metrics import compute_metrics

MIXINGS = ("proportional", "temperature", "round_robin")


def check_tasks(names: Sequence[str]) -> None:
    """Refuse a task that is not registered in :data:`tlutils.data.TASKS` (one line, with the
    known tasks), an empty mix, or a task named twice."""
    if not names:
        raise ConfigError("The multi-task mix is empty: name at least one task, e.g. ('mrpc', 'rte').")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ConfigError(f"Unknown task {unknown[0]!r} in the multi-task mix: use tasks from "
                          f"{', '.join(TASKS)}.")
    if len(set(names)) != len(names):
        raise ConfigError(f"A task appears twice in the mix {list(names)}: name each task once.")


# --------------------------------------------------------------------------- frozen features


def sentence_pair_features(model: nn.Module, tokenizer: Any, pairs: Mapping[str, tuple[Sequence[str], Sequence[str]]],
                           *, max_length: int = 128, batch_size: int = 64,
                           mixed_precision: str = "auto") -> dict[str, np.ndarray]:
    """``[u, v, |u - v|, u * v]`` of every pair, each sentence encoded once by a frozen encoder.

    The sentences of all splits are pooled and deduplicated first (SICK's two tasks share
    their pairs, and its sentences recur across pairs), encoded with
    :func:`tlutils.methods.features.encode_texts` (mean pooling, eval mode) and put back.

    Args:
        model, tokenizer: the frozen encoder (or a model with one) and its tokenizer.
        pairs: ``{name: (texts_a, texts_b)}``, one entry per split.
        max_length, batch_size, mixed_precision: as in ``encode_texts``.

    Shapes:
        Returns ``{name: (N_name, 4H)}`` float32.

    Reference: Reimers & Gurevych, *Sentence-BERT*, EMNLP 2019, https://arxiv.org/abs/1908.10084.
    """
    if not pairs:
        raise ConfigError("sentence_pair_features needs at least one split: {'mrpc/train': (texts_a, texts_b)}.")
    unique = list(dict.fromkeys(t for a, b in pairs.values() for t in (*a, *b)))
    emb = encode_texts(model, tokenizer, unique, max_length=max_length, batch_size=batch_size,
                       mixed_precision=mixed_precision)  # (U, H)
    row = {t: i for i, t in enumerate(unique)}
    return {name: pair_features(emb[[row[t] for t in a]], emb[[row[t] for t in b]])  # (N, 4H)
            for name, (a, b) in pairs.items()}


# --------------------------------------------------------------------------- the model


class CachedFeatureEncoder(nn.Module):
    """Frozen features looked up by row id, then a small *trainable* shared layer.

    The frozen encoder's output for every pair was computed once; this module stands in for
    the encoder: "token" ``i`` of ``input_ids`` is row ``i`` of the feature table, and a
    trainable ``Linear -> ReLU -> Dropout`` maps it to the shared representation. Multi-task
    learning over it is still hard parameter sharing, only the shared part is this layer
    instead of a whole transformer.

    Args:
        features: the frozen feature table, one row per example (a buffer, never trained).
        hidden: width of the shared layer.
        dropout: dropout after it.

    Shapes:
        features: (N, D); input_ids, attention_mask: (B, 1) -> last_hidden_state (B, 1, hidden).
    """

    def __init__(self, features: torch.Tensor | np.ndarray, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        table = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        if table.ndim != 2 or len(table) == 0:
            raise ConfigError(f"CachedFeatureEncoder needs a (N, D) feature table with N > 0, got shape "
                              f"{tuple(table.shape)}.")
        self.register_buffer("table", table, persistent=False)
        self.shared = nn.Sequential(nn.Linear(table.shape[1], hidden), nn.ReLU(), nn.Dropout(dropout))
        self.config = SimpleNamespace(hidden_size=hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                **_: Any) -> SimpleNamespace:
        x = self.table[input_ids]  # (B, 1, D)
        return SimpleNamespace(last_hidden_state=self.shared(x))  # (B, 1, H)


def feature_rows(labels: Sequence[float | int]) -> list[dict[str, Any]]:
    """Examples for a :class:`CachedFeatureEncoder`: row ``i`` is ``{"input_ids": [i], "labels": y_i}``.

    Give each task's split its own table (or offset the ids yourself) so that the ids index
    the right rows.
    """
    return [{"input_ids": [i], "labels": y} for i, y in enumerate(labels)]


class MultiTaskModel(nn.Module):
    """A shared encoder and a linear head per task, on the mean-pooled token states.

    ``forward(task, batch)`` returns ``(logits, loss)`` for that task's head; the training
    loss of a step over several tasks is the sum (or a weighted sum) of their losses, and the
    shared encoder receives the sum of their gradients. Classification heads are trained with
    cross-entropy, regression heads (one output) with the mean squared error.

    Args:
        encoder: a Hugging Face encoder returning ``last_hidden_state`` (e.g.
            ``load_model(...).base_model``), or a :class:`CachedFeatureEncoder`.
        num_labels: ``{task name: number of classes}`` (1 for a regression task).
        dropout: dropout before each head.
        regression: the tasks whose head is a regression (one output, MSE); by default the
            tasks registered as regression tasks (``stsb``, ``sick_relatedness``).

    Shapes:
        batch["input_ids"], batch["attention_mask"]: (B, T); logits: (B, C_task) ((B, 1) for
        a regression task).

    Reference: Caruana, *Multitask Learning*, Machine Learning 28, 1997; Liu et al., *Multi-Task
    Deep Neural Networks for Natural Language Understanding*, ACL 2019,
    https://arxiv.org/abs/1901.11504.
    """

    def __init__(self, encoder: nn.Module, num_labels: Mapping[str, int], dropout: float = 0.1,
                 regression: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        if not num_labels:
            raise ConfigError("MultiTaskModel needs at least one task: num_labels={'mrpc': 2, ...}.")
        if regression is None:
            regression = [t for t in num_labels if t in TASKS and TASKS[t].is_regression]
        extra = sorted(set(regression) - set(num_labels))
        if extra:
            raise ConfigError(f"regression names {', '.join(extra)}, which has no head: add it to num_labels.")
        for task in regression:
            if num_labels[task] != 1:
                raise ConfigError(f"Regression task {task!r} needs num_labels 1, got {num_labels[task]}.")
        self.encoder = encoder
        self.tasks = tuple(num_labels)
        self.regression = frozenset(regression)
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({task: nn.Linear(hidden, n) for task, n in num_labels.items()})

    @classmethod
    def for_tasks(cls, encoder: nn.Module, tasks: Sequence[str], dropout: float = 0.1) -> "MultiTaskModel":
        """Heads sized from the registered tasks (``tlutils.data.TASKS``): classes or regression."""
        check_tasks(tasks)
        return cls(encoder, {t: get_task(t).num_labels for t in tasks}, dropout)

    def task_loss(self, task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy for a classification head, MSE for a regression head (float32)."""
        if task in self.regression:
            return F.mse_loss(logits.float().squeeze(-1), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def forward(self, task: str, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if task not in self.heads:
            raise ConfigError(f"No head for task {task!r}: this model has heads for {', '.join(self.tasks)}.")
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.encoder(**inputs).last_hidden_state  # (B, T, H)
        pooled = mean_pool(hidden, batch["attention_mask"])  # (B, H)
        logits = self.heads[task](self.dropout(pooled))  # (B, C_task)
        labels = batch.get("labels")
        loss = self.task_loss(task, logits, labels) if labels is not None else None
        return logits, loss


# --------------------------------------------------------------------------- data


class MultiTaskDataset(torch.utils.data.Dataset):
    """Several tasks' tokenized splits as one map-style dataset, in the order given.

    Index ``i`` belongs to task :meth:`task_of` ``(i)``; the examples are the splits' own rows
    (a ``datasets.Dataset`` from :func:`tlutils.data.tokenize_task`, or a list of dicts).

    Args:
        splits: ``{task name: tokenized split}``; the names must be registered tasks.
    """

    def __init__(self, splits: Mapping[str, Any]) -> None:
        check_tasks(list(splits))
        empty = [t for t, s in splits.items() if len(s) == 0]
        if empty:
            raise DataError(f"Task {empty[0]!r} has no examples in the mix: drop it or load its split.")
        self.tasks = tuple(splits)
        self.parts = list(splits.values())
        self.offsets = [0, *np.cumsum([len(p) for p in self.parts]).tolist()]

    @property
    def sizes(self) -> dict[str, int]:
        """``{task: number of examples}``."""
        return {t: len(p) for t, p in zip(self.tasks, self.parts)}

    def task_of(self, index: int) -> int:
        """The position (in :attr:`tasks`) of the task that example ``index`` belongs to."""
        return bisect.bisect_right(self.offsets, index) - 1

    def lengths(self) -> list[int]:
        """Token counts of every example, task after task."""
        return [n for part in self.parts for n in example_lengths(part)]

    def collator(self, pad_token_id: int = 0, pad_to_multiple_of: Optional[int] = None) -> "MultiTaskCollator":
        """The :class:`MultiTaskCollator` of this dataset."""
        return MultiTaskCollator(self.tasks, self.offsets, pad_token_id, pad_to_multiple_of)

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        t = self.task_of(index)
        return self.parts[t][index - self.offsets[t]]


class MultiTaskCollator:
    """Pad one task's examples (:class:`tlutils.data.PadCollator`) and add ``task_id``.

    ``fit`` moves every entry of a batch to the device, so the task travels as a tensor: the
    index of the task in ``tasks`` (``tasks[batch["task_id"]]`` is its name).

    Args:
        tasks: the task names, in the dataset's order.
        offsets: where each task's examples start in the dataset (and, last, its length).
        pad_token_id, pad_to_multiple_of: as in :class:`tlutils.data.PadCollator`.

    Raises:
        DataError: a batch mixes tasks (use :class:`TaskBatchSampler`).
    """

    def __init__(self, tasks: Sequence[str], offsets: Sequence[int], pad_token_id: int = 0,
                 pad_to_multiple_of: Optional[int] = None) -> None:
        self.tasks = tuple(tasks)
        self.offsets = list(offsets)
        self.pad = PadCollator(pad_token_id, pad_to_multiple_of)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = {bisect.bisect_right(self.offsets, e["idx"]) - 1 for e in examples}
        if len(ids) != 1:
            raise DataError(f"A batch mixes tasks {sorted(self.tasks[i] for i in ids)}: batch with "
                            f"TaskBatchSampler, whose every batch holds one task.")
        batch = self.pad(examples)
        batch["task_id"] = torch.tensor(ids.pop(), dtype=torch.long)  # ()
        return batch


# --------------------------------------------------------------------------- mixing


def mixing_rates(sizes: Mapping[str, int], temperature: float = 1.0) -> dict[str, float]:
    """How often each task is sampled: ``rate ∝ n^(1/T)``, normalised to sum to 1.

    ``T = 1`` is proportional to the task sizes, ``T = 2`` takes square roots (the small
    tasks are sampled more often than their share), ``T = math.inf`` is uniform; T5's
    ``rate_num_examples`` with its ``temperature`` (Raffel et al. 2020, section 3.5.2).

    Args:
        sizes: ``{task: number of training examples}`` (each > 0).
        temperature: T > 0 (``math.inf`` allowed).

    Returns:
        ``{task: rate}`` in the order of ``sizes``.

    Reference: Raffel et al., *Exploring the Limits of Transfer Learning with a Unified
    Text-to-Text Transformer*, JMLR 2020, https://arxiv.org/abs/1910.10683.
    """
    if not sizes:
        raise ConfigError("mixing_rates needs at least one task size: {'mrpc': 3668, ...}.")
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature}: use T > 0 (1 = proportional, 2 = square root, "
                          f"math.inf = uniform).")
    bad = {t: n for t, n in sizes.items() if not n > 0}
    if bad:
        raise ConfigError(f"Task sizes must be positive, got {bad}: drop empty tasks from the mix.")
    weights = {t: 1.0 if math.isinf(temperature) else float(n) ** (1.0 / temperature) for t, n in sizes.items()}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def batch_counts(rates: Mapping[str, float], num_batches: int) -> dict[str, int]:
    """Split ``num_batches`` between tasks in proportion to ``rates`` (largest remainder, so
    the counts add up exactly and each is within one of ``rate * num_batches``)."""
    exact = {t: r * num_batches for t, r in rates.items()}
    counts = {t: int(math.floor(v)) for t, v in exact.items()}
    left = num_batches - sum(counts.values())
    for t in sorted(exact, key=lambda t: counts[t] - exact[t])[:left]:  # largest remainders first
        counts[t] += 1
    return counts


class TaskBatchSampler(Sampler[list[int]]):
    """Batches of one task each, the task drawn by a mixing strategy; for ``fit(batch_sampler=...)``.

    Every epoch has ``num_batches`` batches. ``"proportional"`` and ``"temperature"`` give each
    task ``rate * num_batches`` of them (:func:`mixing_rates`, :func:`batch_counts`) in a
    seeded random order; ``"round_robin"`` cycles through the tasks in order. A task's batches
    come from a seeded permutation of its examples (length-grouped as in
    :func:`tlutils.data.length_grouped_batches`); a task that needs more batches than it has
    starts another pass (oversampling), one that needs fewer leaves the rest of its examples
    for later epochs. The same ``(seed, epoch)`` gives the same batches (exact resume).

    Like :class:`tlutils.data.LengthGroupedBatchSampler` it is rank-aware: with
    ``num_replicas`` > 1 every rank follows the same task sequence (every rank trains the same
    head in the same step) over its own disjoint shard of each task, so all ranks have
    ``num_batches`` batches.

    Args:
        sizes: ``{task: examples}`` in the order the tasks are concatenated
            (:attr:`MultiTaskDataset.sizes`).
        batch_size: examples per batch (per rank).
        mixing: ``"proportional"``, ``"temperature"`` or ``"round_robin"``.
        temperature: T of ``"temperature"`` mixing (2 by default; ignored otherwise).
        num_batches: batches per epoch; default: one pass over every task's shard
            (``sum(ceil(n_t / batch_size))``).
        lengths: token counts of all examples (concatenated), for length grouping; None: no grouping.
        seed: the seed of every order.
        num_replicas, rank: data-parallel shards.
    """

    def __init__(self, sizes: Mapping[str, int], batch_size: int, *, mixing: str = "temperature",
                 temperature: float = 2.0, num_batches: Optional[int] = None,
                 lengths: Optional[Sequence[int]] = None, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0) -> None:
        check_tasks(list(sizes))
        if mixing not in MIXINGS:
            raise ConfigError(f"mixing={mixing!r}: use one of {', '.join(MIXINGS)}.")
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: use a positive integer.")
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank={rank} with num_replicas={num_replicas}: use 0 <= rank < num_replicas.")
        self.rates = mixing_rates(sizes, {"proportional": 1.0, "temperature": temperature,
                                          "round_robin": math.inf}[mixing])
        self.sizes = dict(sizes)
        self.tasks = tuple(sizes)
        self.offsets = [0, *np.cumsum(list(sizes.values())).tolist()]
        total = self.offsets[-1]
        if lengths is not None and len(lengths) != total:
            raise ConfigError(f"lengths has {len(lengths)} entries for {total} examples: pass "
                              f"MultiTaskDataset.lengths() of the same dataset.")
        self.lengths = list(lengths) if lengths is not None else None
        self.batch_size, self.mixing, self.temperature = batch_size, mixing, temperature
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0
        per_rank = {t: math.ceil(n / num_replicas) for t, n in sizes.items()}
        self.num_batches = (num_batches if num_batches is not None
                            else sum(math.ceil(n / batch_size) for n in per_rank.values()))
        if self.num_batches < 1:
            raise ConfigError(f"num_batches={num_batches}: use a positive number of batches per epoch.")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def task_sequence(self) -> list[int]:
        """The task (its position in ``sizes``) of each batch of this epoch, the same on every rank."""
        n_tasks = len(self.tasks)
        if self.mixing == "round_robin":
            return [i % n_tasks for i in range(self.num_batches)]
        counts = batch_counts(self.rates, self.num_batches)
        sequence = [i for i, t in enumerate(self.tasks) for _ in range(counts[t])]
        gen = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
        return [sequence[i] for i in torch.randperm(len(sequence), generator=gen).tolist()]

    def _task_batches(self, task: int, needed: int) -> list[list[int]]:
        """``needed`` batches of one task (global indices), pass after pass over its shard."""
        start, stop = self.offsets[task], self.offsets[task + 1]
        lengths = self.lengths[start:stop] if self.lengths is not None else [0] * (stop - start)
        out: list[list[int]] = []
        passes = 0
        while len(out) < needed:  # each pass: a fresh seeded order of this rank's shard
            batches = length_grouped_batches(lengths, self.batch_size, self.seed * 1_009 + task,
                                             self.epoch * 1_000 + passes, shuffle=True,
                                             num_replicas=self.num_replicas, rank=self.rank)
            out += [[start + i for i in b] for b in batches]
            passes += 1
        return out[:needed]

    def batches(self) -> list[list[int]]:
        sequence = self.task_sequence()
        streams = {t: iter(self._task_batches(t, sequence.count(t))) for t in set(sequence)}
        return [next(streams[t]) for t in sequence]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return self.num_batches


# --------------------------------------------------------------------------- fit's loss and evaluation


def make_multitask_loss_fn(tasks: Sequence[str], weights: Optional[Mapping[str, float]] = None
                           ) -> Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]:
    """``fit``'s ``loss_fn`` for batches of :class:`MultiTaskCollator`: the batch's task head.

    Args:
        tasks: the task names in the dataset's order (``batch["task_id"]`` indexes them).
        weights: a loss weight per task (default 1 for every task).

    Returns:
        ``loss_fn(model, batch) -> (loss, stats)``; ``stats`` has ``share_<task>`` (1 for the
        batch's task, else 0), so the epoch's record in ``History`` holds the share of the
        examples that came from each task.
    """
    check_tasks(list(tasks))
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(tasks))
    if unknown:
        raise ConfigError(f"weights name {', '.join(unknown)}, not in the mix: use {', '.join(tasks)}.")

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        task = tasks[int(batch.pop("task_id"))]
        _, loss = model(task, batch)
        return loss * weights.get(task, 1.0), {f"share_{t}": float(t == task) for t in tasks}

    return loss_fn


@torch.inference_mode()
def predict_task(model: MultiTaskModel, task: str, dataset: Any, *, batch_size: int = 128,
                 pad_token_id: int = 0) -> np.ndarray:
    """One head's outputs on a split, in the split's order.

    Shapes:
        Returns (N, C_task) float32 ((N, 1) for a regression head).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: Optional[torch.Tensor] = None
    try:
        for batch in make_loader(dataset, batch_size, shuffle=False, pad_token_id=pad_token_id):
            idx = batch.pop("idx")
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits = model(task, batch)[0].float().cpu()  # (B, C)
            if out is None:
                out = torch.zeros((len(dataset), logits.shape[-1]))
            out[idx] = logits
    finally:
        model.train(was_training)
    return out.numpy()


def task_labels(dataset: Any) -> np.ndarray:
    """The gold labels of a split (a ``datasets.Dataset`` or a list of dicts), in order."""
    names = getattr(dataset, "column_names", None)
    if isinstance(names, (list, tuple)):
        return np.asarray(dataset["labels"])
    return np.asarray([row["labels"] for row in dataset])


def evaluate_tasks(model: MultiTaskModel, eval_sets: Mapping[str, Any], *, batch_size: int = 128,
                   pad_token_id: int = 0) -> dict[str, float]:
    """Every task's metrics on its own evaluation split (the task's registered metrics).

    Returns:
        ``{"<task>_<metric>": value}`` for every task and metric, and ``"average"``: the mean of
        the tasks' main metrics (accuracy, or Pearson for a regression task).
    """
    return make_multitask_eval_fn(batch_size, pad_token_id)(model, eval_sets)


def make_multitask_eval_fn(batch_size: int = 128, pad_token_id: int = 0
                           ) -> Callable[[nn.Module, Mapping[str, Any]], dict[str, float]]:
    """``fit``'s ``eval_fn``: per-task metrics after every epoch, with ``eval_data`` the mapping
    ``{task: tokenized split}`` (:func:`evaluate_tasks`; select on ``"average"`` or one task's
    metric, e.g. ``select_metric="rte_accuracy"``).

    The returned function keeps every evaluation's outputs in its ``predictions`` list (one
    ``{task: (N, C) array}`` per call), so an epoch's model can be compared example by example."""
    predictions: list[dict[str, np.ndarray]] = []

    def eval_fn(model: nn.Module, eval_sets: Mapping[str, Any]) -> dict[str, float]:
        check_tasks(list(eval_sets))
        outputs = {t: predict_task(model, t, d, batch_size=batch_size, pad_token_id=pad_token_id)
                   for t, d in eval_sets.items()}
        predictions.append(outputs)
        scores: dict[str, float] = {}
        for task, data in eval_sets.items():
            spec = get_task(task)
            values = compute_metrics(outputs[task], task_labels(data), spec.metrics)
            scores.update({f"{task}_{k}": v for k, v in values.items()})
        scores["average"] = float(np.mean([scores[f"{t}_{get_task(t).main_metric}"] for t in eval_sets]))
        return scores

    eval_fn.predictions = predictions  # type: ignore[attr-defined]
    return eval_fn
