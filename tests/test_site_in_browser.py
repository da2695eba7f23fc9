"""The published HTML, read in a real browser: headless Chromium over the site the tests built.

The site is the one ``test_book_builds_with_warnings_as_errors`` renders from the notebooks the
chapter tests executed in this session (smoke profile; nothing runs a third time), served on
localhost. Every page of the table of contents is opened once; the checks are what a reader
would notice: console errors, missing files, figures that do not show, error output, library
warnings or progress-bar residue, the build machine's paths, raw LaTeX, links that lead nowhere,
Colab buttons to notebooks that do not exist, a broken dark mode, images without a description.
The figure gallery (``figures/index.html``, :mod:`tlutils.gallery`) is opened like a chapter and
must show every figure the chapters show. A screenshot of every page is left in
``_build/screenshots/`` for a person to look at.

The browser is Debian's ``chromium`` package (``apt-get install chromium``; ``.ci/run`` installs
it), driven through Playwright's Python client with ``executable_path``: nothing is downloaded
at run time.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.chapter, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def toc_pages() -> list[str]:
    """Every page of ``_toc.yml``, root first, as paths without suffix (``book/intro``)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [c["file"] for c in part.get("chapters", [])]
    return pages


def executed_chapters() -> set[str]:
    """The pages that are notebooks (a ``kernelspec``), as ``concepts/terms_text`` or ``intro``."""
    return {str(p.relative_to(REPO / "book").with_suffix("")) for p in (REPO / "book").rglob("*.md")
            if "kernelspec:" in p.read_text()[:800]}


@dataclass
class Visit:
    """What one page showed."""

    page: str
    problems: list[str] = field(default_factory=list)
    links: set[str] = field(default_factory=set)
    colab: list[str] = field(default_factory=list)
    figures: int = 0
    images: list[tuple[str, str]] = field(default_factory=list)  # (src, alt) of every <img>


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # a browser that drops a connection is no error
        pass


@pytest.fixture(scope="module")
def site(smoke_site):
    """The smoke-built site on a localhost server: ``(base_url, html_folder)``."""
    proc, html, rendered = smoke_site
    assert proc.returncode == 0, "the site did not build: see test_book_builds_with_warnings_as_errors"
    if not rendered:
        pytest.skip("no chapter was executed in this session: run the browser check with the chapter "
                    "tests (make test), whose executed notebooks it renders")
    missing = sorted(executed_chapters() - set(rendered))
    assert not missing, f"chapters without an executed notebook in this session: {missing}"
    server = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", html
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    assert Path(CHROMIUM).exists(), "no chromium: apt-get install chromium (Debian's package)"
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


MATHJAX_DONE = "() => (window.MathJax && MathJax.startup) ? MathJax.startup.promise.then(() => true) : true"


def visit(browser, base: str, page_path: str, theme: str = "light") -> Visit:
    """Open one page as a reader would, wait for MathJax, record what is wrong with it."""
    result = Visit(page_path)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"localStorage.setItem('theme', '{theme}'); localStorage.setItem('mode', '{theme}');")
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and result.problems.append(f"console error: {m.text}"))
    page.on("pageerror", lambda e: result.problems.append(f"script error: {e}"))
    page.on("requestfailed", lambda r: result.problems.append(
        f"could not fetch {r.url} ({r.failure}){'' if r.url.startswith(base) else ': the site must not need the network'}"))
    page.on("response", lambda r: r.url.startswith(base) and r.status >= 400
            and result.problems.append(f"HTTP {r.status}: {r.url[len(base):]}"))
    response = page.goto(f"{base}/{page_path}.html", wait_until="networkidle")
    if response is None or response.status != 200:
        result.problems.append(f"page not served ({response.status if response else 'no response'})")
        context.close()
        return result
    page.evaluate(MATHJAX_DONE)
    main = page.locator("main").first
    text = main.inner_text()
    if re.search(r"\\\(|\\\[", text):
        result.problems.append(f"raw LaTeX left: {text[max(0, text.find(chr(92)) - 40):text.find(chr(92)) + 40]!r}")
    if "Traceback (most recent call last)" in text or page.locator(".output.traceback, .output.error").count():
        result.problems.append("an error or traceback output cell")
    stderr = page.locator(".output.stderr")
    for i in range(stderr.count()):
        result.problems.append(f"stderr block: {stderr.nth(i).inner_text()[:160]!r}")
    html = page.content()
    for leak in (str(REPO), "site-packages/", "/tmp/pytest-"):
        if leak in html:
            at = html.find(leak)
            result.problems.append(f"build machine path {leak!r} in the page: {html[max(0, at - 60):at + 60]!r}")
    broken = page.evaluate("() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
    result.problems += [f"image not shown: {src}" for src in broken]
    clipped = page.evaluate("() => [...document.querySelectorAll('main pre')]"
                            ".filter(p => p.scrollWidth > p.clientWidth + 1).map(p => p.innerText.slice(0, 80))")
    result.problems += [f"code clipped at the column: {c!r}" for c in clipped]
    result.figures = page.locator(".cell_output img").count()
    result.images = [tuple(i) for i in page.evaluate(
        "() => [...document.images].map(i => [i.getAttribute('src') || '', i.getAttribute('alt') || ''])")]
    hrefs = page.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.href)")
    result.links = {h.split("#")[0] for h in hrefs if h.startswith(base)}
    result.colab = [h for h in hrefs if "colab.research.google.com" in h]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{page_path.replace('/', '__')}{'' if theme == 'light' else '.' + theme}.png"),
                    full_page=True)
    context.close()
    return result


@pytest.fixture(scope="module")
def visits(site, browser) -> dict[str, Visit]:
    base, _ = site
    return {p: visit(browser, base, p) for p in [*toc_pages(), GALLERY]}


GALLERY = "figures/index"


def test_every_page_reads_clean(visits):
    problems = [f"{v.page}: {p}" for v in visits.values() for p in v.problems]
    assert not problems, "\n".join(problems)


def test_every_executed_chapter_shows_its_figures(visits):
    """A chapter that plots (matplotlib in its source) shows at least one figure on its page."""
    plotting = {f"book/{c}" for c in executed_chapters()
                if re.search(r"\bplt\.|\.subplots\(|plot_\w+\(", (REPO / "book" / f"{c}.md").read_text())}
    without = sorted(p for p in plotting if p in visits and visits[p].figures == 0)
    assert not without, f"chapters whose page shows no figure output: {without}"


def test_every_image_has_alt_text(visits):
    """Every ``<img>`` (figures, logos) has a description a screen reader can speak: not empty,
    not its file name (what Sphinx writes when a figure has no alt text)."""
    bad = []
    for v in visits.values():
        for src, alt in v.images:
            name = src.rsplit("/", 1)[-1].split("?")[0]
            if not alt.strip() or alt.strip() in (src, name) or re.fullmatch(r"\S+\.(png|svg|jpe?g|gif|webp)", alt.strip()):
                bad.append(f"{v.page}: <img src={name!r}> alt={alt!r}")
    assert not bad, ("images without alt text (figure cells take it from `mystnb: image: alt:` metadata):\n"
                     + "\n".join(bad))


def test_gallery_shows_every_figure_of_the_chapters(site, visits):
    """The gallery lists as many figures as the chapter pages show, each image loaded (the page
    check above), with links to its SVG and PNG files and its chapter, all on the site."""
    _, html = site
    gallery = visits[GALLERY]
    shown = {p: v.figures for p, v in visits.items() if p != GALLERY and v.figures}
    listed = [src for src, _ in gallery.images if src.endswith((".svg", ".png")) and "/" not in src]
    assert len(listed) == sum(shown.values()), f"the gallery lists {len(listed)} figures, the chapters show {shown}"
    files = {p.name for p in (html / "figures").iterdir()}
    for src in listed:
        stem = src.rsplit(".", 1)[0]
        assert {f"{stem}.svg", f"{stem}.png"} <= files, f"{stem}: SVG and PNG expected in figures/"
        assert any(link.endswith(f"/figures/{stem}.png") for link in gallery.links), f"{stem}: no PNG link"
    for page in shown:
        assert any(link.endswith(f"/{page}.html") for link in gallery.links), f"the gallery does not link {page}"
    assert any(link.endswith("/figures/index.html") for link in visits["book/syllabus"].links), \
        "the syllabus does not link the figure gallery"


def test_internal_links_resolve(site, visits):
    base, _ = site
    broken = []
    for url in sorted(set().union(*(v.links for v in visits.values()))):
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        if status != 200:
            broken.append(f"{url[len(base):]} ({status})")
    assert not broken, f"links that lead nowhere: {broken}"


def test_colab_buttons_open_notebooks_that_exist(visits):
    repo_url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    prefix = "https://colab.research.google.com/github/" + repo_url.split("github.com/")[1] + "/blob/main/"
    for chapter in executed_chapters():
        v = visits.get(f"book/{chapter}")
        if v is None:
            continue
        assert v.colab, f"{chapter}: no Colab button"
        for link in v.colab:
            assert link.startswith(prefix), f"{chapter}: Colab button {link} is not {prefix}..."
            path = link[len(prefix):]
            assert path.endswith(".ipynb") and (REPO / path).is_file(), f"{chapter}: Colab opens {path}, not in the repository"


def test_search_finds_a_term(site, browser):
    base, _ = site
    page = browser.new_page()
    page.goto(f"{base}/search.html?q=distillation", wait_until="networkidle")
    page.wait_for_selector("#search-results ul.search li, ul.search li", timeout=20_000)
    assert page.locator("ul.search li").count() > 0
    page.close()


def test_dark_mode_renders(site, browser):
    base, _ = site
    v = visit(browser, base, "book/concepts/sentence_pair_classification", theme="dark")
    assert not v.problems, v.problems
    page = browser.new_context()
    page.add_init_script("localStorage.setItem('theme', 'dark'); localStorage.setItem('mode', 'dark');")
    tab = page.new_page()
    tab.goto(f"{base}/book/concepts/sentence_pair_classification.html", wait_until="networkidle")
    theme = tab.evaluate("() => document.documentElement.dataset.theme")
    rgb = tab.evaluate("() => getComputedStyle(document.body).backgroundColor")
    page.close()
    channels = [int(x) for x in re.findall(r"\d+", rgb)[:3]]
    assert theme == "dark" and sum(channels) / 3 < 80, f"dark mode: theme {theme!r}, background {rgb}"
