"""Pretraining examples and the collators that turn them into batches for ``fit``.

Examples (pure functions of the tokenized documents and a seed):

- :func:`pack_segments`: whole sentences packed into sequences of up to ``max_length`` tokens,
  optionally across document boundaries with a separator (RoBERTa's FULL-SENTENCES and
  DOC-SENTENCES inputs, Liu et al., 2019, https://arxiv.org/abs/1907.11692, section 4.2);
- :func:`pack_stream`: the token stream cut into blocks, documents separated by ``</s>``
  (GPT-2's causal language-model input, Radford et al., 2019, section 2);
- :func:`make_pairs` + :func:`encode_pairs`: two-segment inputs for next-sentence prediction
  (Devlin et al., 2019, https://arxiv.org/abs/1810.04805, section 3.1, task #2: half the second
  segments are the text that follows, half a random span of another document) and
  sentence-order prediction (Lan et al., 2020, https://arxiv.org/abs/1909.11942, section 3.1:
  two consecutive segments, half of them swapped). Labels are exactly balanced.

Collators (:class:`PretrainingCollator`) pad and corrupt: MLM masking with
:func:`tlutils.masking.mask_tokens` (15% chosen, 80/10/10), either *dynamic* -- a new mask
every epoch (RoBERTa, section 4.1) -- or *static* -- one mask per example, fixed by the seed;
RoBERTa's static baseline duplicates the data k times so each sequence has k masks
(:func:`duplicate`). Masks are drawn per example from a generator seeded by
``(seed, epoch, example index)``, so a resumed run sees the masks the uninterrupted run saw;
:class:`EpochBatchSampler` tells the collator the epoch (``fit`` calls its ``set_epoch``).

Why the pair label travels as ``labels``: ``fit``'s loader keeps only the model inputs and
``labels`` of each example; the collator renames a scalar ``labels`` to ``pair_labels`` and
builds the token-level MLM ``labels`` itself.

ELECTRA's replaced-token detection needs the generator's samples, so its corruption happens in
the model's forward (:func:`replace_tokens`, :mod:`tlutils.pretraining.objectives`); its
collator only masks (all chosen tokens become ``[MASK]`` there, Clark et al., 2020, section 2).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from tlutils.data import LengthGroupedBatchSampler
from tlutils.errors import ConfigError, DataError
from tlutils.masking import IGNORE_INDEX, MaskingVocab, mask_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tlutils.pretraining.corpus import Document

TokenDocs = list[list[list[int]]]  # documents -> sentences -> token ids (no special tokens)
PAIR_KINDS = ("nsp", "sop")


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    """Where the special tokens go: ``[CLS] A [SEP] B [SEP]`` (WordPiece families) or
    ``<s> A </s></s> B </s>`` (byte-level BPE); ``types`` says whether B gets token type 1."""

    cls: int
    sep: int
    double_sep: bool  # RoBERTa's pair separator is </s></s>
    types: bool

    @classmethod
    def of(cls, tokenizer: "PreTrainedTokenizerBase") -> "Layout":
        bpe = tokenizer.sep_token == "</s>"
        return cls(tokenizer.cls_token_id, tokenizer.sep_token_id, double_sep=bpe, types=not bpe)

    def single(self, ids: Sequence[int]) -> list[int]:
        return [self.cls, *ids, self.sep]

    def pair(self, a: Sequence[int], b: Sequence[int]) -> tuple[list[int], list[int]]:
        """``(input_ids, token_type_ids)`` of a two-segment input."""
        first = [self.cls, *a, self.sep] + ([self.sep] if self.double_sep else [])
        second = [*b, self.sep]
        types = [0] * len(first) + [1 if self.types else 0] * len(second)
        return first + second, types

    @property
    def pair_overhead(self) -> int:
        return 4 if self.double_sep else 3


def tokenize_documents(documents: Sequence["Document"], tokenizer: "PreTrainedTokenizerBase") -> TokenDocs:
    """Token ids of every sentence, without special tokens, in one batched call.

    Sentences after a document's first are tokenized with a leading space, so byte-level BPE
    sees the space that separated them in the text (WordPiece ignores it).
    """
    flat = [(" " + s if i else s) for d in documents for i, s in enumerate(d.sentences)]
    if not flat:
        raise DataError("No sentences to tokenize: pass documents with text (Corpus.documents).")
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"]
    out, k = [], 0
    for document in documents:
        out.append([list(x) for x in ids[k:k + len(document.sentences)]])
        k += len(document.sentences)
    return out


# --------------------------------------------------------------------------- packed sequences


def pack_segments(token_docs: TokenDocs, max_length: int, layout: Layout, *,
                  cross_documents: bool = True) -> list[dict[str, list[int]]]:
    """Whole sentences packed into ``layout.single(...)`` sequences of at most ``max_length``.

    A sentence longer than the room left starts a new sequence; one longer than a whole
    sequence is cut into pieces. With ``cross_documents`` a sequence continues into the next
    document after a separator (RoBERTa's FULL-SENTENCES); without, each document starts a new
    sequence (DOC-SENTENCES).

    Returns:
        examples ``{"input_ids": [...]}`` in corpus order.
    """
    budget = max_length - 2
    if budget < 1:
        raise ConfigError(f"max_length={max_length} leaves no room for text: use max_length >= 3.")
    examples: list[dict[str, list[int]]] = []
    current: list[int] = []

    def emit() -> None:
        nonlocal current
        while current and current[-1] == layout.sep:  # never end on a document separator
            current.pop()
        if current:
            examples.append({"input_ids": layout.single(current)})
        current = []

    for document in token_docs:
        if current and cross_documents:
            if len(current) + 1 < budget:
                current.append(layout.sep)
            else:
                emit()
        for sentence in document:
            for start in range(0, max(len(sentence), 1), budget):
                piece = sentence[start:start + budget]
                if not piece:
                    continue
                if len(current) + len(piece) > budget:
                    emit()
                current.extend(piece)
        if not cross_documents:
            emit()
    emit()
    return examples


def pack_stream(token_docs: TokenDocs, max_length: int, separator: int) -> list[dict[str, list[int]]]:
    """The corpus as one token stream (documents joined by ``separator``, e.g. ``</s>``), cut
    into blocks of ``max_length`` (the last one shorter): a causal LM's training input."""
    if max_length < 2:
        raise ConfigError(f"max_length={max_length}: a causal LM needs at least 2 tokens per block.")
    stream: list[int] = []
    for document in token_docs:
        for sentence in document:
            stream.extend(sentence)
        stream.append(separator)
    return [{"input_ids": stream[i:i + max_length]} for i in range(0, len(stream), max_length)
            if len(stream[i:i + max_length]) >= 2]


def duplicate(examples: Sequence[dict[str, Any]], copies: int) -> list[dict[str, Any]]:
    """RoBERTa's static-masking baseline: the data ``copies`` times (10 in Liu et al., 2019,
    section 4.1), so that under static masking each copy -- a different index -- gets its own
    fixed mask."""
    if copies < 1:
        raise ConfigError(f"copies={copies}: use a positive number of copies.")
    return [dict(e) for _ in range(copies) for e in examples]


# --------------------------------------------------------------------------- NSP / SOP pairs


@dataclass(frozen=True)
class Pair:
    """One two-segment example, as sentence spans ``[start, end)`` of documents.

    NSP: ``label`` 0 = B follows A in document ``doc`` (``b_doc == doc``), 1 = B is a span of
    another source's document. SOP: B always follows A in ``doc``; label 1 = the two are
    swapped in the input (``encode_pairs`` puts B first). The label conventions are those of
    ``transformers``' ``next_sentence_label`` and ``sentence_order_label``.
    """

    doc: int
    a: tuple[int, int]
    b_doc: int
    b: tuple[int, int]
    label: int


def make_pairs(token_docs: TokenDocs, sources: Sequence[str], kind: str, max_length: int, seed: int,
               overhead: int = 3) -> list[Pair]:
    """Sentence-span pairs for NSP or SOP, exactly half of them with label 1.

    Each document with two or more sentences is walked in chunks of consecutive sentences that
    fit ``max_length - overhead`` tokens (at least two sentences each); a chunk is cut at a
    random sentence boundary into A and B (BERT's ``create_pretraining_data.py`` recipe). For
    NSP's label-1 pairs, B is replaced by a span of a random document whose ``source`` differs
    (never the other text of the same row: that would be the task's own ``text_a -> text_b``
    pairing, the signal MRPC and RTE measure).

    Args:
        token_docs: :func:`tokenize_documents` output.
        sources: each document's ``source`` (``Document.source``).
        kind: ``"nsp"`` or ``"sop"``.
        max_length: tokens per example including special tokens.
        seed: the only source of randomness.
        overhead: special tokens per pair (3 for ``[CLS] A [SEP] B [SEP]``, 4 for RoBERTa's).
    """
    if kind not in PAIR_KINDS:
        raise ConfigError(f"kind={kind!r}: use 'nsp' (next-sentence prediction) or 'sop' (sentence order).")
    if len(sources) != len(token_docs):
        raise ConfigError(f"{len(sources)} sources for {len(token_docs)} documents: pass one per document.")
    rng = random.Random(seed)
    budget = max_length - overhead
    lengths = [[len(s) for s in d] for d in token_docs]
    chunks: list[tuple[int, int, int]] = []  # (doc, start, end)
    for i, sizes in enumerate(lengths):
        start, used = 0, 0
        for j, size in enumerate(sizes):
            if j > start and used + size > budget and j - start >= 2:
                chunks.append((i, start, j))
                start, used = j, 0
            used += size
        if len(sizes) - start >= 2:
            chunks.append((i, start, len(sizes)))
        elif chunks and chunks[-1][0] == i and len(sizes) - start == 1:  # a last lone sentence joins the chunk
            chunks[-1] = (i, chunks[-1][1], len(sizes))
    if not chunks:
        raise DataError("No document has two sentences: NSP/SOP pairs need consecutive sentences "
                        "(use more documents, e.g. build_corpus()).")
    n_ones = len(chunks) // 2
    labels = [1] * n_ones + [0] * (len(chunks) - n_ones)
    rng.shuffle(labels)
    distinct_sources = len(set(sources))
    if kind == "nsp" and n_ones and distinct_sources < 2:
        raise DataError("NSP needs documents of at least two sources for its random second segments.")
    pairs = []
    for (doc, start, end), label in zip(chunks, labels):
        cut = rng.randint(start + 1, end - 1)
        a, b_doc, b = (start, cut), doc, (cut, end)
        if kind == "nsp" and label == 1:
            b_len = sum(lengths[doc][cut:end])
            while True:
                other = rng.randrange(len(token_docs))
                if sources[other] != sources[doc]:
                    break
            first = rng.randrange(len(token_docs[other]))
            last, used = first, 0
            while last < len(token_docs[other]) and (last == first or used + lengths[other][last] <= b_len):
                used += lengths[other][last]
                last += 1
            b_doc, b = other, (first, last)
        pairs.append(Pair(doc, a, b_doc, b, label))
    return pairs


def truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer segment until both fit ``budget`` (BERT's
    ``truncate_seq_pair``, deterministic: always the end)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a, b


def encode_pairs(pairs: Sequence[Pair], token_docs: TokenDocs, layout: Layout, max_length: int,
                 kind: str) -> list[dict[str, Any]]:
    """Token ids of :func:`make_pairs`'s pairs: ``input_ids``, ``token_type_ids`` and the pair
    label as ``labels`` (SOP label 1: B is put first). Truncation happens before the swap, so
    a swapped pair holds exactly the two segments of its in-order twin."""
    budget = max_length - layout.pair_overhead
    out = []
    for pair in pairs:
        a = [t for s in token_docs[pair.doc][pair.a[0]:pair.a[1]] for t in s]
        b = [t for s in token_docs[pair.b_doc][pair.b[0]:pair.b[1]] for t in s]
        a, b = truncate_pair(a, b, budget)
        if kind == "sop" and pair.label == 1:
            a, b = b, a
        ids, types = layout.pair(a, b)
        out.append({"input_ids": ids, "token_type_ids": types, "labels": pair.label})
    return out


# --------------------------------------------------------------------------- collators


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one example's mask: a hash of ``(seed, epoch, index)``; static masks
    use ``epoch = -1``."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class PretrainingCollator:
    """Pad a list of examples and corrupt them for the objective.

    Args:
        vocab: the tokenizer (or a :class:`~tlutils.masking.MaskingVocab` plus ``pad_token_id``).
        objective: ``"mlm"`` (MLM labels; a scalar ``labels`` becomes ``pair_labels`` for
            MLM+NSP/SOP), ``"clm"`` (labels = inputs, padding ignored) or ``"none"`` (pad only).
        masking: ``"dynamic"`` (new mask per epoch) or ``"static"`` (one mask per example index).
        seed: the masks' seed.
        mlm_probability, mask_fraction, random_fraction: :func:`~tlutils.masking.mask_tokens`'s
            proportions (15%, 80/10/10 for BERT; ELECTRA's generator input: ``mask_fraction=1``,
            ``random_fraction=0``).
        pad_to_multiple_of: round the padded length up (8: fewer distinct shapes, see ``fit``).

    Shapes (output): ``input_ids``, ``attention_mask``, ``labels`` ``(B, T)``; ``token_type_ids``
    ``(B, T)`` when the examples have them; ``pair_labels`` ``(B,)``; ``idx`` ``(B,)``.
    """

    vocab: Any
    objective: str = "mlm"
    masking: str = "dynamic"
    seed: int = 0
    mlm_probability: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1
    pad_to_multiple_of: Optional[int] = 8
    pad_token_id: Optional[int] = None
    epoch: int = 0

    def __post_init__(self) -> None:
        if self.objective not in ("mlm", "clm", "none"):
            raise ConfigError(f"objective={self.objective!r}: use 'mlm', 'clm' or 'none'.")
        if self.masking not in ("dynamic", "static"):
            raise ConfigError(f"masking={self.masking!r}: use 'dynamic' (RoBERTa) or 'static' (BERT's original).")
        if self.pad_token_id is None:
            self.pad_token_id = getattr(self.vocab, "pad_token_id", None)
            if self.pad_token_id is None:
                raise ConfigError("The collator needs pad_token_id (or a tokenizer that has one).")
        self.masking_vocab = self.vocab if isinstance(self.vocab, MaskingVocab) else (
            MaskingVocab.from_tokenizer(self.vocab) if self.objective == "mlm" else None)

    def set_epoch(self, epoch: int) -> None:
        """Called through :class:`EpochBatchSampler` before every epoch (dynamic masks change)."""
        self.epoch = epoch

    def mask_one(self, ids: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The corrupted ids and MLM labels of one example (``(T,)`` each), reproducible from
        ``(seed, epoch, index)`` (``epoch`` ignored under static masking)."""
        epoch = -1 if self.masking == "static" else self.epoch
        gen = torch.Generator().manual_seed(example_seed(self.seed, epoch, index))
        masked, labels = mask_tokens(ids[None, :], self.masking_vocab, mlm_probability=self.mlm_probability,
                                     mask_fraction=self.mask_fraction, random_fraction=self.random_fraction,
                                     generator=gen)
        return masked[0], labels[0]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        B = len(examples)
        input_ids = torch.full((B, longest), self.pad_token_id, dtype=torch.long)  # (B, T)
        attention = torch.zeros((B, longest), dtype=torch.long)
        labels = torch.full((B, longest), IGNORE_INDEX, dtype=torch.long)
        types = torch.zeros((B, longest), dtype=torch.long) if "token_type_ids" in examples[0] else None
        for row, example in enumerate(examples):
            ids = torch.as_tensor(example["input_ids"], dtype=torch.long)  # (T_i,)
            n = len(ids)
            attention[row, :n] = 1
            if types is not None:
                types[row, :n] = torch.as_tensor(example["token_type_ids"], dtype=torch.long)
            if self.objective == "mlm":
                ids, labels[row, :n] = self.mask_one(ids, int(example.get("idx", row)))
            elif self.objective == "clm":
                labels[row, :n] = ids
            input_ids[row, :n] = ids
        batch = {"input_ids": input_ids, "attention_mask": attention}
        if types is not None:
            batch["token_type_ids"] = types
        if self.objective != "none":
            batch["labels"] = labels
        if "labels" in examples[0] and not isinstance(examples[0]["labels"], (list, tuple)):
            batch["pair_labels"] = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        if "idx" in examples[0]:
            batch["idx"] = torch.tensor([int(e["idx"]) for e in examples], dtype=torch.long)
        return batch


class EpochBatchSampler(LengthGroupedBatchSampler):
    """:class:`tlutils.data.LengthGroupedBatchSampler` that also tells collators the epoch.

    ``fit`` calls ``set_epoch`` on its batch sampler before each epoch (also when it resumes
    mid-epoch), so dynamic masks follow the epoch without hidden state in the collator.
    """

    def __init__(self, examples: Sequence[dict[str, Any]], batch_size: int, collators: Sequence[PretrainingCollator],
                 seed: int = 0, group_by_length: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__([len(e["input_ids"]) for e in examples], batch_size, shuffle=True, seed=seed,
                         group_by_length=group_by_length, num_replicas=num_replicas, rank=rank)
        self.collators = list(collators)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for collator in self.collators:
            collator.set_epoch(epoch)


# --------------------------------------------------------------------------- replaced-token detection


def sample_tokens(logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One token per row from ``softmax(logits)`` (ELECTRA's generator samples, no gradient).

    Shapes:
        logits ``(M, V)`` -> ``(M,)``.
    """
    probs = torch.softmax(logits.detach().float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def replace_tokens(input_ids: torch.Tensor, labels: torch.Tensor,
                   sampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ELECTRA's corrupted input and the discriminator's targets (Clark et al., 2020, section 2).

    Args:
        input_ids: the generator's (masked) input ``(B, T)``.
        labels: MLM labels ``(B, T)``: the original id at masked positions, -100 elsewhere.
        sampled: the generator's samples at the masked positions, in row-major order ``(M,)``.

    Returns:
        ``(corrupted, replaced)``: ``corrupted`` is the original sequence with the samples at
        the masked positions; ``replaced`` is 1 where ``corrupted`` differs from the original,
        0 elsewhere -- a sample that equals the original token is labelled *original* (the
        paper's convention: "if the generator happens to generate the correct token, that token
        is considered 'real'").
    """
    chosen = labels != IGNORE_INDEX  # (B, T)
    original = torch.where(chosen, labels, input_ids)
    corrupted = original.clone()
    corrupted[chosen] = sampled.to(corrupted.dtype)
    return corrupted, (corrupted != original).long()


# --------------------------------------------------------------------------- one call


def make_examples(documents: Sequence["Document"], tokenizer: "PreTrainedTokenizerBase", objective: str,
                  max_length: int, seed: int = 0, *, token_docs: Optional[TokenDocs] = None,
                  cross_documents: bool = True) -> list[dict[str, Any]]:
    """The training examples of an objective: packed segments for ``mlm`` and ``electra``,
    NSP/SOP pairs for ``mlm+nsp``/``mlm+sop``, a cut token stream for ``clm``.

    ``token_docs`` (from :func:`tokenize_documents`) saves tokenizing twice when several
    objectives read the same documents.
    """
    token_docs = token_docs if token_docs is not None else tokenize_documents(documents, tokenizer)
    layout = Layout.of(tokenizer)
    if objective in ("mlm", "electra"):
        return pack_segments(token_docs, max_length, layout, cross_documents=cross_documents)
    if objective == "clm":
        return pack_stream(token_docs, max_length, tokenizer.eos_token_id or tokenizer.sep_token_id)
    if objective in ("mlm+nsp", "mlm+sop"):
        kind = objective.split("+")[1]
        pairs = make_pairs(token_docs, [d.source for d in documents], kind, max_length, seed, layout.pair_overhead)
        return encode_pairs(pairs, token_docs, layout, max_length, kind)
    raise ConfigError(f"objective={objective!r}: use 'mlm', 'mlm+nsp', 'mlm+sop', 'clm' or 'electra'.")
