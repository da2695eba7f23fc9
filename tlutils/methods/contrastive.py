"""Contrastive objectives on sentence embeddings: in-batch InfoNCE (with hard negatives), the
triplet loss, SimCSE batches and loss functions for ``fit``, STS scoring, and the alignment and
uniformity of an embedding space (mean pooling, re-exported here, is defined in
:mod:`tlutils.methods.features`).

The book explains them in *Terms II: learning across tasks and domains* (sections
``term-contrastive-learning`` and ``term-triplet-loss``) and in the chapter *Contrastive
learning* (``contrastive-learning``), which trains SimCSE through :func:`tlutils.train.fit`:

- a training example is a tuple of **views** of one sentence: ``(s, s)`` for unsupervised SimCSE
  (the encoder's dropout makes the two passes differ), ``(premise, entailment, contradiction)``
  for supervised SimCSE and the triplet loss (:func:`sentence_views` tokenizes them once;
  :class:`ViewsCollator` pads a batch into ``(B, V, T)`` tensors);
- :func:`make_contrastive_loss_fn` encodes all ``B * V`` views in one forward pass (dropout on,
  as ``fit`` trains in train mode), mean-pools them and applies :func:`info_nce` or
  :func:`triplet_loss`;
- :func:`make_sts_eval_fn` scores a model after every epoch by the Spearman correlation of the
  cosine similarity of its embeddings with the gold similarity of STS pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from tlutils.core import encoder_of
from tlutils.errors import ConfigError
from tlutils.methods.features import encode_texts, mean_pool

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

__all__ = ["ViewsCollator", "alignment", "embed", "info_nce", "make_contrastive_loss_fn",
           "make_sts_eval_fn", "mean_pool", "nli_triplets", "reinit_top_layers", "sentence_views",
           "sts_similarities", "triplet_loss", "uniformity"]  # mean_pool lives in tlutils.methods.features

Tensorish = Union[torch.Tensor, np.ndarray]


# --------------------------------------------------------------------------- losses


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05,
             negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """In-batch InfoNCE: ``a[i]`` must pick its partner ``b[i]`` among all candidates.

    The logits are cosine similarities divided by ``temperature``; the loss is the
    cross-entropy of row ``i`` against class ``i`` (the diagonal), averaged over the batch.
    Without ``negatives`` the candidates are the ``B`` rows of ``b`` (``B - 1`` in-batch
    negatives); with ``negatives`` they are the ``2B`` rows of ``[b; negatives]``: every hard
    negative (supervised SimCSE: the contradiction of each premise) is a negative for every
    anchor, as in SimCSE's equation 5.

    Args:
        a: embeddings of the anchors (one view).
        b: embeddings of their positives (the other view), row-aligned with ``a``.
        temperature: the softmax temperature (SimCSE uses 0.05).
        negatives: embeddings of one hard negative per anchor, row-aligned with ``a``, or None.

    Shapes:
        a, b, negatives: (B, H). Returns a scalar.

    Raises:
        ConfigError: a batch of one without hard negatives (no negative at all), mismatched
            shapes, or a temperature <= 0.

    References: van den Oord, Li & Vinyals, *Representation Learning with Contrastive
    Predictive Coding*, 2018, https://arxiv.org/abs/1807.03748; Gao, Yao & Chen, *SimCSE*,
    EMNLP 2021, https://arxiv.org/abs/2104.08821 (equations 1 and 5).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ConfigError(f"info_nce needs two (B, H) tensors of the same shape; got "
                          f"{tuple(a.shape)} and {tuple(b.shape)}.")
    if negatives is not None and negatives.shape != a.shape:
        raise ConfigError(f"info_nce needs one hard negative per anchor, (B, H) like the anchors; got "
                          f"{tuple(negatives.shape)} for anchors {tuple(a.shape)}.")
    if temperature <= 0:
        raise ConfigError(f"temperature={temperature}: use a positive number.")
    if a.shape[0] < 2 and negatives is None:
        raise ConfigError("info_nce got a batch of one: in-batch negatives need batch_size >= 2 "
                          "(trim the data to a multiple of the batch size) or pass hard negatives=.")
    candidates = b if negatives is None else torch.cat([b, negatives])  # (B, H) or (2B, H)
    logits = F.normalize(a, dim=-1) @ F.normalize(candidates, dim=-1).T / temperature  # (B, B) or (B, 2B)
    targets = torch.arange(a.shape[0], device=a.device)  # (B,): the partner is on the diagonal
    return F.cross_entropy(logits, targets)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = 0.5, reduction: str = "mean") -> torch.Tensor:
    """``max(0, d(a, p) - d(a, n) + margin)`` with Euclidean distances ``d``.

    Zero once the negative is farther from the anchor than the positive by at least
    ``margin``; only the triplets that violate the margin produce gradients.

    Args:
        anchor, positive, negative: embeddings (L2-normalise them first for distances in [0, 2]).
        margin: the required gap between the two distances, >= 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (one loss per triplet).

    Shapes:
        anchor, positive, negative: (N, H). Returns a scalar, or (N,) with ``"none"``.

    Reference: Schroff, Kalenichenko & Philbin, *FaceNet*, CVPR 2015,
    https://arxiv.org/abs/1503.03832 (equation 1, with squared distances there).
    """
    if not anchor.shape == positive.shape == negative.shape:
        raise ConfigError(f"triplet_loss needs three tensors of the same shape; got "
                          f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}.")
    if margin < 0:
        raise ConfigError(f"margin={margin}: use a margin >= 0.")
    d_pos = torch.linalg.vector_norm(anchor - positive, dim=-1)  # (N,)
    d_neg = torch.linalg.vector_norm(anchor - negative, dim=-1)  # (N,)
    losses = F.relu(d_pos - d_neg + margin)  # (N,)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    raise ConfigError(f"reduction={reduction!r}: use 'mean', 'sum' or 'none'.")


# --------------------------------------------------------------------------- alignment and uniformity


def _unit(x: Tensorish) -> torch.Tensor:
    return F.normalize(torch.as_tensor(x, dtype=torch.float), dim=-1)


def alignment(x: Tensorish, y: Tensorish, alpha: float = 2.0) -> torch.Tensor:
    """How close positive pairs sit: ``E ||f(x) - f(y)||^alpha`` of the L2-normalised embeddings.

    Lower is better aligned; 0 when every pair is identical, 4 (alpha = 2) when every pair is
    antipodal. The embeddings are normalised here, since the measure is defined on the sphere.

    Args:
        x, y: embeddings of the two sides of positive pairs, row-aligned (NumPy or torch).
        alpha: the exponent (Wang & Isola use 2).

    Shapes:
        x, y: (N, H). Returns a scalar tensor.

    Reference: Wang & Isola, *Understanding Contrastive Representation Learning through
    Alignment and Uniformity on the Hypersphere*, ICML 2020, https://arxiv.org/abs/2005.10242
    (section 4.1).
    """
    x, y = _unit(x), _unit(y)
    if x.shape != y.shape or x.ndim != 2:
        raise ConfigError(f"alignment needs two (N, H) arrays of positive pairs; got {tuple(x.shape)} "
                          f"and {tuple(y.shape)}.")
    return torch.linalg.vector_norm(x - y, dim=-1).pow(alpha).mean()


def uniformity(x: Tensorish, t: float = 2.0) -> torch.Tensor:
    """How evenly embeddings fill the sphere: ``log E exp(-t ||f(x_i) - f(x_j)||^2)`` over pairs i < j.

    Lower (more negative) is more uniform; 0 when all points coincide. Embeddings are
    L2-normalised here.

    Args:
        x: embeddings (NumPy or torch), at least two rows.
        t: the Gaussian potential's scale (Wang & Isola use 2).

    Shapes:
        x: (N, H). Returns a scalar tensor.

    Reference: Wang & Isola, ICML 2020, https://arxiv.org/abs/2005.10242 (section 4.1).
    """
    x = _unit(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(f"uniformity needs an (N, H) array with N >= 2; got {tuple(x.shape)}.")
    return torch.pdist(x).pow(2).mul(-t).exp().mean().log()


# --------------------------------------------------------------------------- data


def nli_triplets(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(premise, entailed hypothesis, contradicting hypothesis) triplets from NLI pairs.

    Pairs are grouped by premise; a premise with at least one entailment and one contradiction
    gives one triplet per entailment (its contradictions taken in turn), as supervised SimCSE
    builds them from SNLI and MNLI. Neutral pairs are not used.

    Args:
        rows: NLI examples with ``text_a`` (premise), ``text_b`` (hypothesis) and
            ``label_name`` (``entailment``, ``neutral``, ``contradiction``).

    Returns:
        the triplets, in the order their premises first appear.

    Reference: Gao, Yao & Chen, *SimCSE*, EMNLP 2021, https://arxiv.org/abs/2104.08821 (section 4).
    """
    groups: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        kind = row.get("label_name")
        if kind in ("entailment", "contradiction"):
            groups.setdefault(row["text_a"], {"entailment": [], "contradiction": []})[kind].append(row["text_b"])
    triplets = []
    for premise, g in groups.items():
        if g["entailment"] and g["contradiction"]:
            for k, positive in enumerate(g["entailment"]):
                triplets.append((premise, positive, g["contradiction"][k % len(g["contradiction"])]))
    return triplets


@dataclass
class ViewsCollator:
    """Pad the views of a batch of examples into ``(B, V, T)`` tensors.

    ``views[i]`` holds the token ids of example ``i``'s ``V`` views (tokenized once by
    :func:`sentence_views`); ``fit``'s loader hands the collator examples with their ``idx``.

    Shapes:
        returns ``input_ids``, ``attention_mask``: (B, V, T) and ``idx``: (B,).
    """

    views: Sequence[Sequence[Sequence[int]]]
    pad_token_id: int = 0
    pad_to_multiple_of: Optional[int] = 8

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [self.views[e["idx"]] for e in examples]
        longest = max(len(ids) for row in rows for ids in row)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(rows), len(rows[0]), longest), self.pad_token_id, dtype=torch.long)  # (B, V, T)
        mask = torch.zeros_like(ids)  # (B, V, T)
        for i, row in enumerate(rows):
            for v, tokens in enumerate(row):
                ids[i, v, :len(tokens)] = torch.tensor(tokens)
                mask[i, v, :len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "idx": torch.tensor([e["idx"] for e in examples], dtype=torch.long)}


def sentence_views(tokenizer: "PreTrainedTokenizerBase", views: Sequence[Sequence[str]], *,
                   max_length: int = 128) -> tuple["Dataset", ViewsCollator]:
    """Tokenize the views of every example once: a split for ``fit`` and its collator.

    Pass both to :func:`tlutils.train.fit` (``train_data`` and ``collate_fn``). The split's
    ``input_ids`` are the longest view of each example, so ``fit``'s length-grouped batches still
    put examples of similar length together.

    Args:
        tokenizer: the encoder's tokenizer (its own special tokens frame each view).
        views: one tuple per example, all of the same length ``V``: ``(s, s)`` for unsupervised
            SimCSE, ``(anchor, positive, negative)`` for supervised SimCSE or the triplet loss.
        max_length: truncate longer views to this many tokens.

    Returns:
        ``(dataset, collator)``.
    """
    from datasets import Dataset

    if len(views) == 0:
        raise ConfigError("sentence_views got no examples: pass at least two tuples of views.")
    width = {len(v) for v in views}
    if len(width) != 1 or width.pop() < 2:
        raise ConfigError(f"sentence_views needs every example to have the same number (>= 2) of views; got "
                          f"{sorted({len(v) for v in views})}: (s, s) or (anchor, positive, negative).")
    flat = [text for row in views for text in row]
    encoded = tokenizer(flat, truncation=True, max_length=max_length)["input_ids"]
    v = len(views[0])
    tokens = [encoded[i * v:(i + 1) * v] for i in range(len(views))]
    longest = [max(row, key=len) for row in tokens]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Dataset.from_dict({"input_ids": longest}), ViewsCollator(tokens, pad)


# --------------------------------------------------------------------------- training


def embed(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled last hidden states of the model's encoder (``model.base_model`` when it has a head).

    Shapes:
        input_ids, attention_mask: (..., T). Returns (..., H) in float32.
    """
    lead, t = input_ids.shape[:-1], input_ids.shape[-1]
    ids, mask = input_ids.reshape(-1, t), attention_mask.reshape(-1, t)  # (N, T)
    hidden = encoder_of(model)(input_ids=ids, attention_mask=mask).last_hidden_state  # (N, T, H)
    return mean_pool(hidden.float(), mask).reshape(*lead, -1)  # (..., H)


LossFn = Callable[[torch.nn.Module, dict], "tuple[torch.Tensor, dict[str, float]]"]


def make_contrastive_loss_fn(objective: str = "info_nce", *, temperature: float = 0.05,
                             margin: float = 0.5) -> LossFn:
    """A ``loss_fn(model, batch) -> (loss, stats)`` for ``fit`` on batches of :class:`ViewsCollator`.

    All ``B * V`` views go through the encoder in one forward pass; ``fit`` trains in train
    mode, so dropout is on and two copies of a sentence get two different embeddings
    (unsupervised SimCSE). Views 0 and 1 are the anchor and its positive; a third view is the
    hard negative.

    Args:
        objective: ``"info_nce"`` (with the third view as hard negatives when there is one)
            or ``"triplet"`` (:func:`triplet_loss` on L2-normalised embeddings; needs 3 views).
        temperature: InfoNCE's temperature.
        margin: the triplet margin (distances on the unit sphere lie in [0, 2]).

    Returns:
        the loss function; its stats are ``retrieval`` (the share of anchors whose positive is
        the most similar candidate) and ``positive_cosine``.

    Reference: Gao, Yao & Chen, *SimCSE*, EMNLP 2021, https://arxiv.org/abs/2104.08821.
    """
    if objective not in ("info_nce", "triplet"):
        raise ConfigError(f"objective={objective!r}: use 'info_nce' or 'triplet'.")

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        z = embed(model, batch["input_ids"], batch["attention_mask"])  # (B, V, H)
        anchor, positive = z[:, 0], z[:, 1]  # (B, H) each
        negative = z[:, 2] if z.shape[1] > 2 else None
        if objective == "triplet":
            if negative is None:
                raise ConfigError("The triplet loss needs (anchor, positive, negative) views; these batches have 2: "
                                  "build them with sentence_views(tokenizer, triplets).")
            loss = triplet_loss(*(F.normalize(x, dim=-1) for x in (anchor, positive, negative)), margin=margin)
        else:
            loss = info_nce(anchor, positive, temperature, negatives=negative)
        with torch.no_grad():
            a, c = F.normalize(anchor, dim=-1), F.normalize(torch.cat([positive] + ([negative] if negative is not None else [])), dim=-1)
            sims = a @ c.T  # (B, B) or (B, 2B)
            hits = (sims.argmax(-1) == torch.arange(len(a), device=a.device)).float().mean()
        return loss, {"retrieval": float(hits), "positive_cosine": float(sims.diagonal().mean())}

    return loss_fn


# --------------------------------------------------------------------------- STS evaluation


def sts_similarities(model: torch.nn.Module, tokenizer: "PreTrainedTokenizerBase", texts_a: Sequence[str],
                     texts_b: Sequence[str], *, max_length: int = 128, batch_size: int = 128,
                     mixed_precision: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosine similarity of each pair's mean-pooled embeddings (eval mode), and the embeddings.

    Each distinct sentence is encoded once.

    Shapes:
        returns ``(cosine (N,), u (N, H), v (N, H))``, u and v L2-normalised.
    """
    unique = list(dict.fromkeys([*texts_a, *texts_b]))
    where = {s: i for i, s in enumerate(unique)}
    emb = encode_texts(model, tokenizer, unique, max_length=max_length, batch_size=batch_size,
                       normalize=True, mixed_precision=mixed_precision)  # (U, H)
    u, v = emb[[where[s] for s in texts_a]], emb[[where[s] for s in texts_b]]  # (N, H) each
    return (u * v).sum(-1), u, v


def make_sts_eval_fn(tokenizer: "PreTrainedTokenizerBase", *, max_length: int = 128, batch_size: int = 128,
                     mixed_precision: str = "auto") -> Callable[[torch.nn.Module, Any], dict[str, float]]:
    """An ``eval_fn(model, eval_data) -> {"spearman", "pearson"}`` for ``fit``: the correlation of
    the cosine similarity of the model's embeddings with the gold scores of STS pairs.

    ``eval_data`` is an untokenized STS split (``text_a``, ``text_b``, ``label``), e.g.
    ``load_task("stsb", ("validation",))["validation"]``; select with ``select_metric="spearman"``.

    Reference: the STS evaluation of Reimers & Gurevych 2019 (https://arxiv.org/abs/1908.10084)
    and Gao et al. 2021 (SimCSE, appendix B: Spearman, "all" setting).
    """
    from scipy.stats import pearsonr, spearmanr

    def eval_fn(model: torch.nn.Module, eval_data: Any) -> dict[str, float]:
        cosine, _, _ = sts_similarities(model, tokenizer, eval_data["text_a"], eval_data["text_b"],
                                        max_length=max_length, batch_size=batch_size,
                                        mixed_precision=mixed_precision)
        gold = np.asarray(eval_data["label"], dtype=float)
        return {"spearman": float(spearmanr(cosine, gold)[0]), "pearson": float(pearsonr(cosine, gold)[0])}

    return eval_fn


# --------------------------------------------------------------------------- a weaker starting point


def reinit_top_layers(model: torch.nn.Module, k: int, *, seed: int = 0) -> torch.nn.Module:
    """Re-initialise the top ``k`` transformer layers of a model's encoder in place (and return it).

    A pretrained sentence encoder with random top layers is a weaker starting point that still
    has its pretrained lower layers: what contrastive training then adds becomes visible.

    Raises:
        ConfigError: ``k`` outside ``[1, number of layers]``, or an encoder without
            ``encoder.layer`` and ``_init_weights``.
    """
    encoder = encoder_of(model)
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    init = getattr(model, "_init_weights", None) or getattr(encoder, "_init_weights", None)
    if layers is None or init is None:
        raise ConfigError(f"reinit_top_layers needs a BERT-style encoder (encoder.layer); got {type(encoder).__name__}.")
    if not 1 <= k <= len(layers):
        raise ConfigError(f"k={k}: choose between 1 and the encoder's {len(layers)} layers.")
    torch.manual_seed(seed)
    for layer in list(layers)[-k:]:
        layer.apply(init)
    return model
