"""Knowledge distillation: a student learns from a teacher's softened predictions.

The book explains it in *Knowledge distillation* (chapter ``distillation``, Part II): the
soft targets and the temperature, why the loss is scaled by T², the mix with the hard labels,
and students built from the teacher's own layers (DistilBERT) or from scratch.

Teacher logits travel with a batch: :func:`with_teacher_logits` adds them as a column of a
tokenized split, the data loader stacks them into ``batch["teacher_logits"]`` of shape
``(B, C)``, and the loss function of :func:`make_distill_loss_fn` pops them before the
student's forward pass. Rows whose label is :data:`IGNORE_INDEX` (see :func:`without_labels`)
are taught by the teacher alone: the hard-label term skips them.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tlutils.config import quiet_progress
from tlutils.core import ENCODER_LAYER
from tlutils.errors import ConfigError, DataError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel

IGNORE_INDEX = -100  # a label the cross-entropy skips (PyTorch's and Hugging Face's convention)
TEACHER_COLUMN = "teacher_logits"
LossFn = Callable[[torch.nn.Module, dict], "tuple[torch.Tensor, dict[str, float]]"]


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature}: use a positive number (1 = the plain softmax).")


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The softmax of ``logits / temperature``: the teacher's *soft targets*.

    T = 1 is the ordinary softmax; a higher T flattens the distribution towards uniform and
    makes the small probabilities of the wrong classes visible.

    Args:
        logits: unnormalised scores, classes on the last axis.
        temperature: T > 0.

    Shapes:
        logits: (..., C). Returns (..., C), rows summing to 1.

    Reference: Hinton, Vinyals & Dean, *Distilling the Knowledge in a Neural Network*, 2015,
    https://arxiv.org/abs/1503.02531 (equation 1).
    """
    _check_temperature(temperature)
    return torch.softmax(logits.float() / temperature, dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), averaged over the batch.

    The KL divergence is summed over classes and averaged over examples. The factor T²
    keeps the gradient's magnitude comparable across temperatures: the gradient of the KL
    term with respect to a student logit is (q_i − p_i) / T, and for large T the difference
    q_i − p_i itself shrinks like 1 / T, so without the factor the soft targets would fade
    away as T grows (Hinton et al., 2015, section 2). For large T the loss approaches
    (1 / 2C) · ‖z_s − z_t‖² of the centred logits: distillation becomes logit matching
    (their section 2.1). The teacher's logits are detached: only the student learns.

    Args:
        student_logits: the student's logits.
        teacher_logits: the teacher's logits for the same examples.
        temperature: T > 0, the same for teacher and student.

    Shapes:
        student_logits, teacher_logits: (B, C). Returns a scalar.

    Reference: Hinton, Vinyals & Dean, 2015, https://arxiv.org/abs/1503.02531.
    """
    _check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ConfigError(f"kd_loss needs student and teacher logits of the same (B, C) shape; got "
                          f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}.")
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, C) student
    log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)  # (B, C) teacher
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")  # sum_c p (log p - log q), mean over B
    return kl * temperature**2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, temperature: float,
                      alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha · :func:`kd_loss` + (1 − alpha) · cross-entropy with the hard labels.

    Rows labelled :data:`IGNORE_INDEX` have no gold label: the cross-entropy is the mean over
    the labelled rows only (0 when a batch has none), the KD term uses every row.

    Args:
        student_logits: the student's logits.
        teacher_logits: the teacher's logits for the same examples.
        labels: gold classes, or :data:`IGNORE_INDEX` for unlabelled rows.
        temperature: T > 0 of the KD term (the cross-entropy uses T = 1).
        alpha: the weight of the KD term in [0, 1]; 0 is plain fine-tuning, 1 pure distillation.

    Shapes:
        student_logits, teacher_logits: (B, C); labels: (B,). Returns a scalar and stats.

    Returns:
        ``(loss, {"kd": ..., "ce": ..., "labelled": ...})``: the two terms as floats and the
        fraction of labelled rows in the batch.

    Reference: Hinton, Vinyals & Dean, 2015, https://arxiv.org/abs/1503.02531 (section 2).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha}: use a weight in [0, 1] (1 = only the teacher's soft targets).")
    if labels.shape != student_logits.shape[:1]:
        raise ConfigError(f"labels must have shape (B,) = {tuple(student_logits.shape[:1])}; "
                          f"got {tuple(labels.shape)}.")
    kd = kd_loss(student_logits, teacher_logits, temperature)  # ()
    mask = labels != IGNORE_INDEX  # (B,)
    if bool(mask.any()):
        ce = F.cross_entropy(student_logits.float()[mask], labels[mask])  # () mean over labelled rows
    else:
        ce = student_logits.float().sum() * 0.0  # keeps the graph; no label, no signal
    loss = alpha * kd + (1.0 - alpha) * ce
    return loss, {"kd": float(kd.detach()), "ce": float(ce.detach()),
                  "labelled": float(mask.float().mean())}


def make_distill_loss_fn(temperature: float, alpha: float) -> LossFn:
    """A ``loss_fn(model, batch) -> (loss, stats)`` for :func:`tlutils.train.fit`.

    The batch must hold ``teacher_logits`` (a split prepared with
    :func:`with_teacher_logits`); it is popped before ``model(**batch)`` so the student sees
    only its inputs. ``labels`` are kept out of the forward pass as well (the loss is computed
    here, not by the model).

    Args:
        temperature: T > 0.
        alpha: the weight of the KD term in [0, 1].

    Returns:
        ``loss_fn``; its stats hold ``kd``, ``ce`` and ``labelled`` (see :func:`distillation_loss`).

    Reference: Hinton, Vinyals & Dean, 2015, https://arxiv.org/abs/1503.02531.
    """
    _check_temperature(temperature)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha}: use a weight in [0, 1] (1 = only the teacher's soft targets).")

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        batch = dict(batch)  # the caller's dict stays as it was
        if TEACHER_COLUMN not in batch:
            raise DataError("The batch has no 'teacher_logits': add them to the training split with "
                            "tlutils.methods.distill.with_teacher_logits(split, logits).")
        teacher = batch.pop(TEACHER_COLUMN)  # (B, C)
        labels = batch.pop("labels")  # (B,)
        student = model(**batch).logits  # (B, C)
        return distillation_loss(student, teacher, labels, temperature, alpha)

    return loss_fn


# --------------------------------------------------------------------------- data


def with_teacher_logits(dataset: "Dataset", logits: np.ndarray | torch.Tensor) -> "Dataset":
    """A copy of a tokenized split with a ``teacher_logits`` column (one row of logits each).

    The data loader of :func:`tlutils.train.fit` passes the column on as
    ``batch["teacher_logits"]`` (B, C); evaluation and :func:`tlutils.train.predict` ignore it.

    Args:
        dataset: a split from :func:`tlutils.data.tokenize_task`.
        logits: the teacher's logits in the split's order (from :func:`tlutils.train.predict`).

    Shapes:
        logits: (N, C) with N = ``len(dataset)``.
    """
    values = np.asarray(logits.detach().cpu() if isinstance(logits, torch.Tensor) else logits,
                        dtype=np.float32)
    if values.ndim != 2 or values.shape[0] != len(dataset):
        raise DataError(f"teacher logits must have shape (N, C) with N = {len(dataset)} (the split's "
                        f"length, in its order); got {values.shape}. Predict on this very split.")
    if not np.isfinite(values).all():
        raise DataError("teacher logits contain NaN or inf: check the teacher's predictions.")
    if TEACHER_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(TEACHER_COLUMN)
    with quiet_progress():  # "Flattening the indices" is noise in a chapter
        return dataset.add_column(TEACHER_COLUMN, values.tolist())


def without_labels(dataset: "Dataset") -> "Dataset":
    """A copy of a tokenized split whose ``labels`` are all :data:`IGNORE_INDEX`.

    Use it for a *transfer set* of unlabelled examples: with :func:`make_distill_loss_fn`
    only the teacher's soft targets teach on these rows.
    """
    if "labels" not in dataset.column_names:
        raise DataError("The split has no 'labels' column: tokenize it with tlutils.data.tokenize_task.")
    with quiet_progress():
        return dataset.map(lambda _: {"labels": IGNORE_INDEX}, load_from_cache_file=False)


# --------------------------------------------------------------------------- students

def every_other_layer(num_layers: int) -> list[int]:
    """DistilBERT's choice of teacher layers: 0, 2, 4, ... (half the depth, rounded up)."""
    if num_layers < 1:
        raise ConfigError(f"num_layers={num_layers}: a teacher has at least one layer.")
    return list(range(0, num_layers, 2))


def student_from_teacher(teacher: "PreTrainedModel",
                         layers: Optional[Sequence[int]] = None) -> "PreTrainedModel":
    """A shallower copy of a BERT-family classifier, initialised from the teacher's layers.

    The student has the teacher's class and configuration with ``num_hidden_layers =
    len(layers)``; its embeddings, pooler and classifier are copies of the teacher's, and its
    layer ``i`` is a copy of the teacher's layer ``layers[i]``. The teacher is not changed.

    Args:
        teacher: a ``*ForSequenceClassification`` model whose layers are named
            ``...encoder.layer.<i>...`` (BERT, RoBERTa, ELECTRA, MiniLM; not DistilBERT or
            ALBERT, whose layers are named or shared differently).
        layers: the teacher layers to keep, in increasing order (default:
            :func:`every_other_layer`, as DistilBERT did).

    Returns:
        the student, on the teacher's device and dtype, in the teacher's train/eval mode.

    Reference: Sanh, Debut, Chaumond & Wolf, *DistilBERT*, 2019, https://arxiv.org/abs/1910.01108
    (section 3: "taking one layer out of two").
    """
    config = getattr(teacher, "config", None)
    depth = getattr(config, "num_hidden_layers", None)
    state = teacher.state_dict()
    found = sorted({int(m.group(1)) for key in state for m in [ENCODER_LAYER.search(key)] if m})
    if depth is None or not found or found != list(range(depth)):
        raise ConfigError(f"{type(teacher).__name__} is not a BERT-family encoder with layers named "
                          f"'encoder.layer.<i>' and config.num_hidden_layers: use BERT, RoBERTa, "
                          f"ELECTRA or MiniLM (DistilBERT and ALBERT name or share layers differently).")
    layers = every_other_layer(depth) if layers is None else [int(i) for i in layers]
    if not layers or layers != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= depth:
        raise ConfigError(f"layers={layers}: give distinct teacher layers in increasing order, each in "
                          f"0..{depth - 1} (e.g. {every_other_layer(depth)}).")
    student_config = copy.deepcopy(config)
    student_config.num_hidden_layers = len(layers)
    new_index = {old: new for new, old in enumerate(layers)}
    copied = {}
    for key, value in state.items():
        match = ENCODER_LAYER.search(key)
        if match is None:
            copied[key] = value.detach().clone()  # embeddings, pooler, classifier
            continue
        old = int(match.group(1))
        if old in new_index:
            start, end = match.span(1)
            copied[key[:start] + str(new_index[old]) + key[end:]] = value.detach().clone()
    student = type(teacher)(student_config)
    student.load_state_dict(copied, strict=True)
    parameter = next(teacher.parameters())
    student.to(device=parameter.device, dtype=parameter.dtype)
    student.train(teacher.training)
    return student


def small_student(teacher: "PreTrainedModel", num_layers: int = 2, hidden_size: int = 256,
                  num_heads: int = 4, seed: Optional[int] = None) -> "PreTrainedModel":
    """A small, randomly initialised BERT classifier that reads the teacher's tokens.

    It shares the teacher's vocabulary size, position range, token types and number of labels
    (so the same tokenizer and the same tokenized splits serve both) and nothing else.

    Args:
        teacher: the model whose tokenizer the student will use.
        num_layers: transformer layers.
        hidden_size: width of the hidden states (a multiple of ``num_heads``); the feed-forward
            layer is 4 × wider, as in BERT.
        num_heads: attention heads.
        seed: seed of the random initialisation (None: the global RNG as it is).
    """
    from transformers import BertConfig, BertForSequenceClassification

    if num_layers < 1 or hidden_size < 1 or num_heads < 1 or hidden_size % num_heads:
        raise ConfigError(f"num_layers={num_layers}, hidden_size={hidden_size}, num_heads={num_heads}: "
                          f"use positive sizes with hidden_size a multiple of num_heads.")
    tc = teacher.config
    config = BertConfig(vocab_size=tc.vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=4 * hidden_size,
                        max_position_embeddings=tc.max_position_embeddings,
                        type_vocab_size=getattr(tc, "type_vocab_size", 2),
                        pad_token_id=getattr(tc, "pad_token_id", 0) or 0,
                        num_labels=tc.num_labels)
    if seed is not None:
        torch.manual_seed(seed)
    student = BertForSequenceClassification(config)
    return student.to(next(teacher.parameters()).device)
