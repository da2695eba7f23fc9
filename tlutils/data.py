"""Tasks, loading, tokenization and batching.

One schema everywhere: a split is a JSON Lines file whose rows hold ``id``, ``text_a``,
``text_b`` (pair tasks), ``label`` (int; float for regression), ``label_name`` and ``domain``
(where it applies). Data comes from, in order:

1. a local folder ``$TLUTILS_DATA_DIR/<folder>/<split>.jsonl`` (offline machines, CI);
2. the Hugging Face hub through ``datasets`` (online readers, Colab).

Batches are Hugging Face dicts (``input_ids``, ``attention_mask``, ``token_type_ids``,
``labels``) padded per batch to the longest member; training batches group similar lengths
(the book's running-example chapter measures what that saves).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from tlutils.config import is_main_process, output_dir, quiet_progress
from tlutils.errors import ConfigError, DataError, DataNotFoundError

if TYPE_CHECKING:  # imported lazily: `datasets` costs a second at import time
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedTokenizerBase

    from tlutils.config import Profile

DATA_ENV = "TLUTILS_DATA_DIR"
SPLITS = ("train", "validation", "test")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Float columns that travel with a batch as (B, C) tensors, besides the model's inputs and the
# labels: a distillation teacher's logits (see tlutils.methods.distill.with_teacher_logits).
FLOAT_COLUMNS = ("teacher_logits",)


@dataclass(frozen=True)
class HubSource:
    """Where a task lives on the Hugging Face hub and how its columns map to the schema."""

    path: str
    config: Optional[str]
    columns: Mapping[str, str]  # hub column -> schema field
    splits: Mapping[str, str]  # schema split -> hub split


@dataclass(frozen=True)
class TaskSpec:
    """Everything the library needs to know about one task."""

    name: str
    folder: str  # folder under $TLUTILS_DATA_DIR
    description: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]  # empty for regression
    metrics: tuple[str, ...]  # the first one is used for model selection
    domains: tuple[str, ...] = ()
    label_range: tuple[float, float] = (0.0, 0.0)  # regression only
    hub: Optional[HubSource] = None
    label_field: str = "label"  # the field of a local row that holds this task's label
    licence: str = ""  # the data set's terms in one phrase; chapters that use it show a notice
    restricted: bool = False  # non-commercial, or no licence granted: chapters that use it show a notice

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) == 2

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


_GLUE_PAIR = {"sentence1": "text_a", "sentence2": "text_b", "label": "label", "idx": "id"}
_NLI_PAIR = {"premise": "text_a", "hypothesis": "text_b", "label": "label"}
_NLI_LABELS = ("entailment", "neutral", "contradiction")

TASKS: dict[str, TaskSpec] = {
    "mrpc": TaskSpec(
        "mrpc", "mrpc", "Microsoft Research Paraphrase Corpus: are two news sentences paraphrases?",
        ("text_a", "text_b"), ("not_equivalent", "equivalent"), ("accuracy", "f1", "mcc"),
        hub=HubSource("nyu-mll/glue", "mrpc", _GLUE_PAIR,
                      {"train": "train", "validation": "validation", "test": "test"}),
        licence="Microsoft Research Shared Source License Agreement (MSR-SSLA), non-commercial use only",
        restricted=True,
    ),
    "rte": TaskSpec(
        "rte", "rte", "Recognizing Textual Entailment: does the first text entail the second?",
        ("text_a", "text_b"), ("entailment", "not_entailment"), ("accuracy", "f1", "mcc"),
        hub=HubSource("nyu-mll/glue", "rte", _GLUE_PAIR,
                      {"train": "train", "validation": "validation"}),
        licence="no explicit licence (redistributed by GLUE for research)",
    ),
    "stsb": TaskSpec(
        "stsb", "stsb", "STS Benchmark: how similar are two sentences, from 0 to 5?",
        ("text_a", "text_b"), (), ("pearson", "spearman"), ("news", "captions", "forum"),
        label_range=(0.0, 5.0),
        hub=HubSource("nyu-mll/glue", "stsb", _GLUE_PAIR,
                      {"train": "train", "validation": "validation"}),
        licence="scores CC BY-SA 4.0; its MSRpar and MSRvid texts under the MSR-SSLA, non-commercial use only",
        restricted=True,
    ),
    "snli": TaskSpec(
        "snli", "snli", "Stanford NLI: entailment, neutral or contradiction for caption pairs.",
        ("text_a", "text_b"), _NLI_LABELS, ("accuracy", "macro_f1"),
        hub=HubSource("stanfordnlp/snli", None, _NLI_PAIR,
                      {"train": "train", "validation": "validation", "test": "test"}),
        licence="CC BY-SA 4.0",
    ),
    "mnli": TaskSpec(
        "mnli", "mnli_genres", "MultiNLI with its five genres as domains.",
        ("text_a", "text_b"), _NLI_LABELS, ("accuracy", "macro_f1"),
        ("fiction", "government", "slate", "telephone", "travel"),
        hub=HubSource("nyu-mll/multi_nli", None,
                      {**_NLI_PAIR, "genre": "domain", "pairID": "id"},
                      {"train": "train", "validation": "validation_matched"}),
        licence="OANC licence; some fiction CC BY 3.0 or CC BY-SA 3.0",
    ),
    "sick": TaskSpec(
        "sick", "sick", "SICK: entailment between sentence pairs (flickr / semeval sources).",
        ("text_a", "text_b"), _NLI_LABELS, ("accuracy", "macro_f1"), ("flickr", "semeval", "mixed"),
        licence="CC BY-NC-SA 3.0, non-commercial use only", restricted=True,
    ),
    # The same SICK pairs, scored for relatedness (1-5, the mean of ten annotators): two tasks on one input.
    "sick_relatedness": TaskSpec(
        "sick_relatedness", "sick", "SICK: how related are two sentences, from 1 to 5?",
        ("text_a", "text_b"), (), ("pearson", "spearman"), ("flickr", "semeval", "mixed"),
        label_range=(1.0, 5.0), label_field="relatedness_score",
        licence="CC BY-NC-SA 3.0, non-commercial use only", restricted=True,
    ),
    "amazon": TaskSpec(
        "amazon", "amazon_multidomain", "Amazon reviews, positive or negative, in four domains.",
        ("text_a",), ("negative", "positive"), ("accuracy", "f1"),
        ("books", "dvd", "electronics", "kitchen"),
        licence="no licence published (research use; do not redistribute)", restricted=True,
    ),
}


def licence_notice(names: Sequence[str]) -> str:
    """The data-licence admonition a chapter shows for the tasks it reads whose terms restrict
    their use (non-commercial, or no licence granted; MyST, empty when there are none). ``tests/test_chapters.py`` checks that every
    chapter carries the notice of the tasks it loads."""
    tasks = [get_task(n) for n in dict.fromkeys(names) if get_task(n).restricted]
    seen = {}
    for task in tasks:  # sick and sick_relatedness are one data set
        seen.setdefault(task.folder, task)
    if not seen:
        return ""
    lines = [f"- {task.description.split(':')[0].split(',')[0]}: {task.licence}." for task in seen.values()]
    return (":::{admonition} Data licence\n:class: note\n" + "\n".join(lines) + "\n\n"
            "The book ships the code that reads the data, never the data; keep to these terms when you "
            "reuse the chapter's results or figures.\n:::")


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` registered as ``name`` (``mrpc``, ``rte``, ``stsb``, ...)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"Unknown task {name!r}: use one of {', '.join(TASKS)}.") from None


# --------------------------------------------------------------------------- loading


def validate_row(row: Mapping[str, Any], task: TaskSpec, where: str, labelled: bool = True) -> dict[str, Any]:
    """Check one row against the schema and return it in canonical form.

    ``labelled=False`` reads unlabelled text (a target domain's): no ``label`` is needed, and
    the row comes back without ``label`` and ``label_name`` even when the file has them.

    Raises:
        DataError: a missing field, an empty text, or a label outside the task's label set.
    """
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected a JSON object with id, {', '.join(task.text_fields)} "
                        f"and label, got {type(row).__name__}.")
    if task.label_field != "label" and labelled:  # e.g. SICK's relatedness_score beside its label
        if row.get(task.label_field) is None:
            raise DataError(f"{where}: field {task.label_field!r} is missing; task {task.name!r} reads its "
                            f"label from it (use the task that reads 'label' for this file).")
        row = {**row, "label": row[task.label_field]}
    for key in ("id", *task.text_fields, *(("label",) if labelled else ())):
        if key not in row or row[key] is None:
            raise DataError(f"{where}: field {key!r} is missing; every row needs id, "
                            f"{', '.join(task.text_fields)}" + (" and label" if labelled else "")
                            + " (see the data README).")
    for key in task.text_fields:
        if not isinstance(row[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}.")
        if not row[key].strip():
            raise DataError(f"{where}: field {key!r} is empty; remove the row or fill in its text.")
    if not labelled:
        return {"id": str(row["id"]), "text_a": row["text_a"], "text_b": row.get("text_b", ""),
                "domain": row.get("domain") or ""}
    label = row["label"]
    if task.is_regression:
        low, high = task.label_range
        if not isinstance(label, (int, float)) or isinstance(label, bool) or not low <= label <= high:
            raise DataError(f"{where}: label {label!r} is outside [{low}, {high}] for task "
                            f"{task.name!r}; fix the file or choose the right task.")
        label, label_name = float(label), ""
    else:
        allowed = ", ".join(f"{i} ({n})" for i, n in enumerate(task.label_names))
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < task.num_labels:
            raise DataError(f"{where}: label {label!r} is not one of {allowed} for task "
                            f"{task.name!r}; fix the file or choose the right task.")
        label_name = task.label_names[label]
    out = {"id": str(row["id"]), "text_a": row["text_a"], "text_b": row.get("text_b", ""),
           "label": label, "label_name": label_name, "domain": row.get("domain") or ""}
    return out


def read_jsonl(path: Path, task: TaskSpec, labelled: bool = True) -> list[dict[str, Any]]:
    """Read and validate one split file (see :func:`validate_row`)."""
    rows = []
    with open(path, "rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            where = f"{path}, line {number}"
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{where}: not UTF-8 (byte {err.start}: {raw_line[err.start:err.start + 1]!r}); "
                                f"re-save the file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg}); each line must be one object.") from None
            rows.append(validate_row(raw, task, where, labelled))
    return rows


def local_split_path(task: TaskSpec, split: str, data_dir: Optional[os.PathLike] = None) -> Optional[Path]:
    """``<data_dir or $TLUTILS_DATA_DIR>/<folder>/<split>.jsonl`` if that folder is configured."""
    base = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if not base:
        return None
    return Path(base).expanduser() / task.folder / f"{split}.jsonl"


def _load_hub_split(task: TaskSpec, split: str) -> list[dict[str, Any]]:
    """Rows of one split from the hub, renamed to the schema (unlabelled rows dropped)."""
    from datasets import load_dataset

    assert task.hub is not None
    hub = task.hub
    raw = load_dataset(hub.path, hub.config, split=hub.splits[split])
    rows = []
    for number, item in enumerate(raw):
        row = {ours: item[theirs] for theirs, ours in hub.columns.items() if theirs in item}
        row.setdefault("id", f"{split}-{number}")
        if row.get("label") is None or (not task.is_regression and row["label"] < 0):
            continue  # GLUE test sets and SNLI's no-consensus pairs carry label -1
        rows.append(validate_row(row, task, f"{hub.path} ({split}, row {number})"))
    return rows


def load_split(task: TaskSpec, split: str, data_dir: Optional[os.PathLike] = None,
               labelled: bool = True) -> list[dict[str, Any]]:
    """All rows of one split: from the local folder if configured, else from the hub
    (``labelled=False``: the text only, see :func:`validate_row`). A data folder without this
    task's folder falls back to the hub when the task has a hub source (a folder may hold only
    the tasks the hub lacks, as :func:`tlutils.fetch.ensure_local_data` writes on Colab)."""
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")
    path = local_split_path(task, split, data_dir)
    if path is not None and path.parent.is_dir():
        if path.is_file():
            return read_jsonl(path, task, labelled)
        raise DataNotFoundError(f"Task {task.name!r} has no split {split!r}: {path} is missing "
                                f"(available: {', '.join(p.stem for p in sorted(path.parent.glob('*.jsonl')))}).")
    if path is not None and task.hub is None:
        raise DataNotFoundError(
            f"Task {task.name!r}: folder {path.parent} does not exist; point {DATA_ENV} at the "
            f"folder that holds {task.folder}/{split}.jsonl.")
    # No folder for this task (a data folder may hold only some tasks): the hub, as missing_data says.
    if task.hub is None:
        raise DataNotFoundError(f"Task {task.name!r} has no hub source: set {DATA_ENV} to a folder "
                                f"holding {task.folder}/{split}.jsonl.")
    if split not in task.hub.splits:
        raise DataNotFoundError(f"Task {task.name!r} has no labelled {split!r} split on the hub "
                                f"(available: {', '.join(task.hub.splits)}).")
    try:
        rows = _load_hub_split(task, split)
    except Exception as err:  # offline, DNS failure, hub outage: all mean the same fix
        raise DataNotFoundError(
            f"Task {task.name!r}: " + (f"{DATA_ENV} is not set" if path is None else f"{path.parent} does not exist")
            + f" and the hub is unreachable "
            f"({type(err).__name__}); set {DATA_ENV} to a folder holding "
            f"{task.folder}/{split}.jsonl, or go online.") from err
    if not labelled:
        rows = [{k: v for k, v in r.items() if k not in ("label", "label_name")} for r in rows]
    return rows


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be asked for data: not switched off (``HF_HUB_OFFLINE``,
    ``HF_DATASETS_OFFLINE``) and ``huggingface.co`` answering on port 443."""
    import socket

    if any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
           for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def missing_data(tasks: Sequence[str] = tuple(TASKS), data_dir: Optional[os.PathLike] = None,
                 hub: Optional[bool] = None) -> list[str]:
    """The tasks of ``tasks`` that can be read from neither source: no ``<folder>/train.jsonl``
    under the data folder, and no hub source or no hub (``hub=None``: ask :func:`hub_reachable`)."""
    missing = []
    for name in tasks:
        task = get_task(name)
        path = local_split_path(task, "train", data_dir)
        if path is not None and path.is_file():
            continue
        if task.hub is not None and (hub if hub is not None else hub_reachable()):
            continue
        missing.append(name)
    return missing


def data_check_message(missing: Sequence[str]) -> str:
    """One line for a build that cannot start: which tasks lack data, and the two ways to provide them."""
    hubless = [name for name in missing if get_task(name).hub is None]
    return (f"No data for {', '.join(missing)}: set {DATA_ENV} to a folder holding <task folder>/<split>.jsonl "
            f"(README, 'Work offline'), or connect to the Hugging Face hub"
            + (f" ({', '.join(hubless)} {'has' if len(hubless) == 1 else 'have'} no hub source and "
               f"{'needs' if len(hubless) == 1 else 'need'} the folder: python -m tlutils data --fetch "
               f"{' '.join(hubless)} --to DIR downloads {'it' if len(hubless) == 1 else 'them'})." if hubless else "."))


def load_task(
    name: str,
    splits: Sequence[str] = ("train", "validation"),
    *,
    profile: Optional["Profile"] = None,
    max_train_examples: Optional[int] = None,
    max_eval_examples: Optional[int] = None,
    domains: Optional[Sequence[str]] = None,
    data_dir: Optional[os.PathLike] = None,
    seed: int = 0,
    unlabelled: Sequence[str] = (),
) -> "DatasetDict":
    """Load a task as a ``datasets.DatasetDict``, filtered by domain and subsampled.

    Args:
        name: a registered task (:data:`TASKS`).
        splits: which splits to load.
        profile: take the subset sizes from this profile (explicit sizes win).
        max_train_examples: keep at most this many training rows (random, seeded).
        max_eval_examples: the same for ``validation`` and ``test``.
        domains: keep only rows of these domains (tasks with domains only).
        data_dir: a local data folder; defaults to ``$TLUTILS_DATA_DIR``, then the hub.
        seed: the seed of the subsampling.
        unlabelled: splits loaded as text only, without ``label`` and ``label_name`` (a target
            domain whose labels must not be seen by adaptation; its rows need no labels).

    Raises:
        DataNotFoundError, DataError, ConfigError: with the fix in the message.
    """
    from datasets import Dataset, DatasetDict

    task = get_task(name)
    if profile is not None:
        max_train_examples = max_train_examples or profile.max_train_examples
        max_eval_examples = max_eval_examples or profile.max_eval_examples
    if domains is not None:
        unknown = sorted(set(domains) - set(task.domains))
        if unknown:
            raise ConfigError(f"Task {name!r} has no domain {', '.join(unknown)}: "
                              f"choose from {', '.join(task.domains) or '(none: it has no domains)'}.")
    unknown_splits = sorted(set(unlabelled) - set(splits))
    if unknown_splits:
        raise ConfigError(f"unlabelled={list(unlabelled)} names {', '.join(unknown_splits)}, which is not "
                          f"loaded: list it in splits too.")
    out = {}
    for split in splits:
        rows = load_split(task, split, data_dir, labelled=split not in unlabelled)
        if domains is not None:
            rows = [r for r in rows if r["domain"] in domains]
        if not rows:
            raise DataError(f"Task {name!r}, split {split!r} is empty"
                            + (f" after keeping domains {list(domains)}" if domains else "")
                            + ("; choose other domains or check the data folder." if domains
                               else f"; check {task.folder}/{split}.jsonl in the data folder."))
        limit = max_train_examples if split == "train" else max_eval_examples
        dataset = Dataset.from_list(rows)
        if limit is not None and limit < len(dataset):
            dataset = dataset.shuffle(seed=seed).select(range(limit))
        out[split] = dataset
    return DatasetDict(out)


# --------------------------------------------------------------------------- tokenization


@dataclass
class TruncationReport:
    """How many examples of each split lost tokens to ``max_length``."""

    max_length: int
    counts: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # split -> (n, truncated, longest)

    def fraction(self, split: str) -> float:
        n, cut, _ = self.counts[split]
        return cut / n if n else 0.0

    def __str__(self) -> str:
        lines = [f"{split}: {n} examples, {cut} truncated ({100 * cut / max(n, 1):.1f}%) at "
                 f"max_length={self.max_length}; longest {longest} tokens"
                 for split, (n, cut, longest) in self.counts.items()]
        return "\n".join(lines)


def check_max_length(tokenizer: "PreTrainedTokenizerBase", max_length: int,
                     model_positions: Optional[int] = None) -> None:
    """Refuse a ``max_length`` the model cannot embed (more tokens than position embeddings)."""
    limits = [x for x in (model_positions, getattr(tokenizer, "model_max_length", None))
              if x is not None and x < 1_000_000]
    limit = min(limits) if limits else None
    if max_length < 8:
        raise ConfigError(f"max_length={max_length} is too short for [CLS] a [SEP] b [SEP]; use >= 8.")
    if limit is not None and max_length > limit:
        raise ConfigError(f"max_length={max_length} exceeds the model's {limit} positions; "
                          f"use max_length <= {limit} (longer inputs are truncated and reported).")


TOKEN_CACHE_VERSION = 1  # bump when the output changes for the same inputs outside tokenize_task's own code


def tokenizer_fingerprint(tokenizer: "PreTrainedTokenizerBase") -> str:
    """A digest of everything that decides a tokenizer's output: its class, its vocabulary and
    rules (the fast tokenizer's JSON), its special tokens, model inputs and sides.

    Two loads of one checkpoint share it; a tokenizer trained on the spot gets its own.
    """
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the truncation and padding that the last call left set
        rules = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        digest.update(json.dumps(rules, sort_keys=True).encode())
    else:  # a slow tokenizer: datasets' own hasher pickles it
        from datasets.fingerprint import Hasher

        digest.update(Hasher.hash(tokenizer).encode())
    digest.update(json.dumps([tokenizer.special_tokens_map, list(tokenizer.model_input_names),
                              tokenizer.padding_side, tokenizer.truncation_side, len(tokenizer)],
                             sort_keys=True, default=str).encode())
    return digest.hexdigest()


@functools.cache
def _tokenization_code() -> str:
    """What the encoding depends on besides its inputs, read once per process: the source of
    :func:`tokenize_task` (a changed encoding gets new keys) and the ``tokenizers`` version."""
    import tokenizers

    return hashlib.sha256((inspect.getsource(tokenize_task) + tokenizers.__version__).encode()).hexdigest()


def _token_cache_path(data: "DatasetDict", tokenizer: "PreTrainedTokenizerBase", task: TaskSpec,
                      max_length: int, cache_dir: Optional[os.PathLike]) -> Optional[Path]:
    """Where the tokenized ``data`` is kept, or None when a split has no content fingerprint."""
    splits = {}
    for split, dataset in data.items():
        fingerprint = getattr(dataset, "_fingerprint", None)  # datasets' hash of the rows and their history
        if not fingerprint:
            return None
        splits[split] = fingerprint
    key = {"version": TOKEN_CACHE_VERSION, "code": _tokenization_code(), "task": task.name, "max_length": max_length,
           "tokenizer": tokenizer_fingerprint(tokenizer), "splits": splits}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir) if cache_dir is not None else output_dir("token_cache")
    return folder / f"tokens-{task.name}-{digest}"


def tokenize_task(
    data: "DatasetDict",
    tokenizer: "PreTrainedTokenizerBase",
    task: TaskSpec | str,
    max_length: int,
    model_positions: Optional[int] = None,
    *,
    cache: bool = True,
    cache_dir: Optional[os.PathLike] = None,
) -> tuple["DatasetDict", TruncationReport]:
    """Tokenize every split: single texts or pairs (``[CLS] a [SEP] b [SEP]``), truncated to
    ``max_length`` with the ``longest_first`` strategy, unpadded (batches pad themselves).

    The result is kept on disk, keyed by the rows (each split's ``datasets`` fingerprint), the
    tokenizer (:func:`tokenizer_fingerprint`), the task and ``max_length``: a second call with
    the same inputs, in this process or another chapter, reads it back memory-mapped instead
    of tokenizing again (and processes of one ``accelerate launch`` share the pages instead of
    holding a copy each). Only the main process writes.

    Args:
        cache: keep and reuse the result on disk (False: always tokenize, write nothing).
        cache_dir: the cache's folder; default ``tlutils.config.output_dir("token_cache")``.

    Returns:
        the tokenized data (``input_ids``, ``attention_mask``, ``token_type_ids`` where the
        model uses them, ``labels``, ``length``; the text columns stay for inspection) and a
        :class:`TruncationReport`.
    """
    from datasets import DatasetDict

    task = get_task(task) if isinstance(task, str) else task
    check_max_length(tokenizer, max_length, model_positions)
    path = _token_cache_path(data, tokenizer, task, max_length, cache_dir) if cache else None
    if path is not None and (path / "report.json").is_file():
        counts = json.loads((path / "report.json").read_text())
        report = TruncationReport(max_length, {k: tuple(v) for k, v in counts.items()})
        return DatasetDict.load_from_disk(str(path)), report
    report = TruncationReport(max_length)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[f] for f in task.text_fields]
        full = tokenizer(*texts, truncation=False, verbose=False)["input_ids"]
        enc = tokenizer(*texts, truncation="longest_first", max_length=max_length)
        enc = {k: v for k, v in enc.items() if k in MODEL_INPUTS}
        if "label" in batch:  # unlabelled text (a target domain's) has none
            enc["labels"] = batch["label"]
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        enc["full_length"] = [len(ids) for ids in full]
        return enc

    with quiet_progress():  # a bar per split is noise in a chapter
        out = data.map(encode, batched=True, load_from_cache_file=False)
    for split, dataset in out.items():
        full = dataset["full_length"]
        report.counts[split] = (len(full), sum(n > max_length for n in full), max(full, default=0))
    out = out.remove_columns("full_length")
    if path is not None and is_main_process():  # one writer; renamed whole, so a reader never sees half
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with quiet_progress():
            out.save_to_disk(str(tmp))
        (tmp / "report.json").write_text(json.dumps(report.counts))
        try:
            tmp.rename(path)
        except OSError:  # another process kept the same tokens first
            shutil.rmtree(tmp, ignore_errors=True)
    return out, report


# --------------------------------------------------------------------------- batching


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                           shuffle: bool = True, group_size: int = 50, num_replicas: int = 1,
                           rank: int = 0) -> list[list[int]]:
    """Batches of indices whose members have similar lengths, so padding wastes little.

    Shuffled: a seeded permutation is cut into groups of ``group_size`` batches, each group is
    sorted by length and cut into batches, and the batch order is shuffled again; then the full
    batch holding the longest example moves to the front and a short batch goes last. Not
    shuffled (evaluation): all indices sorted by length, longest first. The same ``(seed,
    epoch)`` always gives the same batches, which is what makes an exact resume possible.

    With ``num_replicas`` > 1 (data-parallel training) every rank computes the same seeded
    permutation and keeps every ``num_replicas``-th index from position ``rank``: the shards are
    disjoint, of equal size (the permutation is padded with its own first indices when the
    split does not divide evenly, as ``torch.utils.data.DistributedSampler`` does), so every
    rank has the same number of batches and none is dropped.
    """
    n = len(lengths)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: use a positive integer.")
    if not 0 <= rank < num_replicas:
        raise ConfigError(f"rank={rank} with num_replicas={num_replicas}: use 0 <= rank < num_replicas.")
    if not shuffle:
        order = sorted(range(n), key=lambda i: -lengths[i])[rank::num_replicas]
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    gen = torch.Generator().manual_seed(seed * 10_007 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    if num_replicas > 1:
        total = math.ceil(n / num_replicas) * num_replicas
        perm = (perm + perm[:total - n])[rank::num_replicas]
    chunk = batch_size * group_size
    batches = []
    for start in range(0, len(perm), chunk):
        group = sorted(perm[start:start + chunk], key=lambda i: -lengths[i])
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    batches = sorted([batches[i] for i in order], key=lambda b: len(b) < batch_size)  # stable: the short batch last
    # The longest full batch goes first (as transformers' LengthGroupedSampler does): the memory
    # for the largest shape is taken on the first step and reused, instead of growing in
    # fragments as longer batches arrive (peak resident memory 11% lower on MRPC), and running
    # out of memory shows on the first step, not hours in.
    full = [i for i, b in enumerate(batches) if len(b) == batch_size]
    if full:
        batches.insert(0, batches.pop(max(full, key=lambda i: max(lengths[j] for j in batches[i]))))
    return batches


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """A batch sampler over :func:`length_grouped_batches`, one shard per rank.

    ``fit`` calls :meth:`set_epoch` before each epoch (a new order every epoch); with
    ``num_replicas`` > 1 each rank iterates over its own disjoint shard, all with the same
    number of batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True,
                 seed: int = 0, group_by_length: bool = True, num_replicas: int = 1,
                 rank: int = 0) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.group_by_length = group_by_length
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        lengths = self.lengths if self.group_by_length else [0] * len(self.lengths)  # equal: stable sorts keep the order
        return length_grouped_batches(lengths, self.batch_size, self.seed, self.epoch, self.shuffle,
                                      num_replicas=self.num_replicas, rank=self.rank)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        if self.shuffle:
            return math.ceil(math.ceil(len(self.lengths) / self.num_replicas) / self.batch_size)
        return math.ceil(len(range(self.rank, len(self.lengths), self.num_replicas)) / self.batch_size)


@dataclass
class PadCollator:
    """Pad a list of tokenized examples to the longest one (dynamic padding).

    Keeps ``input_ids``/``attention_mask``/``token_type_ids``/``labels`` and ``idx`` (the
    example's position in its split, so predictions can be put back in dataset order). A split
    without labels (unlabelled target text) gives batches without ``labels``. Columns of
    :data:`FLOAT_COLUMNS` present in the examples (``teacher_logits``) are stacked into float
    tensors ``(B, C)``; they are not model inputs, so loss functions pop them first.
    """

    pad_token_id: int = 0
    pad_to_multiple_of: Optional[int] = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, torch.Tensor] = {}
        for key in MODEL_INPUTS:
            if key not in examples[0]:
                continue
            fill = self.pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor([list(e[key]) + [fill] * (longest - len(e[key]))
                                       for e in examples], dtype=torch.long)
        if "attention_mask" not in batch:
            lengths = torch.tensor([len(e["input_ids"]) for e in examples])
            batch["attention_mask"] = (torch.arange(longest)[None, :] < lengths[:, None]).long()
        if "labels" in examples[0]:
            labels = [e["labels"] for e in examples]
            dtype = torch.float if isinstance(labels[0], float) else torch.long
            batch["labels"] = torch.tensor(labels, dtype=dtype)
        for key in FLOAT_COLUMNS:
            if key in examples[0]:
                batch[key] = torch.tensor([list(e[key]) for e in examples], dtype=torch.float)  # (B, C)
        if "idx" in examples[0]:
            batch["idx"] = torch.tensor([e["idx"] for e in examples], dtype=torch.long)
        return batch


def _column_names(dataset: Any) -> Optional[list[str]]:
    """The columns of a ``datasets.Dataset`` (None for any other map-style dataset)."""
    names = getattr(dataset, "column_names", None)
    return list(names) if isinstance(names, (list, tuple)) else None


def example_lengths(dataset: Any) -> list[int]:
    """Token counts of a tokenized split: its ``length`` column, else ``len(input_ids)`` of
    every example (any map-style dataset of dicts: a ``datasets.Dataset``, a list, a
    ``torch.utils.data.Dataset``)."""
    columns = _column_names(dataset)
    if columns is not None:
        if "input_ids" not in columns:
            raise DataError("The split is not tokenized: call tlutils.data.tokenize_task first.")
        return list(dataset["length"]) if "length" in columns else [len(x) for x in dataset["input_ids"]]
    lengths = []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, Mapping) or "input_ids" not in item:
            raise DataError(f"Example {i} is not a dict with input_ids: pass tokenized examples "
                            f"(tlutils.data.tokenize_task, or dicts from the tokenizer).")
        lengths.append(int(item["length"]) if "length" in item else len(item["input_ids"]))
    return lengths


class _Indexed(torch.utils.data.Dataset):
    """A view of a tokenized split that yields only the model's columns, the labels, the
    :data:`FLOAT_COLUMNS` it has, ``domain_id`` (source/target batches of
    :mod:`tlutils.methods.domain_data`) plus ``idx``.

    A ``datasets.Dataset`` stays in Arrow (memory-mapped): a batch is read with one columnar
    lookup (``__getitems__``), so a full-size split (MNLI's 393k pairs) is never copied into
    Python lists per process. Any other map-style dataset of dicts is read item by item.
    """

    KEEP = (*MODEL_INPUTS, "labels", *FLOAT_COLUMNS, "domain_id")  # domain_id: source/target batches (Part IV)

    def __init__(self, dataset: Any) -> None:
        columns = _column_names(dataset)
        self.arrow = columns is not None
        if self.arrow:
            dataset = dataset.select_columns([c for c in self.KEEP if c in columns]).with_format(None)
        self.dataset = dataset
        self.n = len(dataset)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        if self.arrow:
            block = self.dataset[list(indices)]  # {column: [values of the batch]}
            return [{**{c: values[j] for c, values in block.items()}, "idx": i} for j, i in enumerate(indices)]
        items = []
        for i in indices:
            raw = self.dataset[i]
            item = {k: v for k, v in raw.items() if k in self.KEEP}
            if "label" in raw and "labels" not in item:
                item["labels"] = raw["label"]
            items.append({**item, "idx": i})
        return items


def make_loader(
    dataset: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    pad_token_id: int = 0,
    group_by_length: bool = True,
    pad_to_multiple_of: Optional[int] = None,
    num_replicas: int = 1,
    rank: int = 0,
    batch_sampler: Optional[Sampler] = None,
    collate_fn: Optional[Any] = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A ``DataLoader`` of dynamically padded, optionally length-grouped batches.

    Args:
        dataset: a split produced by :func:`tokenize_task`, or any map-style dataset of dicts
            with ``input_ids`` (``labels`` optional: unlabelled text gives batches without them).
        batch_size: examples per batch (per rank).
        shuffle: a new seeded order every epoch (training) or a fixed one (evaluation).
        seed: the seed of the order; the epoch is set by ``loader.batch_sampler.set_epoch``.
        pad_token_id: the tokenizer's ``pad_token_id``.
        group_by_length: batch similar lengths together (less padding, faster).
        pad_to_multiple_of: round padded lengths up (8 helps tensor cores on GPUs).
        num_replicas, rank: data-parallel shards (see :func:`length_grouped_batches`).
        batch_sampler: your own batch sampler (yields lists of indices into ``dataset``), e.g.
            one that mixes tasks or pairs source and target examples; it replaces the
            length-grouped one (and ``batch_size``/``shuffle``/``seed``/``num_replicas``).
        collate_fn: your own collator (a list of examples -> a dict of tensors), e.g. one that
            masks tokens for MLM; default :class:`PadCollator`. Examples carry ``idx``.
    """
    if len(dataset) == 0:
        raise DataError("Cannot make batches of an empty split; check the filters and subset sizes.")
    if batch_sampler is None:
        batch_sampler = LengthGroupedBatchSampler(example_lengths(dataset), batch_size, shuffle, seed,
                                                  group_by_length, num_replicas, rank)
    elif _column_names(dataset) is not None and "input_ids" not in _column_names(dataset):
        raise DataError("The split is not tokenized: call tlutils.data.tokenize_task first.")
    return DataLoader(_Indexed(dataset), batch_sampler=batch_sampler,
                      collate_fn=collate_fn or PadCollator(pad_token_id, pad_to_multiple_of),
                      generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory)
