"""The pretraining corpus: the book's own training text, as documents of sentences.

Part III pretrains miniature models on the text the book already has: the *training* splits
of every task (``text_a`` and ``text_b``), split into sentences, de-duplicated, and stripped of
every sentence that a later chapter evaluates a model on. Documents (a review, a premise, a
passage) stay ordered lists of sentences, so consecutive sentences exist for next-sentence and
sentence-order prediction (Devlin et al., 2019, section 3.1, task #2; Lan et al., 2020, section
3.1). The chapter *Language models vs encoders* explains the choices; this module is the code.

How overlap with evaluation data is removed (the numbers of each step are in ``stats``):

1. every text of every task's ``validation`` and ``test`` split is split into sentences with the
   same splitter, and each sentence is normalised (:func:`normalise`);
2. a training sentence whose normalised form is in that set is dropped (``evaluation_overlap``);
3. of the remaining sentences only the first occurrence is kept, in a fixed order (tasks by
   name, rows in file order, ``text_a`` before ``text_b``; ``duplicates``): the premises that
   SNLI, SICK and MultiNLI repeat for several hypotheses appear once;
4. a document that lost a sentence is cut there into parts, so every pair of consecutive
   sentences in the corpus was consecutive in the original text.

The corpus is cached under ``output_dir("pretraining")/corpus/<hash>`` where the hash covers
the input texts (every split that was read) and the builder's version: built once, then read.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from tlutils.errors import ConfigError, DataError, DataNotFoundError

CORPUS_VERSION = 1  # bump when the splitter, the normalisation or the file format changes
DOCUMENTS_FILE, STATS_FILE = "documents.jsonl", "stats.json"

# A sentence ends at ., ! or ? (possibly repeated, possibly followed by closing quotes or
# brackets), then whitespace, then what starts a sentence: an optional opening quote or bracket
# and a capital letter or a digit. Blank lines (paragraph breaks in reviews) also end one.
_BOUNDARY = re.compile(r"""([.!?]+["'\u201d\u2019)\]]*)\s+(?=["'\u201c\u2018(\[]*[A-Z0-9])""")
_PARAGRAPH = re.compile(r"\n\s*\n")
# No boundary after these (case-sensitive): titles, common abbreviations, single initials.
_ABBREVIATION = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Mt|Gen|Gov|Sen|Rep|Rev|Col|Lt|Sgt|Capt|Inc|Co|Corp|Ltd|"
    r"No|Nos|Vol|vs|etc|e\.g|i\.e|approx|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|"
    r"U\.S|U\.K|U\.N|a\.m|p\.m)|\b[A-Z])\.$")


def split_sentences(text: str) -> list[str]:
    """Split a text into sentences with a regular expression (no model, no download).

    A boundary is ``[.!?]`` (plus closing quotes/brackets) followed by whitespace and an
    opening quote/bracket, a capital letter or a digit -- unless the word before the full stop
    is a known abbreviation (``Mr.``, ``U.S.``, ``e.g.``, ...) or a single capital (an initial);
    a blank line is always a boundary. Other whitespace (single newlines, runs of spaces)
    becomes one space. Lower-case sentence starts after a full stop are not split (reviews
    written in lower case stay one sentence): a precision-over-recall choice.

    Example:
        >>> split_sentences("Dr. Smith arrived. He sat down!  Then: 'Hello.'")
        ['Dr. Smith arrived.', 'He sat down!', "Then: 'Hello.'"]
    """
    sentences = []
    for paragraph in _PARAGRAPH.split(text):
        paragraph = " ".join(paragraph.split())
        start = 0
        for match in _BOUNDARY.finditer(paragraph):
            end = match.end(1)  # the sentence keeps its closing quotes and brackets
            if _ABBREVIATION.search(paragraph[start:end].rstrip("\"'\u201d\u2019)]")):
                continue
            sentences.append(paragraph[start:end].strip())
            start = match.end()
        sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


def normalise(sentence: str) -> str:
    """The key of normalised-exact matching: NFKC, case-folded, every run of non-alphanumeric
    characters (punctuation, whitespace, underscores) one space, stripped.

    ``"The cat sat."`` and ``"the  cat, sat"`` share a key; ``"can't"`` and MultiNLI's
    pre-tokenised ``"ca n't"`` do not.
    """
    text = unicodedata.normalize("NFKC", sentence).casefold()
    return re.sub(r"[\W_]+", " ", text).strip()


@dataclass(frozen=True)
class Document:
    """One text of one row (or a part of it, see the module docstring), as ordered sentences.

    ``source`` is ``"<task>/<row id>"``: both texts of a pair share it, so a sampler that needs
    "another document" (NSP's random sentence) can avoid the row's own partner text.
    """

    task: str
    source: str
    sentences: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "source": self.source, "sentences": list(self.sentences)}


@dataclass
class Corpus:
    """A list of :class:`Document`, its statistics, and the hash that names its cache."""

    documents: list[Document]
    stats: dict[str, Any] = field(default_factory=dict)
    hash: str = ""
    folder: Optional[Path] = None

    def __post_init__(self) -> None:
        if not self.documents:
            raise DataError("The corpus has no documents: give it at least one non-empty text "
                            "(build_corpus() reads every task's training split).")
        if not self.hash:
            self.hash = _hash_json([d.to_json() for d in self.documents])
        if not self.stats:
            self.stats = corpus_stats(self.documents)

    @classmethod
    def from_texts(cls, texts: Iterable[str], task: str = "text") -> "Corpus":
        """A corpus from raw texts, one document each (tests, a reader's own text)."""
        documents = [Document(task, f"{task}/{i}", tuple(split_sentences(t))) for i, t in enumerate(texts)]
        return cls([d for d in documents if d.sentences])

    def __len__(self) -> int:
        return len(self.documents)

    def sentences(self) -> Iterator[str]:
        """Every sentence, document after document."""
        for document in self.documents:
            yield from document.sentences

    def split(self, heldout_fraction: float = 0.01, seed: int = 0) -> tuple[list[Document], list[Document]]:
        """``(train, heldout)`` documents: a document is held out when a hash of its source and
        the seed falls below ``heldout_fraction`` (both texts of a row fall on the same side;
        the split does not depend on the order or number of documents)."""
        if not 0.0 < heldout_fraction < 1.0:
            raise ConfigError(f"heldout_fraction={heldout_fraction}: use a fraction in (0, 1).")
        train, heldout = [], []
        for document in self.documents:
            digest = hashlib.sha256(f"{seed}:{document.source}".encode()).digest()
            (heldout if int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction else train).append(document)
        if not train or not heldout:
            raise DataError(f"Splitting {len(self.documents)} documents with heldout_fraction="
                            f"{heldout_fraction} leaves one side empty; use a larger corpus or another fraction.")
        return train, heldout


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _words(sentence: str) -> int:
    return len(sentence.split())


def corpus_stats(documents: Sequence[Document]) -> dict[str, Any]:
    """Bytes (UTF-8, one sentence per line), words (whitespace-separated), sentences and
    documents, in total and per task with each task's share of the words."""
    by_task: dict[str, dict[str, float]] = {}
    for document in documents:
        row = by_task.setdefault(document.task, {"documents": 0, "sentences": 0, "words": 0, "bytes": 0})
        row["documents"] += 1
        row["sentences"] += len(document.sentences)
        row["words"] += sum(_words(s) for s in document.sentences)
        row["bytes"] += sum(len(s.encode("utf-8")) + 1 for s in document.sentences)
    total = {k: sum(r[k] for r in by_task.values()) for k in ("documents", "sentences", "words", "bytes")}
    for row in by_task.values():
        row["share_words"] = row["words"] / total["words"] if total["words"] else 0.0
    return {**total, "by_task": dict(sorted(by_task.items()))}


def _task_texts(task_name: str, split: str, data_dir: Any) -> Optional[list[dict[str, Any]]]:
    """Rows of one split (None when the task has no such split, e.g. RTE's test)."""
    from tlutils.data import get_task, load_split

    try:
        return load_split(get_task(task_name), split, data_dir, labelled=False)
    except DataNotFoundError:
        if split == "train":
            raise
        return None


def default_tasks() -> tuple[str, ...]:
    """One task per data folder (``sick`` and ``sick_relatedness`` share their texts)."""
    from tlutils.data import TASKS

    seen: dict[str, str] = {}
    for name, spec in TASKS.items():
        seen.setdefault(spec.folder, name)
    return tuple(sorted(seen.values()))


def build_corpus(tasks: Optional[Sequence[str]] = None, *, data_dir: Any = None,
                 cache: bool = True) -> Corpus:
    """The pretraining corpus from every task's training text (see the module docstring).

    Args:
        tasks: task names (default: one per data folder -- amazon, mnli, mrpc, rte, sick, snli,
            stsb); processed in sorted order, which decides which copy of a duplicate is kept.
        data_dir: the data folder (default ``$TLUTILS_DATA_DIR``, else the hub).
        cache: read/write ``output_dir("pretraining")/corpus/corpus-<hash>``; the hash covers
            the texts of every split read and :data:`CORPUS_VERSION`, so changed data or a
            changed builder gives a new folder.

    Returns:
        a :class:`Corpus`; ``stats`` holds bytes, words, sentences, documents, the share of each
        task, and what was removed: ``evaluation_overlap`` (training sentences found in a
        validation/test split), ``duplicates`` (later copies of a sentence), ``input_sentences``
        and ``evaluation_sentences`` (distinct normalised sentences of the evaluation splits).

    Reference: the overlap policy follows the spirit of GPT-2's 8-gram overlap analysis
    (Radford et al., 2019, "Language Models are Unsupervised Multitask Learners", section 4),
    at sentence level and removing rather than only measuring.
    """
    from tlutils.config import output_dir

    names = sorted(tasks) if tasks is not None else list(default_tasks())
    if not names:
        raise ConfigError("build_corpus(tasks=[]) has nothing to read: pass task names or None for all.")
    splits = {(name, split): _task_texts(name, split, data_dir)
              for name in names for split in ("train", "validation", "test")}
    key = _hash_json({"version": CORPUS_VERSION, "texts": {
        f"{n}/{s}": [[r["id"], r["text_a"], r["text_b"]] for r in rows]
        for (n, s), rows in splits.items() if rows is not None}})
    folder = output_dir("pretraining") / "corpus" / f"corpus-{key[:12]}"
    if cache and (folder / STATS_FILE).is_file():
        return load_corpus(folder)

    evaluation = {normalise(s) for (_, split), rows in splits.items() if split != "train" and rows
                  for r in rows for text in (r["text_a"], r["text_b"]) if text
                  for s in split_sentences(text)}
    evaluation.discard("")
    seen: set[str] = set()
    documents: list[Document] = []
    removed = {"evaluation_overlap": 0, "duplicates": 0, "empty": 0}
    removed_by_task: dict[str, dict[str, int]] = {}
    input_sentences = 0
    for name in names:
        removed_here = removed_by_task.setdefault(name, dict.fromkeys(removed, 0))
        for row in splits[(name, "train")] or []:
            for text in (row["text_a"], row["text_b"]):
                part: list[str] = []
                for sentence in split_sentences(text) if text else []:
                    input_sentences += 1
                    norm = normalise(sentence)
                    reason = ("empty" if not norm else "evaluation_overlap" if norm in evaluation
                              else "duplicates" if norm in seen else None)
                    if reason is None:
                        seen.add(norm)
                        part.append(sentence)
                        continue
                    removed[reason] += 1
                    removed_here[reason] += 1
                    if part:  # cut the document here: the sentences around the gap are not consecutive
                        documents.append(Document(name, f"{name}/{row['id']}", tuple(part)))
                        part = []
                if part:
                    documents.append(Document(name, f"{name}/{row['id']}", tuple(part)))
    if not documents:
        raise DataError(f"No sentence of tasks {', '.join(names)} survived de-duplication and overlap "
                        f"removal; check TLUTILS_DATA_DIR points at the staged data.")
    stats = {**corpus_stats(documents), "removed": removed, "removed_by_task": removed_by_task,
             "input_sentences": input_sentences,
             "evaluation_sentences": len(evaluation), "tasks": names, "version": CORPUS_VERSION}
    corpus = Corpus(documents, stats, key, folder if cache else None)
    if cache:
        save_corpus(corpus, folder)
    return corpus


def save_corpus(corpus: Corpus, folder: Path) -> None:
    """Write ``documents.jsonl`` (one document a line) and ``stats.json``; the stats file is
    written last (it marks the cache complete) and both via a temporary name."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (DOCUMENTS_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for document in corpus.documents:
            handle.write(json.dumps(document.to_json(), ensure_ascii=False) + "\n")
    tmp.replace(folder / DOCUMENTS_FILE)
    tmp = folder / (STATS_FILE + ".tmp")
    tmp.write_text(json.dumps({**corpus.stats, "hash": corpus.hash}, indent=1))
    tmp.replace(folder / STATS_FILE)


def load_corpus(folder: Path | str) -> Corpus:
    """Read a corpus written by :func:`build_corpus` (or :func:`save_corpus`)."""
    folder = Path(folder)
    path = folder / DOCUMENTS_FILE
    if not path.is_file() or not (folder / STATS_FILE).is_file():
        raise DataError(f"{folder} holds no complete corpus ({DOCUMENTS_FILE} and {STATS_FILE}); "
                        f"delete it and call build_corpus() to rebuild it.")
    documents = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                documents.append(Document(raw["task"], raw["source"], tuple(raw["sentences"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{path}, line {number}: not a corpus document; delete {folder} and call "
                                f"build_corpus() to rebuild it.") from None
    if not documents:
        raise DataError(f"{path} is empty: delete {folder} and call build_corpus() to rebuild it.")
    stats = json.loads((folder / STATS_FILE).read_text())
    return Corpus(documents, {k: v for k, v in stats.items() if k != "hash"}, stats.get("hash", ""), folder)
