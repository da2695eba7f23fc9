"""Download the tasks that have no Hugging Face hub source (``amazon``, ``sick``) from their
pinned origins, onto the reader's own machine.

The staged data folder (``$TLUTILS_DATA_DIR``, see ``../shared/data``) was built from public
GitHub repositories at fixed commits. This module rebuilds the same JSON Lines files from the
same raw files where that folder is absent (Colab, a reader's laptop):

1. every raw file is downloaded from ``raw.githubusercontent.com`` at its pinned commit
   (:func:`raw_url`) and checked against its git blob SHA-1 (:func:`git_blob_sha1`): a file
   that differs by one byte is refused;
2. the pure converters turn the raw formats into the book's schema (:func:`amazon_rows` for
   the Blitzer et al. review files, :func:`sick_rows` for ``SICK.txt``);
3. the documented split rules assign every row to ``train``/``validation``/``test``
   (:func:`blitzer_split`, :data:`SICK_SPLITS`);
4. :func:`fetch_task` writes ``<folder>/<task folder>/<split>.jsonl`` in the staged files'
   exact format, plus a ``SOURCE.md`` note.

:func:`ensure_local_data` is the one call a chapter's Colab cell needs: it fetches only the
tasks that have neither a local folder nor a hub source, and does nothing where the data are
already local (CI, the project's machines). Nothing is redistributed by the book: the reader's
machine downloads from the original sources, and the licence is printed with the download.

Command line: ``python -m tlutils data --fetch amazon sick --to DIR``.
"""

from __future__ import annotations

import datetime
import hashlib
import html
import http.client
import json
import os
import re
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tlutils.data import DATA_ENV, SPLITS, TASKS, get_task, local_split_path
from tlutils.errors import DataError, DataNotFoundError

CACHE_ENV = "TLUTILS_CACHE"  # the cache root; fetched data go to $TLUTILS_CACHE/data
RAW_BASE = "https://raw.githubusercontent.com"
TIMEOUT_S = 60.0

Opener = Callable[..., Any]  # urllib.request.urlopen's signature: opener(url, timeout=...) -> response


# --------------------------------------------------------------------------- pinned sources


def raw_url(repo: str, commit: str, path: str) -> str:
    """The ``raw.githubusercontent.com`` address of ``path`` in ``repo`` ("owner/name") at
    ``commit`` (a full 40-hex commit: a branch name would follow the repository's changes)."""
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise DataError(f"{repo}: commit {commit!r} is not a full 40-hex commit; pin the exact commit.")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise DataError(f"Repository {repo!r} is not of the form owner/name.")
    return f"{RAW_BASE}/{repo}/{commit}/{urllib.parse.quote(path.lstrip('/'), safe='/')}"


def git_blob_sha1(data: bytes) -> str:
    """The git blob hash of ``data`` (what ``git hash-object`` prints): SHA-1 of
    ``b"blob <size>\\0"`` followed by the bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class PinnedFile:
    """One raw file of a source: its path in the repository and its git blob SHA-1."""

    path: str
    blob: str


@dataclass(frozen=True)
class PinnedSource:
    """Where one task folder's raw files live (repository, commit) and how they are cited.

    ``files`` lists every raw file with its git blob; the converter of the folder
    (:data:`CONVERTERS`) turns their bytes into split rows.
    """

    folder: str  # the task folder under the data folder (TaskSpec.folder)
    repo: str
    commit: str
    files: tuple[PinnedFile, ...]
    citation: str
    processing: str  # one paragraph for the SOURCE note

    def url(self, file: PinnedFile) -> str:
        return raw_url(self.repo, self.commit, file.path)


# The Multi-Domain Sentiment Dataset's folder names -> the book's domain names.
AMAZON_DOMAINS = {"books": "books", "dvd": "dvd", "electronics": "electronics", "kitchen_&_housewares": "kitchen"}
AMAZON_POLARITIES = ("negative", "positive")  # label ids 0, 1
AMAZON_RATINGS = {"negative": (1.0, 2.0), "positive": (4.0, 5.0)}  # as in the paper (checked)
AMAZON_RECORDS = 1000  # reviews per (domain, polarity) file
_AMAZON_BLOBS = {
    ("books", "positive"): "b371c1072e332be0373c5586f3469c9d6a198b29",
    ("books", "negative"): "68e54a5e7032fc9b91b06d5741c3bff4490a23c5",
    ("dvd", "positive"): "3a6ce6ca507bc1c3438fd664b8fd53f9358aa8fd",
    ("dvd", "negative"): "67c7790aab67d66f1e456864a5451f333ccd29e2",
    ("electronics", "positive"): "5f69cffb869ab4870cfeee186926dc012dba103a",
    ("electronics", "negative"): "c493e386b35d145d6a14421187f139e4f4c65ae8",
    ("kitchen_&_housewares", "positive"): "43df177618db974748a66fc263b9b3584c70011e",
    ("kitchen_&_housewares", "negative"): "07c086d3105be41829e0e122f2c6c135530c0e23",
}

AMAZON = PinnedSource(
    folder="amazon_multidomain",
    repo="lorenzoritter/domainadaption",
    commit="f35a75418ea0ecf75dd85237bfcf68c224533747",
    files=tuple(PinnedFile(f"sorted_data_acl/{d}/{p}.review", blob) for (d, p), blob in _AMAZON_BLOBS.items()),
    citation="Blitzer, J., Dredze, M. and Pereira, F. 2007. Biographies, Bollywood, Boom-boxes and Blenders: "
             "Domain Adaptation for Sentiment Classification. ACL 2007.",
    processing="One row per review: id = <domain>-<polarity>-<index in file>, text_a = review_text, label 0 "
               "negative / 1 positive, domain, title, rating, asin; HTML entities unescaped, surrounding "
               "whitespace stripped. Split: within each (domain, polarity) group of 1,000 reviews, ranked by "
               "sha256(\"tlbook-2024:blitzer:<id>\"); ranks 1-200 test, 201-300 validation, 301-1000 train.",
)

SICK_COLUMNS = ("pair_ID", "sentence_A", "sentence_B", "entailment_label", "relatedness_score",
                "entailment_AB", "entailment_BA", "sentence_A_original", "sentence_B_original",
                "sentence_A_dataset", "sentence_B_dataset", "SemEval_set")
SICK_LABELS = ("ENTAILMENT", "NEUTRAL", "CONTRADICTION")  # label ids 0, 1, 2
SICK_SPLITS = {"TRAIN": "train", "TRIAL": "validation", "TEST": "test"}  # SemEval_set -> split
SICK_DOMAINS = {"FLICKR": "flickr", "SEMEVAL": "semeval"}  # sentence_A/B_dataset; different ones: "mixed"

SICK = PinnedSource(
    folder="sick",
    repo="kkalouli/SICK-processing",
    commit="0848f4aec60870122a4ca18de08ba0e25f6f9a75",
    files=(PinnedFile("SICK.txt", "5139c1155ea34aba3b51c784c4f561d1061b1c0b"),),
    citation="Marelli, M., Menini, S., Baroni, M., Bentivogli, L., Bernardi, R. and Zamparelli, R. 2014. "
             "A SICK cure for the evaluation of compositional distributional semantic models. LREC 2014.",
    processing="The original release (9,840 pairs), not the repository's re-annotations: id = pair_ID, "
               "text_a/text_b = sentence_A/B unchanged, label 0 entailment / 1 neutral / 2 contradiction, "
               "domain flickr / semeval from sentence_A/B_dataset (mixed when they differ), "
               "relatedness_score. Split: SemEval_set TRAIN -> train, TRIAL -> validation, TEST -> test.",
)

SOURCES: dict[str, PinnedSource] = {source.folder: source for source in (AMAZON, SICK)}  # by task folder


def fetchable(name: str) -> bool:
    """Whether task ``name`` can be downloaded by :func:`fetch_task`."""
    return get_task(name).folder in SOURCES


# --------------------------------------------------------------------------- Amazon reviews

_TAG = re.compile(r"<([A-Za-z_]+)>")


def decode_review_file(data: bytes) -> str:
    """The text of a ``.review`` file: UTF-8, a byte that is not UTF-8 becomes U+FFFD (the
    files hold a few Latin-1 bytes, e.g. in reviewer names), line ends normalised to ``\\n``."""
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def parse_reviews(text: str, where: str = "review file") -> list[dict[str, str]]:
    """The ``<review>`` records of a Blitzer et al. pseudo-XML file, in file order.

    Each record maps a field name (``unique_id``, ``asin``, ``product_name``, ``rating``,
    ``title``, ``review_text``, ...) to its raw value: the lines between ``<field>`` and
    ``</field>`` joined with ``\\n``, neither unescaped nor stripped. A field is closed only by
    its own closing tag, so a review whose text holds ``<br />`` or ``<<<`` stays whole. Wrapper
    lines that some copies add around the records (``<data>``, ``<reviews>`` and their closing
    tags) are skipped. A repeated field keeps its first value, except ``unique_id``: the
    dataset's README says "If it has two unique id fields, ignore the one containing only a
    number", so the non-numeric one is kept (the book's ids do not use it: they are
    ``<domain>-<polarity>-<index in file>``).

    Raises:
        DataError: text outside a record that is not a wrapper tag, or an unterminated record.
    """
    records: list[dict[str, str]] = []
    record: Optional[dict[str, str]] = None
    field_name: Optional[str] = None
    lines: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        token = line.strip()
        if field_name is not None:  # inside a field: only its own closing tag ends it
            if token == f"</{field_name}>":
                assert record is not None
                value = "\n".join(lines)
                old = record.get(field_name)
                if old is None or (field_name == "unique_id" and old.strip().isdigit()
                                   and not value.strip().isdigit()):
                    record[field_name] = value
                field_name, lines = None, []
            else:
                lines.append(line)
        elif record is not None:  # inside a record, between fields
            if token == "</review>":
                records.append(record)
                record = None
            elif (match := _TAG.fullmatch(token)) is not None:
                field_name = match.group(1)
            elif token:
                raise DataError(f"{where}, line {number}: text outside a field of a <review> record "
                                f"({token[:40]!r}); is this a Blitzer et al. .review file?")
        elif token == "<review>":
            record = {}
        elif token and not re.fullmatch(r"</?[A-Za-z_]+>", token):  # <data>, <reviews>, ...: wrappers
            raise DataError(f"{where}, line {number}: text outside any <review> record ({token[:40]!r}); "
                            f"is this a Blitzer et al. .review file?")
    if record is not None:
        raise DataError(f"{where}: the last <review> record is not closed"
                        + (f" (field <{field_name}> still open)" if field_name else "") + "; the file is truncated.")
    return records


def _clean(value: str) -> str:
    """HTML entities unescaped, then surrounding whitespace stripped (internal line breaks kept)."""
    return html.unescape(value).strip()


def amazon_rows(text: str, domain: str, polarity: str, where: str = "review file") -> list[dict[str, Any]]:
    """Rows of the book's schema from one ``<domain>/<polarity>.review`` file (decoded text).

    Keys, in the staged files' order: ``id`` (``<domain>-<polarity>-<index in file>``, the index
    zero-padded to 4 digits), ``text_a`` (review_text), ``label`` (0 negative, 1 positive),
    ``label_name``, ``domain``, ``title``, ``rating`` (stars, float), ``asin``. ``domain`` is the
    book's name (``kitchen``, not ``kitchen_&_housewares``).

    Raises:
        DataError: an unknown polarity, a record without review_text or rating, or a rating that
            contradicts the polarity (positive reviews have 4-5 stars, negative ones 1-2).
    """
    if polarity not in AMAZON_POLARITIES:
        raise DataError(f"Polarity {polarity!r} is not one of {', '.join(AMAZON_POLARITIES)}.")
    domain = AMAZON_DOMAINS.get(domain, domain)
    rows = []
    for index, record in enumerate(parse_reviews(text, where)):
        for key in ("review_text", "rating"):
            if key not in record:
                raise DataError(f"{where}, review {index}: no <{key}> field; is this a Blitzer et al. .review file?")
        try:
            rating = float(record["rating"].strip())
        except ValueError:
            raise DataError(f"{where}, review {index}: rating {record['rating'].strip()!r} is not a number.") from None
        if rating not in AMAZON_RATINGS[polarity]:
            raise DataError(f"{where}, review {index}: a {polarity} review rated {rating}; expected "
                            f"{' or '.join(str(r) for r in AMAZON_RATINGS[polarity])} stars.")
        rows.append({"id": f"{domain}-{polarity}-{index:04d}", "text_a": _clean(record["review_text"]),
                     "label": AMAZON_POLARITIES.index(polarity), "label_name": polarity, "domain": domain,
                     "title": _clean(record.get("title", "")), "rating": rating,
                     "asin": _clean(record.get("asin", ""))})
    return rows


def _largest_remainder(n: int, shares: Sequence[float]) -> list[int]:
    """``n`` items allocated to ``shares`` (summing to 1) with largest-remainder rounding."""
    exact = [n * share for share in shares]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:n - sum(counts)]:
        counts[i] += 1
    return counts


BLITZER_TAG = "tlbook-2024:blitzer"
BLITZER_SHARES = {"test": 0.2, "validation": 0.1, "train": 0.7}  # in rank order: 200 / 100 / 700 of 1,000


def blitzer_split(ids: Sequence[str], tag: str = BLITZER_TAG) -> dict[str, str]:
    """The split of every Amazon review id (``<domain>-<polarity>-<index>``).

    Within each (domain, polarity) group, ids are ranked by ``sha256("<tag>:<id>")`` (hex,
    ascending); the first 20 % are ``test``, the next 10 % ``validation``, the rest ``train``
    (largest-remainder rounding; with 1,000 reviews: ranks 1-200, 201-300, 301-1000).
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for id_ in ids:
        group, _, index = id_.rpartition("-")
        if not group or not index.isdigit():
            raise DataError(f"Amazon id {id_!r} is not <domain>-<polarity>-<index>.")
        groups[group].append(id_)
    out = {}
    for members in groups.values():
        ranked = sorted(members, key=lambda i: hashlib.sha256(f"{tag}:{i}".encode()).hexdigest())
        start = 0
        for split, count in zip(BLITZER_SHARES, _largest_remainder(len(ranked), list(BLITZER_SHARES.values()))):
            out.update(dict.fromkeys(ranked[start:start + count], split))
            start += count
    return out


def _convert_amazon(files: dict[str, bytes]) -> dict[str, list[dict[str, Any]]]:
    """The eight verified ``.review`` files (by repository path) -> rows by split."""
    rows = []
    for path, data in files.items():
        folder, polarity = path.split("/")[-2], path.rsplit("/", 1)[-1].removesuffix(".review")
        got = amazon_rows(decode_review_file(data), folder, polarity, where=path)
        if len(got) != AMAZON_RECORDS:
            raise DataError(f"{path}: {len(got)} <review> records, expected {AMAZON_RECORDS}; the parser "
                            f"does not match this file.")
        rows += got
    split_of = blitzer_split([row["id"] for row in rows])
    return _by_split(rows, lambda row: split_of[row["id"]], key=lambda row: row["id"])


# --------------------------------------------------------------------------- SICK


def sick_rows(text: str, where: str = "SICK.txt") -> dict[str, list[dict[str, Any]]]:
    """Rows of the book's schema by split from ``SICK.txt`` (12 tab-separated columns, header first).

    Keys, in the staged files' order: ``id`` (pair_ID), ``text_a``/``text_b`` (sentence_A/B,
    unchanged: no stripping), ``label`` (0 entailment, 1 neutral, 2 contradiction),
    ``label_name``, ``domain`` (``flickr`` or ``semeval`` from sentence_A/B_dataset, ``mixed``
    when the two differ), ``relatedness_score`` (float). The split follows SemEval_set
    (:data:`SICK_SPLITS`). Rows of each split are sorted by pair_ID.

    Raises:
        DataError: another header, a line without 12 columns, an unknown label, dataset or set.
    """
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if not lines or tuple(lines[0].split("\t")) != SICK_COLUMNS:
        raise DataError(f"{where}, line 1: the header is not {chr(9).join(SICK_COLUMNS)!r}; is this the "
                        f"original SICK.txt?")
    out: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(SICK_COLUMNS):
            raise DataError(f"{where}, line {number}: {len(cells)} tab-separated columns, expected {len(SICK_COLUMNS)}.")
        col = dict(zip(SICK_COLUMNS, cells))
        checks = (("entailment_label", SICK_LABELS), ("sentence_A_dataset", SICK_DOMAINS),
                  ("sentence_B_dataset", SICK_DOMAINS), ("SemEval_set", SICK_SPLITS))
        for name, allowed in checks:
            if col[name] not in allowed:
                raise DataError(f"{where}, line {number}: {name} {col[name]!r} is not one of {', '.join(allowed)}.")
        try:
            score = float(col["relatedness_score"])
        except ValueError:
            raise DataError(f"{where}, line {number}: relatedness_score {col['relatedness_score']!r} "
                            f"is not a number.") from None
        a, b = SICK_DOMAINS[col["sentence_A_dataset"]], SICK_DOMAINS[col["sentence_B_dataset"]]
        label = SICK_LABELS.index(col["entailment_label"])
        out[SICK_SPLITS[col["SemEval_set"]]].append(
            {"id": col["pair_ID"], "text_a": col["sentence_A"], "text_b": col["sentence_B"], "label": label,
             "label_name": SICK_LABELS[label].lower(), "domain": a if a == b else "mixed",
             "relatedness_score": score})
    for rows in out.values():
        rows.sort(key=lambda row: int(row["id"]) if row["id"].isdigit() else row["id"])
    return out


def _convert_sick(files: dict[str, bytes]) -> dict[str, list[dict[str, Any]]]:
    """The verified ``SICK.txt`` -> rows by split."""
    (path, data), = files.items()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 at byte {err.start}; is this the original SICK.txt?") from None
    return sick_rows(text, where=path)


def _by_split(rows: list[dict[str, Any]], split_of: Callable[[dict], str], key: Callable[[dict], Any]
              ) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for row in sorted(rows, key=key):
        out[split_of(row)].append(row)
    return out


CONVERTERS: dict[str, Callable[[dict[str, bytes]], dict[str, list[dict[str, Any]]]]] = {
    "amazon_multidomain": _convert_amazon, "sick": _convert_sick}


# --------------------------------------------------------------------------- writing


def jsonl_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    """A split file in the staged format: one ``json.dumps(row, ensure_ascii=False)`` per line,
    UTF-8, ``\\n`` after every row."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _download(url: str, opener: Opener, folder: str) -> bytes:
    try:
        with opener(url, timeout=TIMEOUT_S) as response:
            return response.read()
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError, HTTPError, timeouts
        raise DataNotFoundError(
            f"Could not download {url} ({type(err).__name__}: {err}); check the connection and retry, or set "
            f"{DATA_ENV} to a folder holding {folder}/<split>.jsonl.") from err


def _source_note(source: PinnedSource, licence: str, counts: dict[str, int]) -> str:
    files = "\n".join(f"  | `{f.path}` | `{f.blob}` |" for f in source.files)
    return (f"# {source.folder}: downloaded by tlutils.fetch\n\n"
            f"Downloaded on {datetime.date.today().isoformat()} from the pinned origin below, each file checked "
            f"against its git blob SHA-1, converted and split by `tlutils.fetch` (the same rules as the book's "
            f"staged copy).\n\n"
            f"## Origin\n- Repository: `{source.repo}`, commit `{source.commit}`\n"
            f"  | file | git blob |\n  |---|---|\n{files}\n\n"
            f"## Citation\n{source.citation}\n\n"
            f"## Licence\n{licence}. These files are for your own use on this machine: do not redistribute them.\n\n"
            f"## Processing\n{source.processing}\n\n"
            f"## Counts\n" + "\n".join(f"- {split}: {n:,}" for split, n in counts.items()) + "\n")


def fetch_task(name: str, folder: os.PathLike | str, *, opener: Opener = urllib.request.urlopen) -> Path:
    """Download task ``name``'s pinned raw files, verify, convert, split and write them.

    Writes ``<folder>/<task folder>/{train,validation,test}.jsonl`` in the staged format
    (:func:`jsonl_bytes`; the same bytes as the staged copy when the source is the same) and a
    ``SOURCE.md`` note (origin, blobs, licence, processing, counts). ``train.jsonl`` is written
    last, each file atomically, so a folder with ``train.jsonl`` is complete. Nothing is written
    before every file has been downloaded and verified.

    Args:
        name: a task with a pinned source (``amazon``; ``sick`` or ``sick_relatedness``, one folder).
        folder: the data folder (what ``TLUTILS_DATA_DIR`` points at); created if needed.
        opener: ``urllib.request.urlopen`` or anything with its signature (tests pass a fake one).

    Returns:
        the task folder written.

    Raises:
        DataError: a file whose git blob differs from the pinned one (naming the file and the
            expected hash), or a raw file the converter cannot read.
        DataNotFoundError: a download that failed (offline, HTTP error).
        ConfigError: an unknown task.
    """
    task = get_task(name)
    source = SOURCES.get(task.folder)
    if source is None:
        raise DataError(f"Task {name!r} has no download source (fetchable: "
                        f"{', '.join(n for n, t in TASKS.items() if t.folder in SOURCES)}); "
                        + ("it loads from the Hugging Face hub." if task.hub is not None
                           else f"set {DATA_ENV} to a folder holding {task.folder}/<split>.jsonl."))
    raw: dict[str, bytes] = {}
    for file in source.files:
        data = _download(source.url(file), opener, task.folder)
        got = git_blob_sha1(data)
        if got != file.blob:
            raise DataError(f"{source.repo}/{file.path} at {source.commit[:12]}: git blob {got}, expected "
                            f"{file.blob}; the download is truncated or altered: retry, or report it if it persists.")
        raw[file.path] = data
    splits = CONVERTERS[source.folder](raw)
    out = Path(folder).expanduser() / task.folder
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"Cannot create {out} ({type(err).__name__}: {err}); fetch into a writable folder "
                        f"(python -m tlutils data --fetch {name} --to DIR).") from err
    counts = {split: len(rows) for split, rows in splits.items()}
    _write_atomic(out / "SOURCE.md", _source_note(source, task.licence, counts).encode("utf-8"))
    for split in sorted(splits, key=lambda s: s == "train"):  # train last: its presence means complete
        _write_atomic(out / f"{split}.jsonl", jsonl_bytes(splits[split]))
    return out


# --------------------------------------------------------------------------- the chapters' entry point


def licence_line(name: str) -> str:
    """``licence: <TaskSpec.licence>`` with the reminder that fetched data stay on this machine."""
    licence = get_task(name).licence
    return f"licence: {licence}" + ("" if "redistribute" in licence else " (for your own use: do not redistribute)")


def cache_data_dir() -> Path:
    """Where :func:`ensure_local_data` puts fetched data: ``$TLUTILS_CACHE/data``, else
    ``~/.cache/tlutils/data``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "tlutils") / "data"


def ensure_local_data(tasks: Sequence[str], *, opener: Opener = urllib.request.urlopen,
                      log: Optional[Callable[[str], None]] = print) -> Optional[Path]:
    """Make sure every task of ``tasks`` can be loaded, downloading the ones that need it.

    A task is fetched only when it has neither a local folder (``$TLUTILS_DATA_DIR/<folder>/
    train.jsonl``) nor a hub source, and :func:`fetch_task` knows its origin. The data go to
    ``$TLUTILS_DATA_DIR`` when it is set, else to :func:`cache_data_dir`, and then
    ``TLUTILS_DATA_DIR`` is set for this process (tasks with a hub source still load from the
    hub: a data folder without their folder falls back to it). One line per fetched folder says
    what was done and the data's licence. Nothing is done, and nothing printed, when every task
    is already local or on the hub (CI, the project's machines); a folder already fetched into
    the cache is reused without a download.

    Returns:
        the data folder used when something had to be provided, else None.
    """
    wanted: dict[str, str] = {}  # folder -> first task name asking for it
    for name in tasks:
        task = get_task(name)
        local = local_split_path(task, "train")
        if (local is not None and local.is_file()) or task.hub is not None or task.folder not in SOURCES:
            continue  # local, on the hub, or not ours to fetch (load_task's error says what to set)
        wanted.setdefault(task.folder, name)
    if not wanted:
        return None
    target = Path(os.environ[DATA_ENV]).expanduser() if os.environ.get(DATA_ENV) else cache_data_dir()
    for folder, name in wanted.items():
        task = get_task(name)
        if (target / folder / "train.jsonl").is_file():
            note = f"{task.folder} found in {target}"
        else:
            fetch_task(name, target, opener=opener)
            source = SOURCES[folder]
            note = f"{task.folder} downloaded from github.com/{source.repo} (commit {source.commit[:7]}) to {target / folder}"
        if log is not None:
            log(f"tlutils: {note}; {licence_line(name)}.")
    if not os.environ.get(DATA_ENV):  # unset (or empty): point this process at the folder just filled
        os.environ[DATA_ENV] = str(target)
    return target
