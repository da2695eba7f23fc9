"""WordPiece and byte-level BPE vocabularies trained on the pretraining corpus.

The miniature models need small vocabularies (8k-16k entries, against BERT's 30k and RoBERTa's
50k), trained on the corpus they pretrain on, with the special tokens of their family:

- ``"wordpiece"`` (BERT, ALBERT, ELECTRA): lower-cased, accents stripped, ``[PAD] [UNK] [CLS]
  [SEP] [MASK]``; a pair is ``[CLS] A [SEP] B [SEP]`` with token types 0/1 (Devlin et al., 2019,
  https://arxiv.org/abs/1810.04805, section 3 "Input/Output Representations"; ALBERT's own
  vocabulary is SentencePiece, Lan et al., 2020, section 4.1 -- WordPiece stands in for it here).
- ``"bpe"`` (RoBERTa, GPT-2): byte-level BPE on raw text, no normalisation, so every string
  round-trips exactly and nothing is ever unknown (Radford et al., 2019, "Language Models are
  Unsupervised Multitask Learners", section 2.2; Liu et al., 2019,
  https://arxiv.org/abs/1907.11692, section 4.4); ``<s> <pad> </s> <unk> <mask>`` at ids 0-4 as
  in RoBERTa, a pair is ``<s> A </s></s> B </s>``.

Both come back as ``transformers`` fast tokenizers, cached under
``output_dir("pretraining")/tokenizers/<kind>-<vocab>-<hash>`` where the hash covers the corpus
hash and every training setting.

Determinism: byte-level BPE retrains to the same vocabulary. The ``tokenizers`` WordPiece
trainer alone does not (``tokenizers`` 0.23): it numbers the ``##`` continuation pieces in
hash-map order, which Rust seeds per process, and breaks ties between equally frequent merges by
those numbers, so two trainings on the same corpus differ in ids and in a few of the last entries
(huggingface/tokenizers issue 1794, fix proposed in PR 2066). :func:`_continuation_pieces` works
around it: every ``##c`` is seeded as a special token (fixed ids, in sorted order) and turned
back into an ordinary entry after training, so WordPiece retrains to the same vocabulary too.
The cache still saves the retraining, and every pretrained run keeps its tokenizer next to its
weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from tlutils.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from tlutils.pretraining.corpus import Corpus

TOKENIZER_VERSION = 2  # 2: WordPiece trained deterministically
KINDS = ("wordpiece", "bpe")
SPECIAL_TOKENS = {
    "wordpiece": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"},
    "bpe": {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
            "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"},
}
_ORDER = {"wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
          "bpe": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]}


def tokenizer_key(corpus_hash: str, kind: str, vocab_size: int, min_frequency: int = 2) -> str:
    """The hash that names a trained tokenizer's cache folder (and enters a recipe's hash)."""
    spec = {"corpus": corpus_hash, "kind": kind, "vocab_size": vocab_size, "min_frequency": min_frequency,
            "version": TOKENIZER_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _check(kind: str, vocab_size: int) -> None:
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r}: use 'wordpiece' (BERT, ALBERT, ELECTRA) or 'bpe' (RoBERTa, GPT-2).")
    smallest = len(_ORDER[kind]) + (256 if kind == "bpe" else 30)
    if vocab_size < smallest:
        raise ConfigError(f"vocab_size={vocab_size} is below the {smallest} entries a {kind} vocabulary needs "
                          f"for its special tokens and alphabet; use 8000-16000 for the miniature models.")


def _continuation_pieces(normalizer, texts: list[str]) -> list[str]:
    """``##c`` for every character that can continue a word (not space, punctuation or CJK), sorted.

    Seeding them as special tokens gives them fixed ids, which makes the ``tokenizers`` WordPiece
    trainer deterministic: it otherwise numbers them in hash-map order and breaks ties between
    equally frequent merges by those numbers (huggingface/tokenizers#1794).
    """
    import unicodedata

    chars: set[str] = set()
    for i in range(0, len(texts), 5000):
        chars.update(normalizer.normalize_str("\n".join(texts[i:i + 5000])))

    def splits(ch: str) -> bool:  # BertPreTokenizer's word boundaries (ASCII symbols count as punctuation)
        o = ord(ch)
        return (ch.isspace() or 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126
                or unicodedata.category(ch).startswith("P") or 0x4E00 <= o <= 0x9FFF)
    return ["##" + ch for ch in sorted(chars) if not splits(ch)]


def _backend(kind: str, vocab_size: int, min_frequency: int, texts: Iterable[str], length: Optional[int]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=True, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        texts = list(texts)
        pieces = _continuation_pieces(tok.normalizer, texts)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=_ORDER[kind] + pieces, continuing_subword_prefix="##",
                                            show_progress=False)
        tok.train_from_iterator(texts, trainer, length=length)
        raw = json.loads(tok.to_str())  # the ## pieces were only seeded as specials: ordinary entries again
        raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] in _ORDER[kind]]
        tok = Tokenizer.from_str(json.dumps(raw))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        return tok
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=_ORDER[kind], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer, length=length)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")),
                                                      trim_offsets=False, add_prefix_space=False)
    return tok


def _wrap(kind: str, backend) -> "PreTrainedTokenizerFast":
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    specials = dict(SPECIAL_TOKENS[kind])
    if kind == "bpe":  # as RoBERTa's: "The <mask> sat" masks the word with its leading space
        specials["mask_token"] = AddedToken("<mask>", lstrip=True, rstrip=False, special=True, normalized=False)
        backend.add_special_tokens([specials["mask_token"]])
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if kind == "wordpiece" else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_input_names=inputs,
                                   clean_up_tokenization_spaces=kind == "wordpiece", **specials)


def tokenizer_kind(tokenizer: "PreTrainedTokenizerFast") -> str:
    """``"wordpiece"`` or ``"bpe"``: which special-token layout a tokenizer uses."""
    return "bpe" if tokenizer.sep_token == "</s>" else "wordpiece"


def train_tokenizer(corpus: "Corpus | Iterable[str]", kind: str = "wordpiece", vocab_size: int = 8000, *,
                    min_frequency: int = 2, cache: bool = True) -> "PreTrainedTokenizerFast":
    """Train a WordPiece or byte-level BPE vocabulary on the corpus's sentences.

    Args:
        corpus: a :class:`~tlutils.pretraining.corpus.Corpus` (its hash names the cache), or
            any iterable of texts (never cached).
        kind: ``"wordpiece"`` (BERT-style, lower-cased) or ``"bpe"`` (byte-level, RoBERTa/GPT-2).
        vocab_size: entries including the five special tokens (8000-16000 for the miniatures).
        min_frequency: a merge must occur this often to enter the vocabulary.
        cache: read/write ``output_dir("pretraining")/tokenizers/...`` (corpora only).

    Returns:
        a ``transformers.PreTrainedTokenizerFast`` with the family's special tokens and pair
        post-processor; ``len(tokenizer) == vocab_size``.

    Raises:
        ConfigError: an unknown kind, or a corpus too small to yield ``vocab_size`` entries.
        DataError: an empty corpus.
    """
    from tlutils.pretraining.corpus import Corpus

    _check(kind, vocab_size)
    folder = None
    if isinstance(corpus, Corpus):
        texts, length = corpus.sentences, corpus.stats.get("sentences")
        if cache:
            from tlutils.config import output_dir

            key = tokenizer_key(corpus.hash, kind, vocab_size, min_frequency)
            folder = output_dir("pretraining") / "tokenizers" / f"{kind}-{vocab_size}-{key[:12]}"
            if (folder / "tokenizer.json").is_file():
                return load_pretraining_tokenizer(folder, kind)
    else:
        items = [t for t in corpus if t and t.strip()]
        texts, length = (lambda: iter(items)), len(items)
        if not items:
            raise DataError("The corpus is empty: pass a Corpus (build_corpus()) or a list of non-empty texts.")
    backend = _backend(kind, vocab_size, min_frequency, texts(), length)
    got = backend.get_vocab_size()
    if got < vocab_size:
        raise ConfigError(f"The corpus yields only {got} {kind} entries (min_frequency={min_frequency}), fewer than "
                          f"vocab_size={vocab_size}: use vocab_size<={got}, a lower min_frequency or a larger corpus.")
    tokenizer = _wrap(kind, backend)
    if folder is not None:
        tmp = folder.with_name(folder.name + ".tmp")
        tokenizer.save_pretrained(str(tmp))
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        tmp.rename(folder)
        tokenizer = load_pretraining_tokenizer(folder, kind)
    return tokenizer


def load_pretraining_tokenizer(folder: Path | str, kind: Optional[str] = None) -> "PreTrainedTokenizerFast":
    """Load a tokenizer saved by :func:`train_tokenizer` (or with a pretrained miniature)."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{folder} holds no tokenizer.json; train it again with train_tokenizer().")
    backend = Tokenizer.from_file(str(path))
    if kind is None:
        kind = "bpe" if backend.token_to_id("</s>") is not None else "wordpiece"
    tokenizer = _wrap(kind, backend)
    tokenizer.name_or_path = str(folder)
    return tokenizer
