"""Pretraining runs of miniature models, cached by a hash of their recipe.

``pretrain(Recipe(family="bert", objective="mlm+nsp", steps=600))`` builds (or reads) the corpus
and the tokenizer, packs the examples, builds the model, and trains it with ``tlutils.train.fit``
-- the book's one training loop -- then saves the model, its tokenizer and a record under
``output_dir("pretraining")/runs/<family>-<objective>-<hash>/``. The hash covers the recipe,
the corpus hash, the tokenizer's key and the resolved precision, so:

- a later chapter that asks for the same recipe reuses the run (``record.json`` marks it done);
- a chapter run alone (Colab opens one chapter) re-creates what it needs;
- a run killed mid-way resumes exactly where it stopped the next time it is asked for: ``fit``
  checkpoints every ``checkpoint_every`` steps into the run's folder and ``resume=True``
  continues from there (model, optimizer, schedule, RNG states, position in the epoch; masks
  are a function of seed, epoch and example, see :mod:`tlutils.pretraining.batches`);
- ``snapshot_every`` keeps the weights every N steps (``snapshots/step-000100``...), the
  x-axis of a "downstream gain vs pretraining steps" curve.

Throughput: ``record["tokens_per_second"]`` counts non-padding training tokens
(``History.train_tokens``) per second of training (``fit``'s ``train_seconds``, which leaves out
evaluations and checkpoint writes, less the snapshot writes). bf16 autocast comes from ``fit``'s ``mixed_precision="auto"``
(on CPUs with native bf16, and on GPUs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from tlutils.errors import ConfigError, DataError
from tlutils.pretraining.architectures import (FAMILIES, FAMILY_TOKENIZER, build_pretraining_model,
                                               check_max_length, mini_config)
from tlutils.pretraining.batches import EpochBatchSampler, PretrainingCollator, duplicate, make_examples, tokenize_documents
from tlutils.pretraining.corpus import Corpus, build_corpus
from tlutils.pretraining.objectives import OBJECTIVES, PretrainingModel, clm_eval_fn, mlm_eval_fn, pretraining_loss
from tlutils.pretraining.tokenizer import load_pretraining_tokenizer, tokenizer_key, train_tokenizer

RUN_VERSION = 1  # bump when a change makes old cached runs wrong
RECORD, MODEL, GENERATOR, TOKENIZER, SNAPSHOTS, CHECKPOINTS = (
    "record.json", "model", "generator", "tokenizer", "snapshots", "checkpoint")
HELDOUT_SEED = 0  # the held-out documents and their masks are the same for every recipe


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a pretraining run's result (all of it enters the cache key).

    Model: ``family``, ``hidden``, ``layers``, ``heads``, ``intermediate``, ``embedding_size``,
    ``share_layers``, ``generator_size`` (see :func:`~tlutils.pretraining.architectures.mini_config`).
    Data: ``tokenizer`` (default: the family's), ``vocab_size``, ``max_length``,
    ``max_train_documents`` (a seeded subset, e.g. to see several epochs so static and dynamic
    masking differ), ``heldout_fraction``/``max_heldout_examples``.
    Objective: ``objective`` (:data:`~tlutils.pretraining.objectives.OBJECTIVES`), ``masking``
    (``dynamic``/``static``), ``static_copies`` (RoBERTa's 10), ``mlm_probability``,
    ``rtd_weight`` (ELECTRA's lambda).
    Optimisation: ``steps``, ``batch_size``, ``learning_rate``, ``warmup_fraction``,
    ``weight_decay``, ``seed``, ``mixed_precision``. Outputs: ``eval_every`` (held-out loss every
    N steps besides each epoch end), ``snapshot_every`` (weights kept every N steps).
    """

    family: str = "bert"
    objective: str = "mlm"
    tokenizer: Optional[str] = None
    vocab_size: int = 8000
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 512
    embedding_size: Optional[int] = None
    share_layers: bool = False
    generator_size: float = 0.25
    rtd_weight: float = 50.0
    max_length: int = 128
    masking: str = "dynamic"
    static_copies: int = 10
    mlm_probability: float = 0.15
    steps: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    max_train_documents: Optional[int] = None
    heldout_fraction: float = 0.01
    max_heldout_examples: int = 128
    eval_every: Optional[int] = None
    snapshot_every: Optional[int] = None
    mixed_precision: str = "auto"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r}: use one of {', '.join(FAMILIES)}.")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective={self.objective!r}: use one of {', '.join(OBJECTIVES)}.")
        if self.masking not in ("dynamic", "static"):
            raise ConfigError(f"masking={self.masking!r}: use 'dynamic' or 'static'.")
        for name in ("steps", "batch_size", "static_copies", "max_heldout_examples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: use a positive integer.")

    @property
    def tokenizer_kind(self) -> str:
        return self.tokenizer or FAMILY_TOKENIZER[self.family]

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with some fields changed: ``recipe.replace(steps=100)``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def recipe_key(recipe: Recipe, corpus_hash: str, tokenizer_hash: str, precision: str) -> str:
    """The cache key of a run: a SHA-256 of the recipe, the corpus and tokenizer hashes, the
    resolved precision and :data:`RUN_VERSION` (any change gives another folder)."""
    spec = {"recipe": recipe.to_dict(), "corpus": corpus_hash, "tokenizer": tokenizer_hash,
            "precision": precision, "version": RUN_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@dataclass
class PretrainedRun:
    """A finished (cached) pretraining run: its folder, recipe and record.

    ``record`` holds the history, held-out losses before and after, trained tokens, tokens per
    second, precision, CPU, parameters and the snapshots. Load weights with :meth:`load`.
    """

    folder: Path
    recipe: Recipe
    record: dict[str, Any]

    @classmethod
    def read(cls, folder: Path) -> "PretrainedRun":
        record = json.loads((folder / RECORD).read_text())
        return cls(folder, Recipe(**record["recipe"]), record)

    @property
    def tokenizer(self):
        """The run's tokenizer (a ``PreTrainedTokenizerFast``)."""
        return load_pretraining_tokenizer(self.folder / TOKENIZER)

    @property
    def snapshots(self) -> list[tuple[int, Path]]:
        """``(step, folder)`` of every kept snapshot, by step; the final weights are :meth:`path`."""
        found = [(int(p.name.split("-")[1]), p) for p in (self.folder / SNAPSHOTS).glob("step-*") if p.is_dir()]
        return sorted(found)

    def path(self, step: Optional[int] = None) -> Path:
        """The folder of the final weights (``step=None``) or of the snapshot at ``step``; for
        ELECTRA the discriminator's (the generator is in ``<folder>/generator``)."""
        if step is None or step == self.recipe.steps:
            return self.folder / MODEL
        folder = self.folder / SNAPSHOTS / f"step-{step:06d}"
        if not folder.is_dir():
            have = ", ".join(str(s) for s, _ in self.snapshots) or "none (set snapshot_every)"
            raise ConfigError(f"No snapshot at step {step} in {self.folder}: available steps {have}.")
        return folder

    def load(self, model_class: Any = None, step: Optional[int] = None, **kwargs: Any) -> torch.nn.Module:
        """Pretrained weights into a ``transformers`` class: by default the pretraining model
        itself; ``AutoModelForSequenceClassification`` with ``num_labels=2`` for fine-tuning
        (its classifier starts random, as after any pretraining)."""
        from transformers import AutoModelForPreTraining

        from tlutils.models import _quiet_transformers

        cls = model_class or AutoModelForPreTraining
        if model_class is None and self.recipe.family == "roberta":
            from transformers import AutoModelForMaskedLM as cls  # noqa: N813
        if model_class is None and self.recipe.family == "gpt2":
            from transformers import AutoModelForCausalLM as cls  # noqa: N813
        with _quiet_transformers():
            return cls.from_pretrained(str(self.path(step)), **kwargs)


def _subset(documents: list, n: Optional[int], seed: int) -> list:
    if n is None or n >= len(documents):
        return documents
    if n < 1:
        raise ConfigError(f"max_train_documents={n}: use None (all) or a positive number.")
    picked = sorted(random.Random(seed).sample(range(len(documents)), n))
    return [documents[i] for i in picked]


def run_folder(recipe: Recipe, corpus: Corpus) -> Path:
    """Where ``pretrain(recipe)`` keeps (or will keep) its run."""
    from tlutils.config import output_dir, resolve_mixed_precision

    precision = resolve_mixed_precision(recipe.mixed_precision, cpu=not torch.cuda.is_available())
    key = recipe_key(recipe, corpus.hash, tokenizer_key(corpus.hash, recipe.tokenizer_kind, recipe.vocab_size), precision)
    return output_dir("pretraining") / "runs" / f"{recipe.family}-{recipe.objective.replace('+', '-')}-{key[:12]}"


def pretrain(recipe: Recipe, *, corpus: Optional[Corpus] = None, callbacks: Sequence[Callable[[dict], None]] = (),
             checkpoint_every: Optional[int] = None, force: bool = False, keep_checkpoint: bool = False,
             progress: Optional[bool] = None, verbose: bool = True) -> PretrainedRun:
    """Pretrain a miniature model with ``fit`` (or return the cached run).

    Args:
        recipe: what to train (:class:`Recipe`).
        corpus: the corpus (default :func:`~tlutils.pretraining.corpus.build_corpus`, cached).
        callbacks: extra ``fit`` callbacks (called after every optimizer step).
        checkpoint_every: optimizer steps between resume checkpoints (default: the snapshot
            interval, else a quarter of the run); a checkpoint also ends every epoch.
        force: train again even when the run is cached.
        keep_checkpoint: keep the resume checkpoint (optimizer state) after the run finishes.
        progress: ``fit``'s progress bar (None: on unless ``TLUTILS_PROGRESS=0``).
        verbose: print one line: cached or trained, held-out loss, tokens/s.

    Returns:
        a :class:`PretrainedRun`.

    Raises:
        ConfigError: a sequence length above the model's positions, a bad recipe field.
        DataError: a corpus with no usable examples for the objective.
    """
    from tlutils.config import resolve_mixed_precision, set_seed
    from tlutils.models import count_parameters
    from tlutils.results import environment
    from tlutils.train import TrainConfig, fit, latest_checkpoint

    started = time.perf_counter()
    corpus = corpus if corpus is not None else build_corpus()
    folder = run_folder(recipe, corpus)
    if (folder / RECORD).is_file() and not force:
        run = PretrainedRun.read(folder)
        if verbose:
            print(_summary(run.record, cached=True))
        return run
    if force and folder.exists():
        shutil.rmtree(folder)
    tokenizer = train_tokenizer(corpus, recipe.tokenizer_kind, recipe.vocab_size)
    config = mini_config(recipe.family, tokenizer, hidden=recipe.hidden, layers=recipe.layers, heads=recipe.heads,
                         intermediate=recipe.intermediate, max_positions=recipe.max_length + 2,
                         embedding_size=recipe.embedding_size, share_layers=recipe.share_layers)
    check_max_length(config, recipe.max_length)

    train_docs, heldout_docs = corpus.split(recipe.heldout_fraction, seed=HELDOUT_SEED)
    train_docs = _subset(train_docs, recipe.max_train_documents, recipe.seed)
    causal = recipe.objective == "clm"
    tokens = _document_tokens(corpus, tokenizer, tokenizer_key(corpus.hash, recipe.tokenizer_kind, recipe.vocab_size))
    train = make_examples(train_docs, tokenizer, recipe.objective, recipe.max_length, recipe.seed,
                          token_docs=[tokens[id(d)] for d in train_docs])
    if not train:
        raise DataError(f"The corpus gives no {recipe.objective} examples: use more documents.")
    if recipe.masking == "static" and not causal:
        train = duplicate(train, recipe.static_copies)
    heldout_tokens = [tokens[id(d)] for d in heldout_docs]
    heldout = make_examples(heldout_docs, tokenizer, "clm" if causal else "mlm", recipe.max_length,
                            token_docs=heldout_tokens)[:recipe.max_heldout_examples]
    electra = recipe.objective == "electra"
    collator = PretrainingCollator(tokenizer, "clm" if causal else "mlm", masking=recipe.masking, seed=recipe.seed,
                                   mlm_probability=recipe.mlm_probability,
                                   mask_fraction=1.0 if electra else 0.8, random_fraction=0.0 if electra else 0.1)
    sampler = EpochBatchSampler(train, recipe.batch_size, [collator], seed=recipe.seed)
    eval_fn = clm_eval_fn(tokenizer) if causal else mlm_eval_fn(tokenizer, mask_seed=HELDOUT_SEED,
                                                                 mlm_probability=recipe.mlm_probability)
    metric = "clm_loss" if causal else "mlm_loss"

    set_seed(recipe.seed)
    model = PretrainingModel(build_pretraining_model(config, generator_size=recipe.generator_size),
                             recipe.objective, recipe.rtd_weight)
    model.eval()
    initial = eval_fn(model, heldout)  # step 0: the random model on the same masks

    snapshot_seconds = 0.0

    def snapshot(state: dict) -> None:
        nonlocal snapshot_seconds
        step = state["global_step"]
        if recipe.snapshot_every and step % recipe.snapshot_every == 0 and step < recipe.steps:
            began = time.perf_counter()
            target = folder / SNAPSHOTS / f"step-{step:06d}"
            if not target.is_dir():
                _save_pretrained(model.pretrained(), target)
            snapshot_seconds += time.perf_counter() - began

    precision = resolve_mixed_precision(recipe.mixed_precision, cpu=not torch.cuda.is_available())
    every = checkpoint_every or recipe.snapshot_every or max(1, recipe.steps // 4)
    train_config = TrainConfig(
        epochs=math.ceil(recipe.steps / len(sampler)), max_steps=recipe.steps, learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay, warmup_fraction=recipe.warmup_fraction, batch_size=recipe.batch_size,
        eval_batch_size=64, mixed_precision=recipe.mixed_precision, seed=recipe.seed, select_best=False,
        checkpoint_dir=str(folder / CHECKPOINTS), checkpoint_every=every, resume=True,
        eval_every=recipe.eval_every, progress=progress)
    resumed = latest_checkpoint(folder / CHECKPOINTS) is not None
    with _quiet_tied_weights():
        history = fit(model, train, heldout, config=train_config, loss_fn=pretraining_loss, batch_sampler=sampler,
                      collate_fn=collator, eval_fn=eval_fn, select_metric=metric, greater_is_better=False,
                      callbacks=[snapshot, *callbacks])

    _save_pretrained(model.pretrained(), folder / MODEL)
    if electra:
        _save_pretrained(model.model.generator, folder / GENERATOR)
    tokenizer.save_pretrained(str(folder / TOKENIZER))
    tokens = history.train_tokens  # non-padding tokens; fit's train_seconds leaves out evaluations
    seconds = max(history.train_seconds - snapshot_seconds, 1e-9)
    last = next((e for e in reversed([*history.evaluations, *history.epochs]) if f"eval_{metric}" in e), {})
    record = {
        "recipe": recipe.to_dict(), "key": folder.name, "version": RUN_VERSION,
        "corpus": {k: corpus.stats.get(k) for k in ("bytes", "words", "sentences", "documents")} | {"hash": corpus.hash},
        "tokenizer": {"kind": recipe.tokenizer_kind, "vocab_size": len(tokenizer)},
        "examples": {"train": len(train), "heldout": len(heldout), "train_documents": len(train_docs),
                     "heldout_documents": len(heldout_docs)},
        "parameters": {"total": count_parameters(model), "kept": count_parameters(model.pretrained())},
        "initial": initial, "final": {k[len("eval_"):]: v for k, v in last.items() if k.startswith("eval_")},
        "steps": history.steps[-1]["step"] if history.steps else 0,
        "epochs_seen": history.train_samples / len(train),
        "trained_tokens": tokens, "train_seconds": seconds, "tokens_per_second": tokens / seconds,
        "samples_per_second": history.train_samples / seconds, "precision": precision,
        "resumed": resumed, "wall_seconds": time.perf_counter() - started,
        "snapshots": sorted(int(p.name.split("-")[1]) for p in (folder / SNAPSHOTS).glob("step-*")),
        "history": history.to_dict(), "environment": environment(precision),
    }
    from tlutils.results import _plain

    (folder / (RECORD + ".tmp")).write_text(json.dumps(_plain(record), indent=1))
    (folder / (RECORD + ".tmp")).replace(folder / RECORD)
    if not keep_checkpoint:
        shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)
    if verbose:
        print(_summary(record, cached=False))
    return PretrainedRun(folder, recipe, record)


_TOKENS: dict[tuple[int, str, str], tuple[Corpus, dict[int, list[list[int]]]]] = {}


def _document_tokens(corpus: Corpus, tokenizer: Any, key: str) -> dict[int, list[list[int]]]:
    """The token ids of every corpus document, by ``id(document)``: tokenized once per process
    and tokenizer, so that several recipes on one vocabulary (a chapter's arms) do not each spend
    seconds tokenizing the same corpus. Tokenization is per sentence, so a subset's ids are the
    ones it would get alone. One corpus x tokenizer is kept (the corpus with it, so the ids stay
    valid)."""
    cache_key = (id(corpus), corpus.hash, key)
    if cache_key not in _TOKENS:
        _TOKENS.clear()
        ids = tokenize_documents(corpus.documents, tokenizer)
        _TOKENS[cache_key] = (corpus, {id(d): t for d, t in zip(corpus.documents, ids)})
    return _TOKENS[cache_key][1]


@contextlib.contextmanager
def _quiet_tied_weights() -> Iterator[None]:
    """Silence accelerate's "Removed shared tensor ... while saving" on every checkpoint: the
    shared tensors are the tied LM-head/embedding weights (and ELECTRA's shared embeddings),
    stored once and restored through the tie on load (the resume test checks the weights)."""
    logger = logging.getLogger("accelerate.utils.other")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _save_pretrained(model: torch.nn.Module, folder: Path) -> None:
    """``save_pretrained`` into a temporary folder, then renamed: a kill leaves no half model."""
    from tlutils.config import is_main_process

    if not is_main_process():
        return
    from tlutils.config import quiet_progress

    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with quiet_progress():  # transformers 5 draws a bar per saved shard
        model.save_pretrained(str(tmp))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def _summary(record: dict[str, Any], cached: bool) -> str:
    recipe = record["recipe"]
    metric = "clm_loss" if recipe["objective"] == "clm" else "mlm_loss"
    start, end = record["initial"].get(metric, float("nan")), record["final"].get(metric, float("nan"))
    how = "cached" if cached else "trained"
    return (f"{recipe['family']} {recipe['objective']} ({how}, {record['steps']} steps): held-out {metric} "
            f"{start:.3f} -> {end:.3f}; {record['tokens_per_second']:,.0f} tokens/s "
            f"({record['precision']}, {record['train_seconds']:.0f} s of training)")
