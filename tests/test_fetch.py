"""Downloading the tasks the hub lacks (``tlutils.fetch``), without the network.

The raw files cannot be downloaded here, so the tests rebuild raw-format files from the staged
rows (``$TLUTILS_DATA_DIR``: every field the converters read), serve them through a fake
``urlopen`` and check that ``fetch_task`` writes byte for byte the staged files listed in
``MANIFEST.sha256``. The quirks of the real files (wrapper lines, entities, a second numeric
``<unique_id>``, markup inside a review, CRLF, Latin-1 bytes) have small hand fixtures. What
stays untested: the real download and the real files' git blobs (pinned from SOURCE.md).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import html
import io
import json
import os
import re
import subprocess
import urllib.error
from collections import Counter
from pathlib import Path

import pytest

from tlutils import fetch
from tlutils.data import SPLITS, get_task, load_split
from tlutils.errors import DataError, DataNotFoundError
from tlutils.fetch import (AMAZON, AMAZON_DOMAINS, SICK, SICK_COLUMNS, SOURCES, PinnedFile, amazon_rows,
                           blitzer_split, decode_review_file, ensure_local_data, fetch_task, git_blob_sha1,
                           jsonl_bytes, parse_reviews, raw_url, sick_rows)

# --------------------------------------------------------------------------- helpers: staged rows -> raw files


def staged(data_dir: Path, folder: str) -> dict[str, list[dict]]:
    out = {}
    for split in SPLITS:
        path = data_dir / folder / f"{split}.jsonl"
        out[split] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return out


def manifest(data_dir: Path) -> dict[str, str]:
    lines = (data_dir / "MANIFEST.sha256").read_text().splitlines()
    return {path.removeprefix("./"): digest for digest, path in (line.split(maxsplit=1) for line in lines)}


def rebuild_review_files(rows: list[dict]) -> dict[str, bytes]:
    """The eight ``sorted_data_acl/<domain>/<polarity>.review`` files that hold these rows: each
    review at its index, text and title HTML-escaped (the converter unescapes), wrappers as in
    the real copies (``<data>`` in books/positive, ``<reviews>`` elsewhere), every 97th record
    with a second, numeric ``<unique_id>`` first and a repeated ``<product_type>``."""
    folder_of = {book: folder for folder, book in AMAZON_DOMAINS.items()}
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for row in rows:
        domain, polarity, index = row["id"].rsplit("-", 2)
        groups.setdefault((folder_of[domain], polarity), {})[int(index)] = row
    files = {}
    for (folder, polarity), by_index in groups.items():
        wrapper = "data" if (folder, polarity) == ("books", "positive") else "reviews"
        lines = [f"<{wrapper}>"]
        for index in range(len(by_index)):
            row = by_index[index]
            lines += ["<review>"]
            if index % 97 == 0:
                lines += ["<unique_id>", str(index + 1), "</unique_id>"]
            lines += ["<unique_id>", f"{row['asin']}:{row['id']}:reviewer", "</unique_id>",
                      "<asin>", row["asin"], "</asin>",
                      "<product_name>", "A product: Kitchen & Housewares", "</product_name>",
                      "<product_type>", folder, "</product_type>"]
            if index % 97 == 0:
                lines += ["<product_type>", folder, "</product_type>"]
            lines += ["<helpful>", "", "</helpful>", "<rating>", str(row["rating"]), "</rating>",
                      "<title>", html.escape(row["title"], quote=False), "</title>",
                      "<review_text>", html.escape(row["text_a"], quote=False), "</review_text>", "</review>"]
        lines.append(f"</{wrapper}>")
        files[f"sorted_data_acl/{folder}/{polarity}.review"] = ("\n".join(lines) + "\n").encode("utf-8")
    return files


def rebuild_sick_txt(splits: dict[str, list[dict]]) -> bytes:
    """A ``SICK.txt`` with these rows (pair_ID order, SemEval_set from the split, the dataset
    columns from the domain; the columns the converter ignores get placeholders)."""
    sets = {"train": "TRAIN", "validation": "TRIAL", "test": "TEST"}
    datasets = {"flickr": ("FLICKR", "FLICKR"), "semeval": ("SEMEVAL", "SEMEVAL"), "mixed": ("SEMEVAL", "FLICKR")}
    rows = sorted(((split, row) for split, rs in splits.items() for row in rs), key=lambda x: int(x[1]["id"]))
    lines = ["\t".join(SICK_COLUMNS)]
    for split, row in rows:
        lines.append("\t".join([row["id"], row["text_a"], row["text_b"], row["label_name"].upper(),
                                f"{row['relatedness_score']:g}", "A_x_B", "B_x_A", "original a", "original b",
                                *datasets[row["domain"]], sets[split]]))
    return "\n".join(lines).encode("utf-8")  # the real file ends without a newline, too


class FakeWeb:
    """``urlopen`` serving fixed bytes by URL (HTTP 404 for any other); records the calls."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.calls = files, []

    def __call__(self, url: str, timeout: float | None = None) -> io.BytesIO:
        self.calls.append(url)
        if url not in self.files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return io.BytesIO(self.files[url])


def serve(monkeypatch, source, raw: dict[str, bytes]) -> FakeWeb:
    """Pin ``source`` to the rebuilt files' own blobs (they are not the real files) and serve them."""
    pinned = dataclasses.replace(source, files=tuple(PinnedFile(p, git_blob_sha1(b)) for p, b in raw.items()))
    monkeypatch.setitem(SOURCES, source.folder, pinned)
    return FakeWeb({pinned.url(PinnedFile(p, "")): b for p, b in raw.items()})


@pytest.fixture(scope="module")
def amazon_staged(data_dir):
    return staged(data_dir, "amazon_multidomain")


@pytest.fixture(scope="module")
def sick_staged(data_dir):
    return staged(data_dir, "sick")


# --------------------------------------------------------------------------- pinned sources


def test_git_blob_sha1_is_what_git_hash_object_prints(tmp_path):
    for data in (b"", b"hello\n", "caf\u00e9 <review>\r\n".encode() * 100):
        path = tmp_path / "f"
        path.write_bytes(data)
        expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                                  check=True).stdout.strip()
        assert git_blob_sha1(data) == expected


def test_raw_url_pins_the_commit_and_quotes_the_path():
    url = AMAZON.url(AMAZON.files[-1])
    assert url == ("https://raw.githubusercontent.com/lorenzoritter/domainadaption/"
                   "f35a75418ea0ecf75dd85237bfcf68c224533747/sorted_data_acl/kitchen_%26_housewares/negative.review")
    assert raw_url(SICK.repo, SICK.commit, "SICK.txt").endswith("/0848f4aec60870122a4ca18de08ba0e25f6f9a75/SICK.txt")
    with pytest.raises(DataError, match="full 40-hex commit"):
        raw_url(SICK.repo, "main", "SICK.txt")


@pytest.mark.parametrize("source", [AMAZON, SICK], ids=lambda s: s.folder)
def test_the_registry_is_the_staged_source_note(data_dir, source):
    note = (data_dir / source.folder / "SOURCE.md").read_text(encoding="utf-8")
    assert f"`{source.repo}`, commit `{source.commit}`" in note
    pinned = dict(re.findall(r"`([\w&./_-]+)`[ |(]+git blob `([0-9a-f]{40})`", note)
                  + re.findall(r"\| `([^`]+)` \| `([0-9a-f]{40})` \|", note))
    assert pinned == {f.path: f.blob for f in source.files}
    assert len(source.files) == (8 if source is AMAZON else 1)


# --------------------------------------------------------------------------- split rules


def test_blitzer_split_reproduces_every_staged_amazon_row(amazon_staged):
    split_of = {row["id"]: split for split, rows in amazon_staged.items() for row in rows}
    assert len(split_of) == 8000  # the staged folder holds every review: the groups are complete
    groups = Counter(i.rsplit("-", 1)[0] for i in split_of)
    assert sorted(groups.values()) == [1000] * 8
    assert blitzer_split(list(split_of)) == split_of
    per_group = Counter((i.rsplit("-", 1)[0], s) for i, s in blitzer_split(list(split_of)).items())
    assert {n for (_, s), n in per_group.items() if s == "test"} == {200}
    assert {n for (_, s), n in per_group.items() if s == "validation"} == {100}


def test_blitzer_split_depends_on_the_tag_and_rounds_small_groups():
    ids = [f"dvd-positive-{i:04d}" for i in range(11)]
    split = blitzer_split(ids)
    assert Counter(split.values()) == {"test": 2, "validation": 1, "train": 8}  # 2.2 / 1.1 / 7.7
    assert blitzer_split(ids, tag="other") != split
    with pytest.raises(DataError, match="<domain>-<polarity>-<index>"):
        blitzer_split(["books-positive"])


# --------------------------------------------------------------------------- converters on real data


def test_amazon_converter_inverts_the_staged_rows(amazon_staged, data_dir):
    raw = rebuild_review_files([row for rows in amazon_staged.values() for row in rows])
    assert len(raw) == 8 and b"<data>\n" in raw["sorted_data_acl/books/positive.review"]
    splits = fetch._convert_amazon(raw)
    assert splits == amazon_staged  # values, key order and row order
    sums = manifest(data_dir)
    for split, rows in splits.items():
        assert [list(r) for r in rows[:1]] == [["id", "text_a", "label", "label_name", "domain", "title",
                                                 "rating", "asin"]]
        assert hashlib.sha256(jsonl_bytes(rows)).hexdigest() == sums[f"amazon_multidomain/{split}.jsonl"]


def test_sick_converter_inverts_the_staged_rows(sick_staged, data_dir):
    splits = fetch._convert_sick({"SICK.txt": rebuild_sick_txt(sick_staged)})
    assert splits == sick_staged
    sums = manifest(data_dir)
    for split, rows in splits.items():
        assert hashlib.sha256(jsonl_bytes(rows)).hexdigest() == sums[f"sick/{split}.jsonl"]
    assert Counter(r["domain"] for rows in splits.values() for r in rows)["mixed"] == 123


# --------------------------------------------------------------------------- hand fixtures: the quirks

REVIEWS = """<reviews>
<review>
<unique_id>
17
</unique_id>
<unique_id>
B000X:great_&#45;_fun:someone
</unique_id>
<asin>
B000X
</asin>
<rating>
5.0
</rating>
<title>
 Great &amp; fun &quot;toy&quot;
</title>
<review_text>

It's &quot;great&quot;&#45;really.
<br />
<<<not a tag>>>
</review_text>
</review>
<review>
<unique_id>
B000Y:meh:other
</unique_id>
<unique_id>
4
</unique_id>
<asin>
B000Y
</asin>
<rating>
4.0
</rating>
<title>
Caf\xe9
</title>
<review_text>
Double-escaped: &amp;quot; stays &quot;.\x20\x20
</review_text>
</review>
</reviews>
"""


def test_review_parser_quirks():
    records = parse_reviews(REVIEWS)
    assert len(records) == 2  # the <reviews> wrapper is not a record
    assert [r["unique_id"].strip() for r in records] == ["B000X:great_&#45;_fun:someone", "B000Y:meh:other"]
    assert records[0]["review_text"] == "\nIt's &quot;great&quot;&#45;really.\n<br />\n<<<not a tag>>>"  # raw
    rows = amazon_rows(REVIEWS, "kitchen_&_housewares", "positive")
    assert [list(r) for r in rows][0] == ["id", "text_a", "label", "label_name", "domain", "title", "rating", "asin"]
    assert [r["id"] for r in rows] == ["kitchen-positive-0000", "kitchen-positive-0001"]  # index in file, not unique_id
    assert rows[0]["title"] == 'Great & fun "toy"' and rows[0]["rating"] == 5.0 and rows[0]["asin"] == "B000X"
    assert rows[0]["text_a"] == "It's \"great\"-really.\n<br />\n<<<not a tag>>>"  # markup lines stay text
    assert rows[1]["text_a"] == "Double-escaped: &quot; stays \"."  # unescaped once, then stripped
    assert {r["label"] for r in rows} == {1} and {r["domain"] for r in rows} == {"kitchen"}


def test_review_text_holding_a_closing_tag_of_another_field_stays_whole():
    text = "<review>\n<rating>\n1.0\n</rating>\n<review_text>\nline one\n</title>\n</review>\nline two\n</review_text>\n</review>\n"
    (row,) = amazon_rows(text, "dvd", "negative")
    assert row["text_a"] == "line one\n</title>\n</review>\nline two" and row["title"] == ""


def test_review_file_bytes_crlf_and_latin1():
    data = REVIEWS.replace("Caf\xe9", "Caf\x00").encode("utf-8").replace(b"Caf\x00", b"Caf\xe9").replace(b"\n", b"\r\n")
    rows = amazon_rows(decode_review_file(data), "books", "positive")
    assert rows[1]["title"] == "Caf\ufffd"  # a Latin-1 byte in a UTF-8 file: U+FFFD, as in the staged rows
    assert "\r" not in rows[0]["text_a"] and rows == amazon_rows(REVIEWS.replace("Caf\xe9", "Caf\ufffd"), "books", "positive")


def test_review_parser_errors_are_one_line():
    with pytest.raises(DataError, match="not closed") as info:
        parse_reviews("<review>\n<title>\nx\n", where="books/positive.review")
    assert "books/positive.review" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="line 1: text outside any <review>"):
        parse_reviews("hello\n<review>\n</review>\n")
    with pytest.raises(DataError, match="a negative review rated 5.0"):
        amazon_rows("<review>\n<rating>\n5.0\n</rating>\n<review_text>\nok\n</review_text>\n</review>\n", "dvd", "negative")
    with pytest.raises(DataError, match="no <review_text> field"):
        amazon_rows("<review>\n<rating>\n5.0\n</rating>\n</review>\n", "dvd", "positive")


SICK_TXT = "\t".join(SICK_COLUMNS) + "\r\n" + "\r\n".join([
    "10\tA dog runs \tA dog is running\tENTAILMENT\t4.5\tA_entails_B\tB_entails_A\to\to\tFLICKR\tFLICKR\tTRAIN",
    "2\tA man sings\tNobody sings\tCONTRADICTION\t3\tA_contradicts_B\tB_contradicts_A\to\to\tSEMEVAL\tFLICKR\tTEST",
    "3\tA cat\tA car\tNEUTRAL\t1.25\tA_neutral_B\tB_neutral_A\to\to\tSEMEVAL\tSEMEVAL\tTRIAL",
    "1\tA cow\tA bull\tNEUTRAL\t2\tA_neutral_B\tB_neutral_A\to\to\tFLICKR\tFLICKR\tTRAIN",
]) + "\r\n"


def test_sick_converter_columns_domains_and_splits():
    splits = sick_rows(SICK_TXT)
    assert [r["id"] for r in splits["train"]] == ["1", "10"]  # sorted by pair_ID
    first = splits["train"][1]
    assert first == {"id": "10", "text_a": "A dog runs ", "text_b": "A dog is running", "label": 0,
                     "label_name": "entailment", "domain": "flickr", "relatedness_score": 4.5}  # text unchanged
    assert splits["test"][0]["domain"] == "mixed" and splits["test"][0]["label"] == 2
    assert splits["validation"][0]["domain"] == "semeval" and splits["validation"][0]["relatedness_score"] == 1.25


def test_sick_converter_errors_are_one_line():
    with pytest.raises(DataError, match="line 1: the header"):
        sick_rows("id\ta\tb\n")
    with pytest.raises(DataError, match="line 2: 3 tab-separated columns"):
        sick_rows("\t".join(SICK_COLUMNS) + "\n1\ta\tb\n")
    with pytest.raises(DataError, match="SemEval_set 'DEV'"):
        sick_rows(SICK_TXT.replace("TRIAL", "DEV"))


# --------------------------------------------------------------------------- fetch_task with a fake web


def test_fetch_task_writes_the_staged_bytes(monkeypatch, tmp_path, data_dir, amazon_staged, sick_staged):
    sums = manifest(data_dir)
    amazon_web = serve(monkeypatch, AMAZON, rebuild_review_files([r for rows in amazon_staged.values() for r in rows]))
    sick_web = serve(monkeypatch, SICK, {"SICK.txt": rebuild_sick_txt(sick_staged)})
    for name, web, folder in (("amazon", amazon_web, "amazon_multidomain"), ("sick_relatedness", sick_web, "sick")):
        out = fetch_task(name, tmp_path / "data", opener=web)
        assert out == tmp_path / "data" / folder and len(web.calls) == len(SOURCES[folder].files)
        for split in SPLITS:
            got = hashlib.sha256((out / f"{split}.jsonl").read_bytes()).hexdigest()
            assert got == sums[f"{folder}/{split}.jsonl"], f"{folder}/{split}.jsonl differs from the staged file"
        note = (out / "SOURCE.md").read_text()
        assert get_task(name).licence in note and SOURCES[folder].commit in note and "do not redistribute" in note
        assert sorted(p.name for p in out.iterdir()) == ["SOURCE.md", "test.jsonl", "train.jsonl", "validation.jsonl"]


def test_a_file_with_another_blob_is_refused_and_nothing_is_written(tmp_path):
    url = SICK.url(SICK.files[0])
    with pytest.raises(DataError) as info:
        fetch_task("sick", tmp_path, opener=FakeWeb({url: b"pair_ID\tsentence_A\n"}))
    message = str(info.value)
    assert "\n" not in message and "SICK.txt" in message and SICK.files[0].blob in message
    assert not (tmp_path / "sick").exists()


def test_a_failed_download_names_the_url_and_the_variable(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        fetch_task("amazon", tmp_path, opener=FakeWeb({}))
    message = str(info.value)
    assert "\n" not in message and "HTTPError" in message and "TLUTILS_DATA_DIR" in message
    assert AMAZON.url(AMAZON.files[0]) in message


def test_a_task_without_a_pinned_source_cannot_be_fetched(tmp_path):
    with pytest.raises(DataError, match="no download source.*hub"):
        fetch_task("mrpc", tmp_path, opener=FakeWeb({}))


# --------------------------------------------------------------------------- ensure_local_data


def test_ensure_local_data_does_nothing_where_the_data_are_local(data_dir, monkeypatch):
    monkeypatch.setenv("TLUTILS_DATA_DIR", str(data_dir))
    lines = []
    assert ensure_local_data(["amazon", "sick", "mrpc"], opener=FakeWeb({}), log=lines.append) is None
    assert lines == []


def test_ensure_local_data_on_colab_fetches_once_and_the_hub_tasks_still_load(monkeypatch, tmp_path, sick_staged):
    monkeypatch.delenv("TLUTILS_DATA_DIR", raising=False)
    monkeypatch.setenv("TLUTILS_CACHE", str(tmp_path / "cache"))
    web = serve(monkeypatch, SICK, {"SICK.txt": rebuild_sick_txt(sick_staged)})
    lines = []
    assert ensure_local_data(["mrpc"], opener=web, log=lines.append) is None  # a hub task: nothing to do
    target = ensure_local_data(["mrpc", "sick", "sick_relatedness"], opener=web, log=lines.append)
    assert target == tmp_path / "cache" / "data" and len(web.calls) == 1  # one folder for both sick tasks
    assert (target / "sick" / "train.jsonl").is_file()
    assert os.environ["TLUTILS_DATA_DIR"] == str(target)
    (line,) = lines
    assert "sick" in line and "CC BY-NC-SA 3.0" in line and "do not redistribute" in line and "\n" not in line
    assert len(load_split(get_task("sick"), "validation")) == 495
    # the folder holds only sick: mrpc still comes from the hub (mocked here)
    monkeypatch.setattr("tlutils.data._load_hub_split", lambda task, split: [{"id": "1", "text_a": "a", "text_b": "b",
                                                                               "label": 1, "label_name": "equivalent",
                                                                               "domain": ""}])
    assert load_split(get_task("mrpc"), "train")[0]["id"] == "1"
    assert ensure_local_data(["sick"], opener=web, log=lines.append) is None and len(web.calls) == 1


def test_ensure_local_data_reuses_the_cache_without_downloading(monkeypatch, tmp_path, sick_staged):
    monkeypatch.delenv("TLUTILS_DATA_DIR", raising=False)
    monkeypatch.setenv("TLUTILS_CACHE", str(tmp_path))
    web = serve(monkeypatch, SICK, {"SICK.txt": rebuild_sick_txt(sick_staged)})
    fetch_task("sick", tmp_path / "data", opener=web)
    lines = []
    assert ensure_local_data(["sick"], opener=FakeWeb({}), log=lines.append) == tmp_path / "data"
    assert len(lines) == 1 and "found in" in lines[0] and "CC BY-NC-SA" in lines[0]


def test_the_licence_line_says_it_once():
    assert fetch.licence_line("amazon").count("redistribute") == 1
    assert fetch.licence_line("sick").endswith("(for your own use: do not redistribute)")


def test_ensure_local_data_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("TLUTILS_DATA_DIR", raising=False)
    monkeypatch.setenv("TLUTILS_CACHE", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="Could not download .*TLUTILS_DATA_DIR"):
        ensure_local_data(["amazon"], opener=FakeWeb({}), log=None)
    assert "TLUTILS_DATA_DIR" not in os.environ


# --------------------------------------------------------------------------- the command line


def test_cli_fetch_prints_the_variable_to_set(monkeypatch, tmp_path, capsys, sick_staged):
    from tlutils.cli import main

    web = serve(monkeypatch, SICK, {"SICK.txt": rebuild_sick_txt(sick_staged)})
    monkeypatch.setattr(fetch, "fetch_task", functools.partial(fetch.fetch_task, opener=web))
    main(["data", "--fetch", "sick", "sick_relatedness", "--to", str(tmp_path / "d")])
    out, err = capsys.readouterr()
    assert json.loads(out)["set"] == f"TLUTILS_DATA_DIR={tmp_path / 'd'}"
    assert f"export TLUTILS_DATA_DIR={tmp_path / 'd'}" in err and "CC BY-NC-SA 3.0" in err
    assert len(web.calls) == 1 and (tmp_path / "d" / "sick" / "test.jsonl").is_file()


@pytest.mark.parametrize("argv, message", [
    (["data", "--fetch", "sick"], "--fetch needs --to DIR"),
    (["data", "--fetch", "mrpc", "--to", "x"], "mrpc: no download source"),
    (["data", "--to", "x"], "--to goes with --fetch"),
])
def test_cli_fetch_mistakes_are_one_line(argv, message, capsys):
    from tlutils.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and err.strip().count("\n") == 0


def test_the_data_check_names_the_fetch_command(tmp_path):
    from tlutils.data import data_check_message, missing_data

    line = data_check_message(missing_data(["mrpc", "amazon"], data_dir=tmp_path, hub=False))
    assert "python -m tlutils data --fetch amazon --to DIR" in line and "\n" not in line
