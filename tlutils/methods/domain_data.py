"""Leave-one-domain-out data: the protocol of Part IV (diversity transfer), enforced in code.

One domain of a multi-domain task is the *target*; the others are *sources*. What each party
may see:

============================  ==============================  ==========================
data                          where it comes from             who may use it
============================  ==============================  ==========================
``source_train``              the sources' training rows      training (labels)
``source_validation``         the sources' validation rows    model selection (labels)
``target_unlabelled``         the target's training *text*    adaptation (no labels)
``target_test``               the target's test rows          evaluation only
:func:`oracle_train`          the target's training labels    the named oracle arm only
============================  ==============================  ==========================

The target's training rows are loaded without their ``label`` column, so a method cannot
train on them by accident; :class:`SourceTargetDataset` refuses target items that carry
labels, and :class:`SourceTargetCollator` marks every target row with label ``-100`` (the
ignore index of ``cross_entropy``). Rows are subsampled per domain with a seed that does not
depend on the other domains, and :func:`domain_features` caches frozen-encoder features per
domain, so every target and every chapter of the part reuses the same encodings.

The protocol follows the multi-source domain-adaptation literature: Blitzer, Dredze &
Pereira, *Biographies, Bollywood, Boom-boxes and Blenders*, ACL 2007,
https://aclanthology.org/P07-1056/ (the Amazon benchmark), and Zhao et al., *Adversarial
Multiple Source Domain Adaptation*, NeurIPS 2018, https://arxiv.org/abs/1805.09198
(leave-one-domain-out over the same four domains).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from tlutils.data import MODEL_INPUTS, PadCollator, get_task, load_split
from tlutils.errors import ConfigError, DataError

if TYPE_CHECKING:
    from datasets import Dataset

    from tlutils.config import Profile

SPLITS = ("train", "validation", "test")
_SIZES = {  # rows per domain and split; None: every row
    "smoke": {"train": 32, "validation": 32, "test": 32},
    "small": {"train": 400, "validation": 200, "test": 400},
}


def per_domain_sizes(profile: "Profile | str") -> dict[str, Optional[int]]:
    """Rows per domain for each split in a profile: smoke 32/32/32, small 400/200/400 (train /
    validation / test), record and full every row. Every chapter of Part IV uses these, so the
    feature caches of one chapter serve the next."""
    name = profile if isinstance(profile, str) else profile.name
    return dict(_SIZES.get(name, {s: None for s in SPLITS}))


def check_domains(task: str, target: str, sources: Optional[Sequence[str]] = None) -> tuple[str, ...]:
    """The sources of a leave-one-domain-out split (default: every domain but the target).

    Raises:
        ConfigError: an unknown domain, a target that is also a source, no sources, or a
            source named twice (each with the fix).
    """
    spec = get_task(task)
    if not spec.domains:
        raise ConfigError(f"Task {task!r} has no domains: use a multi-domain task such as 'amazon' or 'mnli'.")
    named = [target, *(sources or ())]
    unknown = sorted({d for d in named if d not in spec.domains})
    if unknown:
        raise ConfigError(f"Task {task!r} has no domain {', '.join(map(repr, unknown))}: "
                          f"choose from {', '.join(spec.domains)}.")
    if sources is None:
        return tuple(d for d in spec.domains if d != target)
    sources = tuple(sources)
    if target in sources:
        raise ConfigError(f"{target!r} is the target and also a source: leave it out of sources "
                          f"(its labels may only evaluate).")
    if not sources:
        raise ConfigError("sources is empty: name at least one source domain, or pass None for all others.")
    if len(set(sources)) != len(sources):
        raise ConfigError(f"sources {list(sources)} names a domain twice: list each source once.")
    return sources


def domain_rows(task: str, domain: str, split: str, *, max_examples: Optional[int] = None,
                seed: int = 0, labelled: bool = True, data_dir: Optional[os.PathLike] = None) -> "Dataset":
    """One domain's rows of one split, subsampled with a seed that ignores the other domains.

    Args:
        task: a multi-domain task (``"amazon"``, ``"mnli"``).
        domain: one of its domains.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        max_examples: keep at most this many rows (a seeded random subset, kept in file order).
        seed: the seed of the subset.
        labelled: False drops ``label`` and ``label_name`` (a target's training text).
        data_dir: a local data folder (default ``$TLUTILS_DATA_DIR``, then the hub).

    Returns:
        a ``datasets.Dataset`` with the schema's columns (``domain`` included).

    Raises:
        ConfigError: an unknown domain or split; DataError: the domain has no rows.
    """
    from datasets import Dataset

    check_domains(task, domain)
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")
    rows = [r for r in load_split(get_task(task), split, data_dir, labelled=labelled) if r["domain"] == domain]
    if not rows:
        raise DataError(f"Task {task!r}, domain {domain!r} has no {split!r} rows: check "
                        f"{get_task(task).folder}/{split}.jsonl in the data folder, or choose another domain.")
    if max_examples is not None:
        if max_examples < 1:
            raise ConfigError(f"max_examples={max_examples}: keep at least one row, or None for all.")
        if max_examples < len(rows):
            keep = np.sort(np.random.default_rng(seed).permutation(len(rows))[:max_examples])
            rows = [rows[i] for i in keep]
    return Dataset.from_list(rows)


def _concat(parts: Sequence["Dataset"]) -> "Dataset":
    from datasets import concatenate_datasets

    return concatenate_datasets(list(parts)) if len(parts) > 1 else parts[0]


@dataclass(frozen=True)
class DomainSplit:
    """One leave-one-domain-out split (see the module docstring for who may use what).

    Attributes:
        task, target: the task and its target domain.
        sources: the source domains, in the order of :meth:`source_domain_ids`.
        source_train, source_validation: the sources' labelled rows, domain after domain.
        target_unlabelled: the target's training rows without ``label``/``label_name``.
        target_test: the target's labelled test rows (evaluation only).
    """

    task: str
    target: str
    sources: tuple[str, ...]
    source_train: "Dataset"
    source_validation: "Dataset"
    target_unlabelled: "Dataset"
    target_test: "Dataset"

    @property
    def num_sources(self) -> int:
        return len(self.sources)

    def source_domain_ids(self, split: str = "train") -> np.ndarray:
        """The index in :attr:`sources` of every row of ``source_train`` (or ``source_validation``)."""
        rows = {"train": self.source_train, "validation": self.source_validation}[split]
        position = {d: i for i, d in enumerate(self.sources)}
        return np.array([position[d] for d in rows["domain"]], dtype=np.int64)


def leave_one_domain_out(task: str, target: str, sources: Optional[Sequence[str]] = None, *,
                         sizes: Optional[Mapping[str, Optional[int]]] = None, seed: int = 0,
                         data_dir: Optional[os.PathLike] = None) -> DomainSplit:
    """The split with ``target`` held out and ``sources`` (default: every other domain) labelled.

    Args:
        task: a multi-domain task.
        target: the target domain.
        sources: the source domains (default: all the others).
        sizes: rows per domain and split (:func:`per_domain_sizes`); None: every row.
        seed: the seed of the per-domain subsets.
        data_dir: a local data folder.

    Raises:
        ConfigError: an unknown domain, a target that is also a source; DataError: a domain
            without rows.

    Example:
        >>> split = leave_one_domain_out("amazon", "kitchen", sizes=per_domain_sizes("smoke"))  # doctest: +SKIP
        >>> split.sources, "label" in split.target_unlabelled.column_names  # doctest: +SKIP
        (('books', 'dvd', 'electronics'), False)
    """
    sources = check_domains(task, target, sources)
    sizes = dict(sizes or {})

    def rows(domain: str, split: str, labelled: bool = True) -> "Dataset":
        return domain_rows(task, domain, split, max_examples=sizes.get(split), seed=seed,
                           labelled=labelled, data_dir=data_dir)

    return DomainSplit(
        task=task, target=target, sources=sources,
        source_train=_concat([rows(d, "train") for d in sources]),
        source_validation=_concat([rows(d, "validation") for d in sources]),
        target_unlabelled=rows(target, "train", labelled=False),
        target_test=rows(target, "test"),
    )


def oracle_train(task: str, target: str, *, sizes: Optional[Mapping[str, Optional[int]]] = None,
                 seed: int = 0, data_dir: Optional[os.PathLike] = None) -> "Dataset":
    """The target's *labelled* training rows: for the in-domain ceiling (the oracle arm) only.

    The same rows as the split's ``target_unlabelled``, with their labels: an oracle trained on
    them shows what the target's labels would have bought.
    """
    check_domains(task, target)
    return domain_rows(task, target, "train", max_examples=dict(sizes or {}).get("train"), seed=seed,
                       data_dir=data_dir)


def domain_runs(domains: Sequence[str]) -> list[tuple[str, int, int]]:
    """Maximal runs of equal consecutive domains: ``[(domain, start, stop), ...]``."""
    runs: list[tuple[str, int, int]] = []
    start = 0
    for i in range(1, len(domains) + 1):
        if i == len(domains) or domains[i] != domains[start]:
            runs.append((domains[start], start, i))
            start = i
    return runs


def domain_features(model: torch.nn.Module, tokenizer: Any, dataset: "Dataset", *, max_length: int = 128,
                    pooling: str = "mean", layer: int = -1, batch_size: int = 64) -> np.ndarray:
    """Frozen-encoder features of a dataset's rows (pairs when it has ``text_b``), cached per domain.

    Each run of consecutive rows of one domain is encoded by
    :func:`tlutils.methods.features.cached_features` (a file per model, texts and length), so
    the same domain subset costs one encoding however many targets, methods and chapters use it.

    Args:
        model: an encoder or a model with one.
        tokenizer: its tokenizer.
        dataset: rows with ``text_a`` (and ``text_b``), e.g. a :class:`DomainSplit` split.
        max_length: truncate longer inputs.
        pooling: ``"mean"`` or ``"cls"``.
        layer: which layer's states (``-1``: the last; ``0``: the embeddings).
        batch_size: inputs per forward pass.

    Shapes:
        Returns (N, H) float32.
    """
    from tlutils.methods.features import POOLINGS, cached_features

    if pooling not in POOLINGS:
        raise ConfigError(f"pooling={pooling!r}: use one of {', '.join(POOLINGS)}.")
    if len(dataset) == 0:
        raise DataError("domain_features got an empty dataset: load rows first (leave_one_domain_out).")
    columns = dataset.column_names
    domains = dataset["domain"] if "domain" in columns else ["all"] * len(dataset)
    texts_a = dataset["text_a"]
    texts_b = dataset["text_b"] if "text_b" in columns else None
    parts = []
    for _, start, stop in domain_runs(domains):
        features, _ = cached_features(model, tokenizer, texts_a[start:stop],
                                      texts_b[start:stop] if texts_b is not None else None,
                                      max_length=max_length, batch_size=batch_size)
        parts.append(features[pooling][layer])  # (n, H)
    return np.concatenate(parts).astype(np.float32)


# --------------------------------------------------------------------------- paired source/target batches


def feature_items(n: int) -> list[dict[str, Any]]:
    """``n`` items that index a feature table: item ``i`` is ``{"input_ids": [i]}``.

    For a model that looks its inputs up in a table of cached features (such as
    :class:`tlutils.methods.multitask.CachedFeatureEncoder`); add ``"labels"`` to source items.
    """
    return [{"input_ids": [i]} for i in range(n)]


class SourceTargetDataset(torch.utils.data.Dataset):
    """Labelled source items, then unlabelled target items, each with its ``domain_id``.

    Index ``i < len(source)`` is source item ``i`` with ``domain_id = source_domain_ids[i]``;
    index ``len(source) + j`` is target item ``j`` with ``domain_id = num_sources``.

    Args:
        source: map-style dataset of dicts with ``input_ids`` and ``labels`` (a tokenized
            split, or :func:`feature_items` with labels).
        target: map-style dataset of dicts with ``input_ids`` and **no** ``labels``.
        source_domain_ids: the source index of every source item (:meth:`DomainSplit.source_domain_ids`).
        num_sources: the number of sources (default: ``max(source_domain_ids) + 1``).

    Raises:
        DataError: a target item carries labels, a source item lacks them, or the ids do not
            match the source items.
    """

    def __init__(self, source: Any, target: Any, source_domain_ids: Sequence[int], *,
                 num_sources: Optional[int] = None) -> None:
        ids = np.asarray(source_domain_ids, dtype=np.int64)
        if len(ids) != len(source):
            raise DataError(f"source_domain_ids has {len(ids)} entries for {len(source)} source items: "
                            f"pass DomainSplit.source_domain_ids() of the same rows.")
        if len(source) == 0 or len(target) == 0:
            raise DataError(f"SourceTargetDataset needs source and target items (got {len(source)} and "
                            f"{len(target)}): load both sides of the split.")
        self.num_sources = int(num_sources if num_sources is not None else ids.max() + 1)
        if ids.min() < 0 or ids.max() >= self.num_sources:
            raise DataError(f"source_domain_ids must lie in [0, {self.num_sources}); got {ids.min()}..{ids.max()}.")
        if "labels" in target[0] or "label" in target[0]:
            raise DataError("A target item carries labels: the target's labels may only evaluate; "
                            "load its training rows unlabelled (DomainSplit.target_unlabelled).")
        if "labels" not in source[0]:
            raise DataError("Source items need 'labels': tokenize the labelled source split, or add labels to feature_items.")
        self.source, self.target, self.ids = source, target, ids

    @property
    def num_source(self) -> int:
        return len(self.source)

    @property
    def num_target(self) -> int:
        return len(self.target)

    def __len__(self) -> int:
        return len(self.source) + len(self.target)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < len(self.source):
            item = dict(self.source[index])
            item["domain_id"] = int(self.ids[index])
            return item
        item = dict(self.target[index - len(self.source)])
        if "labels" in item or "label" in item:
            raise DataError("A target item carries labels: load the target's training rows unlabelled.")
        item["domain_id"] = self.num_sources
        return item


class SourceTargetBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` source indices plus ``target_batch_size`` target indices.

    An epoch is one pass over the source items (this rank's shard of a seeded permutation); the
    target items are drawn from seeded permutations of this rank's shard of the target, pass
    after pass, so every source batch meets target rows (DANN, MDAN: Ganin et al. 2016,
    https://arxiv.org/abs/1505.07818, Algorithm 1). The same ``(seed, epoch)`` gives the same
    batches (exact resume); with ``num_replicas`` > 1 every rank has the same number of batches
    over disjoint shards (padded like ``DistributedSampler``), and the short source batch goes last.

    Indices follow :class:`SourceTargetDataset`: source ``0..num_source-1``, target after them.
    """

    def __init__(self, num_source: int, num_target: int, batch_size: int, *,
                 target_batch_size: Optional[int] = None, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0) -> None:
        target_batch_size = batch_size if target_batch_size is None else target_batch_size
        if batch_size < 1 or target_batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}, target_batch_size={target_batch_size}: use positive integers.")
        if num_source < 1 or num_target < 1:
            raise ConfigError(f"num_source={num_source}, num_target={num_target}: both sides need items.")
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank={rank} with num_replicas={num_replicas}: use 0 <= rank < num_replicas.")
        self.num_source, self.num_target = num_source, num_target
        self.batch_size, self.target_batch_size = batch_size, target_batch_size
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self, n: int, salt: int, passes: int = 0) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 10_007 + salt * 1_000_003 + self.epoch * 1_009 + passes)
        perm = torch.randperm(n, generator=gen).tolist()
        if self.num_replicas > 1:
            total = math.ceil(n / self.num_replicas) * self.num_replicas
            perm = (perm + perm[:total - n])[self.rank::self.num_replicas]
        return perm

    def batches(self) -> list[list[int]]:
        source = self._shard(self.num_source, 0)
        starts = range(0, len(source), self.batch_size)
        out = []
        stream: list[int] = []
        passes = 0
        for start in starts:
            while len(stream) < self.target_batch_size:
                stream += self._shard(self.num_target, 1, passes)
                passes += 1
            taken, stream = stream[:self.target_batch_size], stream[self.target_batch_size:]
            out.append(source[start:start + self.batch_size] + [self.num_source + j for j in taken])
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.num_source / self.num_replicas) / self.batch_size)


@dataclass
class SourceTargetCollator:
    """Pad a mixed batch and mark who is who.

    Returns ``input_ids``/``attention_mask`` (and ``token_type_ids`` when the items have them)
    padded as :class:`tlutils.data.PadCollator` does, ``labels`` (B,) long with ``-100`` on
    target rows (ignored by ``cross_entropy``), ``domain_id`` (B,) long and ``is_target`` (B,)
    bool. Target rows never carry a label: a labelled target item raises.
    """

    pad_token_id: int = 0
    pad_to_multiple_of: Optional[int] = None
    num_sources: Optional[int] = None  # default: the largest domain_id in the batch is the target's

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = [{k: e[k] for k in MODEL_INPUTS if k in e} for e in examples]
        batch = PadCollator(self.pad_token_id, self.pad_to_multiple_of)(inputs)
        domain = torch.tensor([int(e["domain_id"]) for e in examples], dtype=torch.long)
        is_target = torch.tensor(["labels" not in e for e in examples])
        if self.num_sources is not None and bool(((domain == self.num_sources) != is_target).any()):
            raise DataError("A target row carries labels or a source row lacks them: build the batch "
                            "from a SourceTargetDataset.")
        batch["labels"] = torch.tensor([int(e["labels"]) if "labels" in e else -100 for e in examples],
                                       dtype=torch.long)
        batch["domain_id"] = domain
        batch["is_target"] = is_target
        if "idx" in examples[0]:
            batch["idx"] = torch.tensor([e["idx"] for e in examples], dtype=torch.long)
        return batch
