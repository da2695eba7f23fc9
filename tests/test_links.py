"""Cross-references of the book: every ``{ref}``, ``{doc}`` and ``{cite}`` resolves, and no link
sends the reader to the introduction's outline when a chapter covers the topic.

The outline in ``book/intro.md`` has one anchor per part (``(part-concepts)=``,
``(part-traditional)=`` …). While a part is being written, a chapter that mentions one of its
topics can only link to that outline entry. Once the topic has a chapter, the link must go to the
chapter (or one of its sections). ``PART_TOPICS`` maps each part anchor to its topics: a keyword
pattern and the chapter file that covers (or will cover) it. A topic *has a chapter* when that
file exists, or when a chapter listed under the part's caption in ``_toc.yml`` has a title that
matches the pattern, so the rule tightens by itself as chapters arrive.

A ``{ref}`` to ``part-X`` is judged by its *context*: the link text, the sentence (or table
row) it stands in, and for a glossary entry the term, with every other ``{ref}``/``{doc}`` of the
sentence removed (a topic already linked to its chapter does not count). It fails when

- the context names a topic of part X that has a chapter and none that is still unwritten, or
- the context names no topic of part X and every topic of part X has a chapter.

Everything is parsed from the Markdown sources; nothing is executed or built, so the test takes
well under a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# part anchor -> (caption prefix in _toc.yml, {topic: (keyword pattern, chapter file)}).
# Chapter files of parts not written yet are the planned names; a chapter with another name is
# still found through its title (see `topic_chapter`).
PART_TOPICS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "part-concepts": ("Part I:", {
        "the running example": (r"running example|sentence[- ]pair classification",
                                "book/concepts/sentence_pair_classification.md"),
        "pretrained models and transfer learning": (r"pretrained models?\b|transfer learning",
                                                    "book/concepts/pretrained_and_transfer.md"),
        "terms: from text to a classifier": (
            r"tokeni[sz]\w*|embeddings?\b|wordpiece|attention|masking|language models?\b|vocabular\w*"
            r"|label smoothing|cross-entropy", "book/concepts/terms_text.md"),
        "terms: across tasks and domains": (
            r"domain adaptation|multi-task|adversarial|gradient reversal|self-training|fine-tun\w*|dropout"
            r"|contrastive|triplet", "book/concepts/terms_transfer.md"),
        "glossary": (r"glossary", "book/concepts/glossary.md"),
    }),
    "part-traditional": ("Part II:", {
        "feature extraction": (r"feature[- ]extract\w*|feature-based|frozen (?:encoder|features)|extractors?\b",
                               "book/traditional/feature_extraction.md"),
        "fine-tuning": (r"fine-tun\w*|unfreezing|learning[- ]rates?|\bLoRA\b", "book/traditional/fine_tuning.md"),
        "distillation": (r"distil\w*|teacher|soft targets", "book/traditional/distillation.md"),
        "multi-task learning": (r"multi-task", "book/traditional/multi_task.md"),
        "adversarial training": (r"adversarial", "book/traditional/adversarial.md"),
        "self-training": (r"self-training|pseudo-label\w*", "book/traditional/self_training.md"),
        "contrastive learning": (r"contrastive|triplet", "book/traditional/contrastive.md"),
    }),
    "part-pretrained": ("Part III:", {
        "language models": (r"language models?\b|WordPiece|byte-level BPE|tokeniz", "book/pretrained/language_models.md"),
        "BERT": (r"(?<!AL)(?<!Ro)\bBERT\b", "book/pretrained/bert.md"),
        "ALBERT": (r"\bALBERT\b", "book/pretrained/recipes.md"),
        "RoBERTa": (r"\bRoBERTa\b", "book/pretrained/recipes.md"),
    }),
    "part-diversity": ("Part IV:", {
        "domain shift": (r"domain shift|A-distance|which sources? (?:are|is) close", "book/diversity/domain_shift.md"),
        "domain adaptation": (r"domain adaptation|cross-domain|\bDANN\b|gradient reversal|domain-adversarial",
                              "book/diversity/single_source.md"),
        "multi-source transfer": (r"multi-source", "book/diversity/multi_source.md"),
    }),
    "part-outlook": ("Part V:", {
        "outlook": (r"outlook|what remains open", "book/outlook/outlook.md"),
    }),
}

LABEL = re.compile(r"^\((?P<label>[^)\s]+)\)=\s*$", re.M)
NAME_OPTION = re.compile(r"^\s*:name:\s*(?P<label>\S+)\s*$", re.M)
ROLE = re.compile(r"\{(?P<role>ref|doc|cite(?::\w+)?)\}`(?P<body>[^`]+)`")
EXPLICIT = re.compile(r"^(?P<text>.*?)\s*<(?P<target>[^<>]+)>\s*$", re.S)
BIB_KEY = re.compile(r"^@\w+\s*\{\s*(?P<key>[^,\s]+)\s*,", re.M)
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)\n.*?^(?P=fence)\s*$", re.M | re.S)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z{*(`\"'])")


@dataclass(frozen=True)
class Link:
    path: Path
    line: int
    role: str
    text: str | None
    target: str
    context: str


def markdown_files(root: Path) -> list[Path]:
    book = root / "book"
    return sorted(p for p in book.rglob("*.md") if not {"_build", ".ipynb_checkpoints"} & set(p.parts))


def prose(text: str) -> str:
    """The text with code cells and plain code blocks blanked out (same length, same lines);
    directives such as ``{glossary}`` or ``{admonition}`` hold prose and are kept."""
    def blank(m: re.Match) -> str:
        info = m.group("info").strip()
        if info.startswith("{") and not info.startswith("{code-cell}"):
            return m.group(0)
        return re.sub(r"[^\n]", " ", m.group(0))
    return FENCE.sub(blank, text)


def labels(root: Path) -> set[str]:
    found = set()
    for path in markdown_files(root):
        text = prose(path.read_text())
        found.update(m.group("label") for m in LABEL.finditer(text))
        found.update(m.group("label") for m in NAME_OPTION.finditer(text))
    return found


def bib_keys(root: Path) -> set[str]:
    return {m.group("key") for m in BIB_KEY.finditer((root / "book" / "references.bib").read_text())}


def _glossary_term(text: str, pos: int) -> str:
    """The glossary term whose definition holds position ``pos``, or '' outside a glossary."""
    for block in re.finditer(r"^```\{glossary\}[^\n]*\n(.*?)^```", text, re.M | re.S):
        if block.start(1) <= pos < block.end(1):
            terms = [line for line in block.group(1)[:pos - block.start(1)].splitlines()
                     if line.strip() and not line[0].isspace()]
            return terms[-1].strip() if terms else ""
    return ""


def _context(text: str, start: int, end: int) -> str:
    """The sentence (or table row) around text[start:end], other ref/doc roles removed, plus the
    glossary term when the link is in a glossary definition."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    if text[line_start:line_end].lstrip().startswith("|"):
        lo, hi = line_start, line_end
    else:
        lo = text.rfind("\n\n", 0, start)
        lo = 0 if lo < 0 else lo + 2
        hi = text.find("\n\n", end)
        hi = len(text) if hi < 0 else hi
        cut = [lo, *(lo + m.end() for m in SENTENCE_END.finditer(text[lo:hi])), hi]
        for a, b in zip(cut, cut[1:]):
            if a <= start < b:
                lo, hi = a, max(b, end)
                break
    before = ROLE.sub(lambda m: "" if m.group("role") in ("ref", "doc") else m.group(0), text[lo:start])
    after = ROLE.sub(lambda m: "" if m.group("role") in ("ref", "doc") else m.group(0), text[end:hi])
    own = text[start:end]
    body = ROLE.match(own).group("body")
    explicit = EXPLICIT.match(body)
    own_text = explicit.group("text") if explicit else ""
    context = " ".join(f"{before} {own_text} {after}".split())
    term = _glossary_term(text, start)
    return f"{term}: {context}" if term else context


def links(root: Path) -> list[Link]:
    found = []
    for path in markdown_files(root):
        text = prose(path.read_text())
        for m in ROLE.finditer(text):
            body = m.group("body")
            explicit = EXPLICIT.match(body)
            text_, target = (explicit.group("text"), explicit.group("target")) if explicit else (None, body)
            found.append(Link(path=path, line=text.count("\n", 0, m.start()) + 1, role=m.group("role"),
                              text=" ".join(text_.split()) if text_ is not None else None,
                              target=" ".join(target.split()),
                              context=_context(text, m.start(), m.end()) if m.group("role") == "ref" else ""))
    return found


def _toc_chapters(root: Path) -> dict[str, list[Path]]:
    """Caption -> the chapter files listed under it in _toc.yml (a minimal reader of that file)."""
    parts: dict[str, list[Path]] = {}
    caption = ""
    for line in (root / "_toc.yml").read_text().splitlines():
        stripped = line.strip().removeprefix("- ")
        if stripped.startswith("caption:"):
            caption = stripped.split(":", 1)[1].strip().strip("\"'")
            parts[caption] = []
        elif stripped.startswith("file:") and caption:
            parts[caption].append(root / f"{stripped.split(':', 1)[1].strip()}.md")
    return parts


def _title(path: Path) -> str:
    m = re.search(r"^# (.+)$", prose(path.read_text()), re.M)
    return m.group(1) if m else ""


def topic_chapter(root: Path, part: str, topic: str) -> Path | None:
    """The chapter that covers a topic of a part: its declared file if that exists, else a chapter
    under the part's caption in _toc.yml whose title names the topic; None while unwritten."""
    caption_prefix, topics = PART_TOPICS[part]
    pattern, chapter = topics[topic]
    if (root / chapter).is_file():
        return root / chapter
    for caption, files in _toc_chapters(root).items():
        if caption.startswith(caption_prefix):
            for path in files:
                if path.is_file() and re.search(pattern, _title(path), re.I):
                    return path
    return None


def stale_part_links(root: Path) -> list[str]:
    """Every {ref} to a part anchor that should point at a chapter, with the reason."""
    problems = []
    for link in links(root):
        if link.role != "ref" or link.target not in PART_TOPICS:
            continue
        topics = PART_TOPICS[link.target][1]
        chapters = {t: topic_chapter(root, link.target, t) for t in topics}
        named = [t for t, (pattern, _) in topics.items() if re.search(pattern, link.context, re.I)]
        unwritten = [t for t in named if chapters[t] is None]
        written = [t for t in named if chapters[t] is not None]
        where = f"{link.path.relative_to(root)}:{link.line}: {{ref}}`{link.text or ''} <{link.target}>`"
        if written and not unwritten:
            to = ", ".join(f"{t} -> {chapters[t].relative_to(root)}" for t in written)
            problems.append(f"{where} is about a topic that has a chapter ({to}); context: {link.context!r}")
        elif not named and all(chapters.values()):
            problems.append(f"{where}: every topic of {link.target} has a chapter; link to the chapter "
                            f"instead; context: {link.context!r}")
    return problems


def missing_ref_targets(root: Path) -> list[str]:
    known = labels(root)
    return [f"{link.path.relative_to(root)}:{link.line}: {{ref}} to undefined label {link.target!r}"
            for link in links(root) if link.role == "ref" and link.target not in known]


def missing_doc_targets(root: Path) -> list[str]:
    problems = []
    for link in links(root):
        if link.role != "doc":
            continue
        target = link.target
        path = (root / "book" / target.lstrip("/")) if target.startswith("/") else (link.path.parent / target)
        if not any(path.with_name(path.name + ext).is_file() for ext in (".md", ".ipynb")):
            problems.append(f"{link.path.relative_to(root)}:{link.line}: {{doc}} to missing {target!r}")
    return problems


def missing_cite_keys(root: Path) -> list[str]:
    keys = bib_keys(root)
    problems = []
    for link in links(root):
        if link.role.startswith("cite"):
            for key in (k.strip() for k in link.target.split(",")):
                if key and key not in keys:
                    problems.append(f"{link.path.relative_to(root)}:{link.line}: {{cite}} key {key!r} "
                                    "is not in book/references.bib")
    return problems


# --- the tests -------------------------------------------------------------------------------


def test_the_book_has_links_to_check():
    found = links(REPO)
    assert sum(link.role == "ref" for link in found) > 50 and sum(link.role.startswith("cite") for link in found) > 50
    assert {"part-concepts", "part-traditional", "part-pretrained", "part-diversity", "part-outlook"} <= labels(REPO)


def test_every_ref_target_exists():
    problems = missing_ref_targets(REPO)
    assert not problems, "\n".join(problems)


def test_every_doc_target_exists():
    problems = missing_doc_targets(REPO)
    assert not problems, "\n".join(problems)


def test_every_cite_key_is_in_the_bibliography():
    problems = missing_cite_keys(REPO)
    assert not problems, "\n".join(problems)


def test_declared_chapters_of_written_topics_are_in_the_toc():
    """A topic's chapter file that exists must be a chapter of its part in _toc.yml, so a moved or
    renamed chapter cannot silently turn the rule off."""
    toc = _toc_chapters(REPO)
    for part, (prefix, topics) in PART_TOPICS.items():
        listed = {p for caption, files in toc.items() if caption.startswith(prefix) for p in files}
        for topic, (_, chapter) in topics.items():
            if (REPO / chapter).is_file():
                assert REPO / chapter in listed, f"{chapter} ({topic}) is not under '{prefix}' in _toc.yml"


def test_no_outline_link_where_a_chapter_exists():
    problems = stale_part_links(REPO)
    assert not problems, "link to the chapter, not to the outline:\n" + "\n".join(problems)


@pytest.mark.parametrize("sentence, part, stale", [
    ("Distillation is in {ref}`Part II <part-traditional>`.", "part-traditional", True),
    # every topic of Part II has its chapter now, so no link to its outline entry is right any more
    ("Used in: {ref}`Part II <part-traditional>` (adversarial fine-tuning).", "part-traditional", True),
    ("Self-training on the running example is in {ref}`Part II <part-traditional>`.", "part-traditional", True),
    ("See {ref}`distillation <distillation>` and {ref}`Part II <part-traditional>` for multi-task.",
     "part-traditional", True),
    # every topic of Part IV has its chapter too
    ("Multi-source transfer is in {ref}`Part IV <part-diversity>`.", "part-diversity", True),
    ("The running example is in {ref}`Part I <part-concepts>`.", "part-concepts", True),
    ("Which tokenizer: {ref}`Part III <part-pretrained>` compares them.", "part-pretrained", True),
])
def test_the_rule_on_examples(tmp_path, sentence, part, stale):
    """The rule itself, on a one-page book next to the real chapter files."""
    (tmp_path / "book").mkdir()
    (tmp_path / "_toc.yml").write_text((REPO / "_toc.yml").read_text())
    for path in markdown_files(REPO):
        if path.name != "intro.md":
            copy = tmp_path / path.relative_to(REPO)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text("# " + _title(path) + "\n")
    (tmp_path / "book" / "intro.md").write_text(f"# Intro\n\n({part})=\n**Part.**\n\n{sentence}\n")
    assert bool(stale_part_links(tmp_path)) is stale, stale_part_links(tmp_path)
