"""Fine-tuning real pretrained checkpoints (BERT, ALBERT, RoBERTa, DistilBERT, ELECTRA) with one recipe.

Part III pretrains miniatures on a CPU; this module is the same experiment at full size, for a
GPU with the Hugging Face hub: each of :data:`CHECKPOINTS` is fine-tuned on MRPC and RTE with the
*same* recipe (:class:`FinetuneRecipe`) through :func:`tlutils.train.fit`, the book's one training
loop, and its dev-set accuracy and F1 are recorded next to the published numbers
(:data:`CITED`, never mixed with measured ones). ``benchmarks/finetune_checkpoints.py`` runs
every checkpoint, task and seed; the chapter *BERT* (``book/pretrained/bert.md``) runs one seed.

What differs between the five architectures, and what this module checks before training
(:func:`check_pair_encoding`):

- the pair layout: ``[CLS] A [SEP] B [SEP]`` (BERT, ALBERT, DistilBERT, ELECTRA) or
  ``<s> A </s></s> B </s>`` (RoBERTa), which each checkpoint's own tokenizer writes;
- segment ids: BERT, ALBERT and ELECTRA embed ``token_type_ids`` (B gets type 1); RoBERTa has
  one token type (its tokenizer returns none) and DistilBERT none at all (its ``forward`` takes
  no ``token_type_ids``): an input the model does not take is dropped, never passed. ALBERT's
  tokenizer in ``transformers`` 5 does not return them by default (:func:`with_token_types`).

The recipe (one for all, as a fair comparison needs): learning rate 2e-5, batch 32, 3 epochs,
sequences of 128 tokens, linear warmup over the first 6% of the steps then linear decay, weight
decay 0.01 -- inside the grid of Devlin et al. (2019), appendix A.3 (rates 5e-5/3e-5/2e-5,
batches 16/32, 2-4 epochs), with RoBERTa's 6% warmup (Liu et al., 2019, fine-tuning hyperparameters in the appendix). Precision:
bf16 on GPUs of compute capability >= 8.0, fp16 on older ones (a T4), full precision on a CPU
(:func:`tlutils.config.resolve_mixed_precision`).

References: Devlin et al. (2019), https://arxiv.org/abs/1810.04805; Lan et al. (2020),
https://arxiv.org/abs/1909.11942; Liu et al. (2019), https://arxiv.org/abs/1907.11692; Sanh et al.
(2019), https://arxiv.org/abs/1910.01108; Clark et al. (2020), https://arxiv.org/abs/2003.10555.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

from tlutils.data import MODEL_INPUTS
from tlutils.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tlutils.train import TrainConfig

CHECKPOINTS = ("bert-base-uncased", "albert-base-v2", "roberta-base", "distilbert-base-uncased",
               "google/electra-base-discriminator")
GLUE_TASKS = ("mrpc", "rte")
ARCHITECTURES = {"bert-base-uncased": "bert", "albert-base-v2": "albert", "roberta-base": "roberta",
                 "distilbert-base-uncased": "distilbert", "google/electra-base-discriminator": "electra"}

# Published dev-set numbers, each with its metric and source (where it was confirmed is in the
# chapter). Values in percent. None: the source gives no number for that cell.
CITED: list[dict[str, Any]] = [
    {"checkpoint": "bert-base-cased", "mrpc": "F1 88.85 / accuracy 84.07", "rte": "accuracy 65.70",
     "statistic": "one seeded run", "source": "transformers, examples/pytorch/text-classification/README.md "
     "(run_glue.py: lr 2e-5, batch 32, 3 epochs; 5 for MRPC)"},
    {"checkpoint": "bert-base-uncased", "mrpc": "88.6", "rte": "69.3", "statistic": "median of 5 runs",
     "source": "Sanh et al. (2019), DistilBERT, Table 1 (GLUE dev); transformers distillation README"},
    {"checkpoint": "distilbert-base-uncased", "mrpc": "87.5", "rte": "59.9", "statistic": "median of 5 runs",
     "source": "Sanh et al. (2019), DistilBERT, Table 1 (GLUE dev); transformers distillation README"},
    {"checkpoint": "roberta-base", "mrpc": "90.2", "rte": "78.7", "statistic": "single model, single-task",
     "source": "fairseq, examples/roberta/README.md (GLUE dev)"},
    {"checkpoint": "google/electra-base-discriminator", "mrpc": "accuracy 89.5", "rte": "accuracy 82.7",
     "statistic": "median over many seeds", "source": "google-research/electra README, Expected Results "
     "(ELECTRA-Base, dev)"},
    {"checkpoint": "ELECTRA-Small++ (not fine-tuned here)", "mrpc": "accuracy 88.0", "rte": "accuracy 66.7",
     "statistic": "median over many seeds", "source": "google-research/electra README, Expected Results "
     "(ELECTRA-Small, dev)"},
]


@dataclass(frozen=True)
class FinetuneRecipe:
    """One fine-tuning recipe for every checkpoint (see the module docstring for its sources)."""

    learning_rate: float = 2e-5
    epochs: int = 3
    batch_size: int = 32
    max_length: int = 128
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    mixed_precision: str = "auto"  # bf16 (capability >= 8.0) / fp16 (older GPUs) / no (CPU)

    def replace(self, **changes: Any) -> "FinetuneRecipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def train_config(self, **settings: Any) -> "TrainConfig":
        """The :class:`tlutils.train.TrainConfig` of this recipe (its own rate and warmup, not
        ``fit``'s defaults), with ``settings`` (seed, progress, ...) set or overriding it."""
        from tlutils.train import TrainConfig

        keys = ("epochs", "learning_rate", "batch_size", "warmup_fraction", "weight_decay", "mixed_precision")
        return TrainConfig(**{**{k: getattr(self, k) for k in keys}, **settings})


def accepted_inputs(model: "PreTrainedModel") -> set[str]:
    """The batch keys ``model.forward`` takes among ``input_ids``, ``attention_mask``, ``token_type_ids``."""
    params = inspect.signature(model.forward).parameters
    return {k for k in MODEL_INPUTS if k in params}


def with_token_types(tokenizer: "PreTrainedTokenizerBase", model: "PreTrainedModel") -> "PreTrainedTokenizerBase":
    """The tokenizer, made to return ``token_type_ids`` when the model embeds them.

    Needed for ALBERT: ``transformers`` 5 lists only ``input_ids`` and ``attention_mask`` as
    ``AlbertTokenizer``'s inputs, so ``albert-base-v2`` would be fine-tuned with every token in
    segment 0, although it was pretrained with segment ids (``type_vocab_size=2``, sentence-order
    prediction). Its post-processor still computes them; this asks for them. Tokenizers of models
    without token types are returned unchanged.
    """
    uses = "token_type_ids" in accepted_inputs(model) and (getattr(model.config, "type_vocab_size", 0) or 0) > 1
    if uses and "token_type_ids" not in tokenizer.model_input_names:
        tokenizer.model_input_names = [*tokenizer.model_input_names, "token_type_ids"]
    return tokenizer


def check_pair_encoding(tokenizer: "PreTrainedTokenizerBase", model: "PreTrainedModel",
                        a: str = "the first text", b: str = "the second text") -> dict[str, Any]:
    """Encode one pair with the checkpoint's tokenizer and check it against the model.

    Checks: the input starts with the tokenizer's ``cls``/``bos`` token and ends with its
    ``sep``/``eos`` token, with one separator between the segments (BERT-style) or two
    (RoBERTa's ``</s></s>``); segment ids, where the tokenizer returns them, are 0 for A and 1 for
    B and fit the model's ``type_vocab_size``; a model that takes no ``token_type_ids``
    (DistilBERT) gets none.

    Returns:
        ``{"tokens", "layout", "separators", "token_type_ids", "model_uses_token_types"}``.

    Raises:
        ConfigError: a layout or segment id the model would misread, with what was found.
    """
    enc = tokenizer(a, b)
    ids = list(enc["input_ids"])
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    tokens = tokenizer.convert_ids_to_tokens(ids)
    if ids[0] != first or ids[-1] != last:
        raise ConfigError(f"{type(tokenizer).__name__}: a pair encodes as {tokens}; expected it to start with "
                          f"{tokenizer.convert_ids_to_tokens([first])} and end with "
                          f"{tokenizer.convert_ids_to_tokens([last])}.")
    separators = sum(1 for i in ids[1:-1] if i == last)
    if separators not in (1, 2):
        raise ConfigError(f"{type(tokenizer).__name__}: {separators} separators between the segments of {tokens}.")
    types = enc.get("token_type_ids")
    type_vocab = getattr(model.config, "type_vocab_size", 0) or 0
    uses_types = "token_type_ids" in accepted_inputs(model) and type_vocab > 1
    if types is not None and uses_types:
        types = list(types)
        boundary = ids.index(last) + separators  # the first token of B
        if set(types[:boundary]) != {0} or set(types[boundary:]) != {1}:
            raise ConfigError(f"segment ids {types} of {tokens}: expected 0 for the first segment, 1 for the second.")
        if max(types) >= type_vocab:
            raise ConfigError(f"segment id {max(types)} but the model has type_vocab_size={type_vocab}.")
    if uses_types and types is None:
        raise ConfigError(f"{type(model).__name__} embeds token types but {type(tokenizer).__name__} returns none: "
                          f"load the checkpoint's own tokenizer.")
    layout = "<s> A </s></s> B </s>" if separators == 2 else "[CLS] A [SEP] B [SEP]"
    return {"tokens": tokens, "layout": layout, "separators": separators,
            "token_type_ids": list(types) if types is not None else None, "model_uses_token_types": uses_types}


def finetune_checkpoint(name: str, task: str, *, recipe: FinetuneRecipe = FinetuneRecipe(), seed: int = 0,
                        model: Optional["PreTrainedModel"] = None,
                        tokenizer: Optional["PreTrainedTokenizerBase"] = None,
                        max_train_examples: Optional[int] = None, max_eval_examples: Optional[int] = None,
                        data_dir: Any = None, progress: Optional[bool] = None) -> dict[str, Any]:
    """Fine-tune one checkpoint on one GLUE task with ``recipe`` through ``fit``; score the dev set.

    Args:
        name: a hub checkpoint (:data:`CHECKPOINTS`) or a local folder.
        task: ``"mrpc"`` or ``"rte"`` (any registered pair task works).
        recipe: the shared :class:`FinetuneRecipe`.
        seed: seeds the classifier head, the data order and dropout.
        model, tokenizer: use these instead of loading ``name`` (the tests pass tiny random
            models of each architecture, so only the download is untested).
        max_train_examples, max_eval_examples: subsets (None: the whole splits).

    Returns:
        ``{"checkpoint", "task", "seed", "accuracy", "f1", "majority_accuracy", "predictions",
        "labels", "pair_encoding", "train_seconds", "samples_per_second", "precision",
        "recipe", "history"}`` (accuracy and F1 on the validation split, as fractions).
    """
    from tlutils.config import resolve_mixed_precision, set_seed
    from tlutils.data import get_task, load_task, tokenize_task
    from tlutils.models import load_model, load_tokenizer, max_positions
    from tlutils.train import fit, predict

    spec = get_task(task)
    began = time.perf_counter()
    set_seed(seed)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name)
    model = model if model is not None else load_model(name, len(spec.label_names), seed=seed)
    tokenizer = with_token_types(tokenizer, model)
    pair = check_pair_encoding(tokenizer, model)
    data = load_task(task, ("train", "validation"), max_train_examples=max_train_examples,
                     max_eval_examples=max_eval_examples, data_dir=data_dir, seed=seed)
    encoded, _ = tokenize_task(data, tokenizer, spec, recipe.max_length, max_positions(model))
    keep = accepted_inputs(model) | {"labels"}
    encoded = encoded.remove_columns([c for c in encoded["train"].column_names
                                      if c in ("token_type_ids",) and c not in keep])
    precision = resolve_mixed_precision(recipe.mixed_precision)
    config = recipe.train_config(eval_batch_size=128, mixed_precision=precision, seed=seed, select_best=False,
                                 progress=progress)
    history = fit(model, encoded["train"], encoded["validation"], task=spec, config=config,
                  pad_token_id=tokenizer.pad_token_id)
    logits, labels = predict(model, encoded["validation"], batch_size=128, pad_token_id=tokenizer.pad_token_id,
                             mixed_precision=precision)
    predictions = logits.argmax(-1)
    from sklearn.metrics import f1_score

    majority = float(max((labels == c).mean() for c in range(logits.shape[1])))
    return {"checkpoint": name, "architecture": ARCHITECTURES.get(name, type(model).__name__), "task": task,
            "seed": seed, "accuracy": float((predictions == labels).mean()),
            "f1": float(f1_score(labels, predictions, zero_division=0)), "majority_accuracy": majority,
            "predictions": predictions.tolist(), "labels": labels.tolist(), "pair_encoding": pair,
            "train_seconds": history.train_seconds, "samples_per_second": history.samples_per_second,
            "precision": precision, "recipe": recipe.to_dict(), "wall_seconds": time.perf_counter() - began,
            "history": history.to_dict()}


def finetune_all(checkpoints: Sequence[str] = CHECKPOINTS, tasks: Sequence[str] = GLUE_TASKS,
                 seeds: Sequence[int] = (0,), recipe: FinetuneRecipe = FinetuneRecipe(),
                 **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`finetune_checkpoint` for every checkpoint, task and seed (GPU and hub needed for the
    real checkpoints); one result per run, in that order."""
    return [finetune_checkpoint(name, task, recipe=recipe, seed=seed, **kwargs)
            for name in checkpoints for task in tasks for seed in seeds]
