"""Feature extraction: a feature extractor that is not trained with the task's classifier, or
one trained from scratch on the task, and a separate classifier on its features.

Two routes, both explained in the chapter *Feature extraction* (``feature-extraction``):

- the traditional route: a small CNN (Kim 2014) or BiGRU over word embeddings, trained from
  scratch on the task, produces a vector per sentence; the pair becomes ``[u, v, |u - v|, u * v]``
  for a small classifier (:class:`CNNEncoder`, :class:`BiGRUEncoder`,
  :class:`SiamesePairClassifier`, :func:`train_classifier`);
- the transfer route: a frozen pretrained encoder is the extractor; its first-token (``[CLS]``,
  ``<s>``) or mean-pooled states of every layer are extracted once, cached (:func:`layer_features`,
  :func:`cached_features`), and a probe is trained on them in seconds (:func:`fit_probe`,
  whose L2 strength :func:`choose_probe_C` picks by cross-validation on the training features
  alone, and :class:`MLPProbe`).

:func:`mean_pool` and :func:`encode_texts` are also used in *Terms II* (self-training, domain
shift, contrastive learning).
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlutils.config import is_main_process, output_dir, resolve_mixed_precision
from tlutils.core import encoder_of
from tlutils.errors import ConfigError, DataError

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline
    from transformers import PreTrainedTokenizerBase

Array = TypeVar("Array", np.ndarray, torch.Tensor)
POOLINGS = ("cls", "mean")
CACHE_VERSION = 1  # bump when the cached arrays change meaning


# --------------------------------------------------------------------------- pooling


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token states of the real (unpadded) tokens: a sentence embedding.

    Args:
        hidden: the encoder's hidden states (any layer).
        attention_mask: 1 for real tokens, 0 for padding.

    Shapes:
        hidden: (B, T, H); attention_mask: (B, T). Returns (B, H).

    Reference: Reimers & Gurevych, *Sentence-BERT*, EMNLP 2019, https://arxiv.org/abs/1908.10084
    (mean pooling worked best among their pooling strategies).
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)


def cls_pool(hidden: torch.Tensor) -> torch.Tensor:
    """The state of the first token (BERT's ``[CLS]``, RoBERTa's ``<s>``), which the pair
    classifiers of these models read.

    Shapes:
        hidden: (B, T, H). Returns (B, H).

    Reference: Devlin et al., *BERT*, NAACL 2019, https://arxiv.org/abs/1810.04805 (section 3).
    """
    return hidden[:, 0]  # (B, H)


def pair_features(u: Array, v: Array) -> Array:
    """The sentence-pair features ``[u, v, |u - v|, u * v]`` of InferSent and Sentence-BERT.

    Works on NumPy arrays and torch tensors alike; the last axis is the feature axis, so
    per-layer stacks ``(L + 1, N, H)`` work too.

    Shapes:
        u, v: (..., H). Returns (..., 4H): blocks ``[0:H] = u``, ``[H:2H] = v``,
        ``[2H:3H] = |u - v|``, ``[3H:4H] = u * v``.

    Reference: Conneau et al., *Supervised Learning of Universal Sentence Representations from
    Natural Language Inference Data*, EMNLP 2017, https://arxiv.org/abs/1705.02364 (section 3.2).
    """
    if u.shape != v.shape:
        raise ConfigError(f"pair_features needs u and v of the same shape; got {tuple(u.shape)} "
                          f"and {tuple(v.shape)}: encode both sentences with the same extractor.")
    if isinstance(u, torch.Tensor):
        return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=-1)


# --------------------------------------------------------------------------- frozen encoders


def _batches(texts: Sequence[str], texts_pair: Optional[Sequence[str]], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (little padding), longest first."""
    lengths = [len(t) + (len(texts_pair[i]) if texts_pair is not None else 0) for i, t in enumerate(texts)]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def _check_texts(texts: Sequence[str], texts_pair: Optional[Sequence[str]]) -> None:
    if len(texts) == 0:
        raise DataError("No texts to encode: pass at least one sentence.")
    if texts_pair is not None and len(texts_pair) != len(texts):
        raise DataError(f"texts and texts_pair differ in length ({len(texts)} vs {len(texts_pair)}): "
                        "pass the two sides of the same pairs.")


@contextmanager
def _frozen_encoder(model: nn.Module, mixed_precision: str) -> Iterator[tuple[nn.Module, torch.device, Optional[torch.dtype]]]:
    """The encoder of ``model`` in eval mode (no dropout), its device and its autocast dtype
    (None: fp32); the encoder gets its training mode back afterwards."""
    encoder = encoder_of(model)
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    precision = resolve_mixed_precision(mixed_precision, cpu=device.type != "cuda")
    try:
        yield encoder, device, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    finally:
        encoder.train(was_training)


@torch.inference_mode()
def encode_texts(model: nn.Module, tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str], *,
                 max_length: int = 128, batch_size: int = 64, normalize: bool = False,
                 mixed_precision: str = "auto") -> np.ndarray:
    """Mean-pooled last hidden states of ``texts``, in their order.

    Texts are sorted by length and batched (little padding), encoded in eval mode (no
    dropout) with bf16/fp16 autocast where :func:`tlutils.config.resolve_mixed_precision`
    allows it, and put back in the input order.

    Args:
        model: an encoder, or a model with one (``model.base_model`` is used when it exists).
        tokenizer: its tokenizer.
        texts: the sentences or documents.
        max_length: truncate longer texts to this many tokens.
        batch_size: texts per forward pass.
        normalize: L2-normalise each embedding.
        mixed_precision: ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"no"`` (bit-exact fp32).

    Shapes:
        Returns (N, H) float32.

    Reference: mean pooling as in Sentence-BERT (Reimers & Gurevych 2019,
    https://arxiv.org/abs/1908.10084).
    """
    _check_texts(texts, None)
    texts = list(texts)
    with _frozen_encoder(model, mixed_precision) as (encoder, device, dtype):
        out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
        for idx in _batches(texts, None, batch_size):
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                hidden = encoder(**batch).last_hidden_state  # (B, T, H)
            emb = mean_pool(hidden.float(), batch["attention_mask"])  # (B, H)
            if normalize:
                emb = F.normalize(emb, dim=-1)
            out[idx] = emb.cpu().numpy()
    return out


@torch.inference_mode()
def layer_features(model: nn.Module, tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str],
                   texts_pair: Optional[Sequence[str]] = None, *, max_length: int = 128,
                   batch_size: int = 64, mixed_precision: str = "auto") -> dict[str, np.ndarray]:
    """First-token and mean-pooled states of every layer of a frozen encoder, in the input order.

    With ``texts_pair`` the two texts are encoded *jointly* as one input, framed by the
    tokenizer's own special tokens (BERT: ``[CLS] a [SEP] b [SEP]``, RoBERTa:
    ``<s> a </s></s> b </s>``; a cross-encoder's view); without it each text alone. The
    encoder runs in eval mode (no dropout) with the precision of
    :func:`tlutils.config.resolve_mixed_precision`; pooling happens in float32.

    Args:
        model: an encoder, or a model with one (``model.base_model`` is used when it exists).
        tokenizer: its tokenizer.
        texts: the (first) texts.
        texts_pair: the second text of each pair, or ``None``.
        max_length: truncate longer inputs to this many tokens.
        batch_size: inputs per forward pass.
        mixed_precision: ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"no"``.

    Shapes:
        Returns ``{"cls": (L + 1, N, H), "mean": (L + 1, N, H)}`` float32; index 0 is the
        embedding layer, index L the last layer.

    Reference: probing every layer as in Tenney et al., *BERT Rediscovers the Classical NLP
    Pipeline*, ACL 2019, https://arxiv.org/abs/1905.05950, and Liu et al., *Linguistic
    Knowledge and Transferability of Contextual Representations*, NAACL 2019,
    https://arxiv.org/abs/1903.08855.
    """
    _check_texts(texts, texts_pair)
    texts, texts_pair = list(texts), list(texts_pair) if texts_pair is not None else None
    with _frozen_encoder(model, mixed_precision) as (encoder, device, dtype):
        layers, hidden_size = encoder.config.num_hidden_layers + 1, encoder.config.hidden_size
        out = {p: np.zeros((layers, len(texts), hidden_size), dtype=np.float32) for p in POOLINGS}
        for idx in _batches(texts, texts_pair, batch_size):
            second = [texts_pair[i] for i in idx] if texts_pair is not None else None
            batch = tokenizer([texts[i] for i in idx], second, padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                states = encoder(**batch, output_hidden_states=True).hidden_states  # L+1 x (B, T, H)
            hidden = torch.stack(states).float()  # (L+1, B, T, H)
            mask = batch["attention_mask"]  # (B, T)
            out["cls"][:, idx] = hidden[:, :, 0].cpu().numpy()  # (L+1, B, H)
            out["mean"][:, idx] = torch.stack([mean_pool(h, mask) for h in hidden]).cpu().numpy()
    return out


def model_fingerprint(model: nn.Module) -> str:
    """A SHA-256 of a model's configuration and every weight: two models share it only when
    they compute the same function (a cache key)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached_features(model: nn.Module, tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str],
                    texts_pair: Optional[Sequence[str]] = None, *, max_length: int = 128,
                    batch_size: int = 64, mixed_precision: str = "auto",
                    cache_dir: Optional[Path] = None) -> tuple[dict[str, np.ndarray], bool]:
    """:func:`layer_features`, computed once and then read back from a ``.npz`` file.

    The file name is a hash of everything the features depend on: the model's weights and
    configuration, the tokenizer's vocabulary, the texts, ``max_length`` and the resolved
    precision. A second call with the same inputs does not run the model.

    Args:
        model, tokenizer, texts, texts_pair, max_length, batch_size, mixed_precision: as in
            :func:`layer_features` (``batch_size`` does not change the features).
        cache_dir: the folder of the cache files; default
            ``tlutils.config.output_dir("feature_cache")``.

    Returns:
        ``(features, from_cache)``: the dictionary of :func:`layer_features` and whether it
        was read from the cache.
    """
    _check_texts(texts, texts_pair)
    encoder = encoder_of(model)
    device = next(encoder.parameters()).device
    precision = resolve_mixed_precision(mixed_precision, cpu=device.type != "cuda")
    key = {"version": CACHE_VERSION, "model": model_fingerprint(encoder), "tokenizer": tokenizer.name_or_path,
           "vocab": len(tokenizer), "texts": list(texts),
           "texts_pair": list(texts_pair) if texts_pair is not None else None,
           "max_length": max_length, "precision": precision}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir) if cache_dir is not None else output_dir("feature_cache")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"features-{digest}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {p: stored[p] for p in POOLINGS}, True
    features = layer_features(model, tokenizer, texts, texts_pair, max_length=max_length,
                              batch_size=batch_size, mixed_precision=precision)
    if is_main_process():  # one writer under accelerate launch; atomic, so readers never see half a file
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **features)
        tmp.replace(path)
    return features, False


PROBE_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def choose_probe_C(x: np.ndarray, y: np.ndarray, *, C: Sequence[float] = PROBE_CS, folds: int = 5,
                   max_iter: int = 2000) -> tuple[float, dict[float, float]]:
    """Choose a linear probe's L2 strength by cross-validation on the *training* data alone.

    The probe's inputs are its training features and labels, nothing else: there is no
    argument through which an evaluation split could enter the choice, so the split a chapter
    reports stays unseen until the probe is scored on it once.

    Args:
        x: training features. y: training labels.
        C: the inverse strengths to choose from (smaller = stronger penalty).
        folds: stratified folds, taken in order (not shuffled); at most the size of the
            smallest class.
        max_iter: iterations of the L-BFGS solver.

    Shapes:
        x: (N, D); y: (N,).

    Returns:
        ``(chosen_C, cv_log_likelihood)``: the C with the highest mean held-out-fold
        log-likelihood (negative log-loss; ties go to the stronger penalty), and that mean
        for every C. The features are standardised with the statistics of all of ``x``
        (features only, never labels of a held-out fold) before the folds are cut.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    _check_probe_input(x, y)
    smallest = int(np.unique(np.asarray(y), return_counts=True)[1].min())
    if smallest < 2 or len(np.unique(y)) < 2:
        raise DataError(f"Choosing C by cross-validation needs >= 2 examples of every class (the smallest has "
                        f"{smallest}): use more labelled examples or pass one C.")
    Cs = sorted(float(c) for c in C)
    search = LogisticRegressionCV(Cs=Cs, cv=StratifiedKFold(min(folds, smallest)), scoring="neg_log_loss",
                                  l1_ratios=(0.0,), max_iter=max_iter, refit=False,
                                  use_legacy_attributes=True)
    search.fit(StandardScaler().fit_transform(x), y)
    means = np.asarray(next(iter(search.scores_.values()))).reshape(-1, len(Cs)).mean(0)  # (len(Cs),)
    return Cs[int(np.argmax(means))], dict(zip(Cs, means.tolist()))


def _check_probe_input(x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 2 or len(x) != len(y):
        raise ConfigError(f"fit_probe needs x of shape (N, D) and N labels; got {x.shape} and {len(y)} "
                          "labels (select one layer of a per-layer stack first: x[layer]).")


def fit_probe(x: np.ndarray, y: np.ndarray, *, C: Union[float, Sequence[float]] = PROBE_CS,
              folds: int = 5, max_iter: int = 2000) -> "Pipeline":
    """A linear probe: standardise the features, then L2-regularised logistic regression.

    Args:
        x: training features. y: training labels.
        C: the inverse strength of the L2 penalty (smaller = stronger), or several values to
            choose from by ``folds``-fold cross-validation *on the training data*
            (:func:`choose_probe_C`). Wide features and few examples need strong penalties:
            an unregularised probe on a few hundred pairs memorises them.
        folds: cross-validation folds (at most the size of the smallest class).
        max_iter: iterations of the L-BFGS solver.

    Shapes:
        x: (N, D); y: (N,).

    Returns:
        A fitted scikit-learn pipeline (``.predict``, ``.score`` = accuracy), refitted on all of
        ``x`` with the chosen penalty, ``pipeline[-1].C``. It is deterministic: L-BFGS has no
        randomness, and the folds are taken in order (stratified, not shuffled). Score it on
        an evaluation split only after this call: nothing of that split enters the fit.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _check_probe_input(x, y)
    chosen = float(C) if np.isscalar(C) else choose_probe_C(x, y, C=C, folds=folds, max_iter=max_iter)[0]
    return make_pipeline(StandardScaler(), LogisticRegression(C=chosen, max_iter=max_iter)).fit(x, y)


# --------------------------------------------------------------------------- trained extractors


def static_embeddings(model: nn.Module, *, freeze: bool = True, standardize: bool = True) -> nn.Embedding:
    """A copy of a model's static input token-embedding matrix (no positions, no context).

    These are the only word vectors available offline here (no GloVe or word2vec download);
    note that they were trained with the model, so they are already a (small) transfer.

    Args:
        model: a Hugging Face model (``get_input_embeddings()``).
        freeze: keep the copy fixed during training.
        standardize: scale each dimension to zero mean and unit variance over the vocabulary.
            Transformer input embeddings are small (MiniLM's have a standard deviation near
            0.06); fed raw into a freshly initialised CNN, they leave it on a plateau where it
            predicts the majority class for dozens of steps.

    Shapes:
        The embedding maps (B, T) token ids to (B, T, E).
    """
    weight = model.get_input_embeddings().weight.detach().clone().float()  # (V, E)
    if standardize:
        weight = (weight - weight.mean(0)) / weight.std(0).clamp(min=1e-6)  # (V, E)
    return nn.Embedding.from_pretrained(weight, freeze=freeze)


def random_embeddings(vocab_size: int, dim: int, *, seed: int = 0) -> nn.Embedding:
    """Randomly initialised, trainable word embeddings ``N(0, 1)``: nothing transferred."""
    generator = torch.Generator().manual_seed(seed)
    embedding = nn.Embedding(vocab_size, dim)
    with torch.no_grad():
        embedding.weight.copy_(torch.randn(vocab_size, dim, generator=generator))
    return embedding


def training_vocabulary(inputs: Mapping[str, torch.Tensor], vocab_size: int) -> torch.Tensor:
    """A map from tokenizer ids to a compact vocabulary of the tokens seen in training.

    A from-scratch model can only learn vectors for tokens it sees; the traditional recipe
    builds its vocabulary from the training data and maps everything else to one *unknown*
    entry. Id 0 of the compact vocabulary is that entry; the seen tokens get 1, 2, ...

    Args:
        inputs: tokenised training pairs (:func:`tokenize_pairs`); only real tokens count.
        vocab_size: the tokenizer's vocabulary size (``len(tokenizer)``).

    Shapes:
        Returns (vocab_size,) int64; apply it with :func:`apply_vocabulary`.
    """
    seen = torch.zeros(vocab_size, dtype=torch.bool)
    for key, ids in inputs.items():
        if key.startswith("input_ids"):
            seen[ids[inputs[key.replace("input_ids", "attention_mask")].bool()]] = True
    mapping = torch.zeros(vocab_size, dtype=torch.long)  # unseen -> 0 (unknown)
    mapping[seen] = torch.arange(1, int(seen.sum()) + 1)
    return mapping


def apply_vocabulary(inputs: Mapping[str, torch.Tensor], mapping: torch.Tensor) -> dict[str, torch.Tensor]:
    """``inputs`` with every ``input_ids*`` tensor mapped through :func:`training_vocabulary`."""
    return {k: mapping[v] if k.startswith("input_ids") else v for k, v in inputs.items()}


def _trim(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing columns that are padding in every row (speed; the result is the same)."""
    if attention_mask.shape[1] == 0 or (attention_mask.sum(1) == 0).any():
        raise DataError("A sentence has no tokens (attention_mask all 0): drop empty sentences first.")
    length = int(attention_mask.sum(1).max())
    return input_ids[:, :length], attention_mask[:, :length]


class CNNEncoder(nn.Module):
    """Kim's sentence CNN: convolutions of several widths over word embeddings, max over time.

    Padding is handled exactly: padded positions are zeroed before a *wide* convolution
    (zero padding of ``width - 1`` on both sides), and only the outputs whose window touches a
    real token enter the max, so a sentence gets the same vector however much it is padded.

    Args:
        embeddings: the word embeddings (frozen or trainable).
        widths: the filter widths (tokens per window).
        filters: filters per width.
        dropout: dropout on the embeddings.

    Shapes:
        input_ids, attention_mask: (B, T). Returns (B, filters * len(widths)).

    Reference: Kim, *Convolutional Neural Networks for Sentence Classification*, EMNLP 2014,
    https://arxiv.org/abs/1408.5882.
    """

    def __init__(self, embeddings: nn.Embedding, widths: Sequence[int] = (3, 4, 5), filters: int = 100,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.widths = tuple(widths)
        dim = embeddings.embedding_dim
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, w, padding=w - 1) for w in self.widths)
        self.dropout = nn.Dropout(dropout)
        self.output_dim = filters * len(self.widths)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask = _trim(input_ids, attention_mask)
        mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        x = self.dropout(self.embeddings(input_ids)) * mask  # (B, T, E): padding = zeros
        x = x.transpose(1, 2)  # (B, E, T)
        lengths = attention_mask.sum(1)  # (B,)
        pooled = []
        for width, conv in zip(self.widths, self.convs):
            h = F.relu(conv(x))  # (B, F, T + w - 1); output j sees inputs j - w + 1 .. j
            valid = torch.arange(h.shape[-1], device=h.device) < (lengths + width - 1).unsqueeze(1)  # (B, T+w-1)
            pooled.append(h.masked_fill(~valid.unsqueeze(1), float("-inf")).amax(-1))  # (B, F)
        return torch.cat(pooled, dim=-1)  # (B, F * len(widths))


class BiGRUEncoder(nn.Module):
    """A bidirectional GRU over word embeddings, max-pooled over the real tokens.

    Sequences are packed (``pack_padded_sequence``), so the backward direction starts at each
    sentence's last real token and padding never enters the recurrence.

    Args:
        embeddings: the word embeddings (frozen or trainable).
        hidden: GRU units per direction.
        dropout: dropout on the embeddings.

    Shapes:
        input_ids, attention_mask: (B, T). Returns (B, 2 * hidden).

    Reference: Cho et al., 2014, https://arxiv.org/abs/1406.1078 (the GRU); max pooling over a
    BiLSTM as in InferSent (Conneau et al., 2017, https://arxiv.org/abs/1705.02364).
    """

    def __init__(self, embeddings: nn.Embedding, hidden: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.gru = nn.GRU(embeddings.embedding_dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.output_dim = 2 * hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask = _trim(input_ids, attention_mask)
        x = self.dropout(self.embeddings(input_ids))  # (B, T, E)
        lengths = attention_mask.sum(1).cpu()  # (B,)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, T, 2H)
        return h.masked_fill(attention_mask.unsqueeze(-1) == 0, float("-inf")).amax(1)  # (B, 2H)


class SiamesePairClassifier(nn.Module):
    """One sentence encoder applied to both sentences, ``[u, v, |u - v|, u * v]``, then an MLP.

    Args:
        encoder: a module mapping ``(input_ids, attention_mask)`` to ``(B, D)`` with an
            ``output_dim`` attribute (:class:`CNNEncoder`, :class:`BiGRUEncoder`).
        hidden: units of the MLP's hidden layer.
        dropout: dropout on the pair features.
        num_labels: classes.

    Shapes:
        input_ids_a, attention_mask_a, input_ids_b, attention_mask_b: (B, T). Returns logits (B, C).

    Reference: the InferSent classifier (Conneau et al., 2017, https://arxiv.org/abs/1705.02364).
    """

    def __init__(self, encoder: nn.Module, hidden: int = 128, dropout: float = 0.0, num_labels: int = 2) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = MLPProbe(4 * encoder.output_dim, hidden=hidden, dropout=dropout, num_labels=num_labels)

    def forward(self, input_ids_a: torch.Tensor, attention_mask_a: torch.Tensor,
                input_ids_b: torch.Tensor, attention_mask_b: torch.Tensor) -> torch.Tensor:
        u = self.encoder(input_ids_a, attention_mask_a)  # (B, D)
        v = self.encoder(input_ids_b, attention_mask_b)  # (B, D)
        return self.head(pair_features(u, v))  # (B, C)


class MLPProbe(nn.Module):
    """Dropout, a hidden ReLU layer, dropout, a linear output: a classifier on fixed features.

    Args:
        in_dim: feature size. hidden: hidden units. dropout: dropout probability (both places).
        num_labels: classes.

    Shapes:
        features: (B, in_dim). Returns logits (B, C).
    """

    def __init__(self, in_dim: int, hidden: int = 256, dropout: float = 0.0, num_labels: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, num_labels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)  # (B, C)


def tokenize_pairs(tokenizer: "PreTrainedTokenizerBase", texts_a: Sequence[str], texts_b: Sequence[str], *,
                   max_length: int = 64) -> dict[str, torch.Tensor]:
    """Token ids of both sentences of each pair, separately and without special tokens.

    Returns:
        ``{"input_ids_a", "attention_mask_a", "input_ids_b", "attention_mask_b"}``, each (N, T)
        and padded to the longest sentence (the encoders trim padding per batch).
    """
    _check_texts(texts_a, texts_b)
    out = {}
    for side, texts in (("a", texts_a), ("b", texts_b)):
        enc = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
        empty = (enc["attention_mask"].sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise DataError(f"Sentence(s) {empty[:5]} of side {side!r} have no tokens: drop empty pairs first.")
        out[f"input_ids_{side}"], out[f"attention_mask_{side}"] = enc["input_ids"], enc["attention_mask"]
    return out


# --------------------------------------------------------------------------- training


@torch.inference_mode()
def predict_logits(model: nn.Module, inputs: Mapping[str, torch.Tensor], *, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model(**batch)`` over all rows of ``inputs``, in eval mode.

    Shapes:
        inputs: tensors of N rows each. Returns (N, C) float32.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(next(iter(inputs.values())))
    try:
        out = [model(**{k: v[s:s + batch_size].to(device) for k, v in inputs.items()}).float().cpu()
               for s in range(0, n, batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def _accuracy_f1(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and F1: of class 1 with two classes (as GLUE reports MRPC), else the macro
    average over the classes (binary F1 is undefined for three)."""
    from tlutils.metrics import compute_metrics

    if logits.shape[-1] <= 2:
        return compute_metrics(logits, labels, ("accuracy", "f1"))
    scores = compute_metrics(logits, labels, ("accuracy", "macro_f1"))
    return {"accuracy": scores["accuracy"], "f1": scores["macro_f1"]}


def train_classifier(model: nn.Module, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor, *,
                     eval_inputs: Optional[Mapping[str, torch.Tensor]] = None,
                     eval_labels: Optional[torch.Tensor] = None, epochs: int = 10, batch_size: int = 32,
                     learning_rate: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
                     score_every_epoch: bool = True) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train a small classifier ``model(**batch) -> logits`` with AdamW and cross-entropy.

    A plain loop for the chapter's small torch modules (:class:`SiamesePairClassifier` on
    token ids, :class:`MLPProbe` on cached features); Hugging Face models and every method go
    through :func:`tlutils.train.fit`. Why not ``fit`` here: these models train on tensors
    already in memory, with the constant learning rate and no clipping of the classic
    feature-extraction recipes the chapter reproduces, for hundreds of tiny steps (an MLP on
    cached features), where ``fit``'s per-example dicts, padding and checkpoint machinery would
    be most of the time; nothing here needs resuming or multiple processes. The model is trained in place, on the device it is on (the
    inputs stay where they are; each batch is moved), and returned. Runs are reproducible: the shuffling uses its own generator
    seeded with ``seed``, and dropout draws from torch's global generator, which is seeded
    with ``seed`` too.

    Args:
        model: maps the tensors of ``inputs`` (as keyword arguments) to logits (B, C).
        inputs: tensors with N rows each (the model's keyword arguments).
        labels: (N,) class ids.
        eval_inputs, eval_labels: an evaluation set, scored after every epoch.
        epochs: passes over the data.
        batch_size: rows per step.
        learning_rate: AdamW's learning rate (an absolute number).
        weight_decay: AdamW's decoupled weight decay on the weight matrices (not on biases).
        seed: the seed of shuffling and dropout.
        score_every_epoch: score the training (and evaluation) set after every epoch; False
            scores only after the last one (faster; the training itself is the same).

    Returns:
        ``(model, history)``: one dict per epoch with ``epoch``, ``train_loss`` (mean over the
        epoch's steps), ``train_accuracy``/``train_f1`` (eval mode, after the epoch) and, with an
        evaluation set, ``eval_accuracy``/``eval_f1`` (F1 of class 1 with two classes, the
        macro average with more).

    Reference: Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019,
    https://arxiv.org/abs/1711.05101.
    """
    n = len(labels)
    if n == 0 or any(len(v) != n for v in inputs.values()):
        raise DataError(f"train_classifier needs N > 0 labels and N rows in every input; got {n} labels and "
                        f"{ {k: len(v) for k, v in inputs.items()} }.")
    if (eval_inputs is None) != (eval_labels is None):
        raise ConfigError("Pass both eval_inputs and eval_labels, or neither.")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate)
    labels = torch.as_tensor(labels)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            logits = model(**{k: v[idx].to(device) for k, v in inputs.items()})  # (B, C)
            loss = F.cross_entropy(logits, labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        record = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        history.append(record)
        if not score_every_epoch and epoch < epochs:
            continue
        record.update({f"train_{k}": v for k, v in _accuracy_f1(predict_logits(model, inputs), labels.numpy()).items()})
        if eval_inputs is not None:
            scores = _accuracy_f1(predict_logits(model, eval_inputs), torch.as_tensor(eval_labels).numpy())
            record.update({f"eval_{k}": v for k, v in scores.items()})
    model.eval()
    return model, history

