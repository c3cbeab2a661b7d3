"""The web page in a real headless Chromium (Debian's, driven by Playwright): search in three columns,
filters, a streamed answer with clickable sources, phone width, uploads, a BM25-only KB, the API key.

Screenshots go to the test's tmp dir and, when PICORAG_ARTIFACTS is set, to that directory too."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Server

from picorag.generate import load_generator
from picorag.ingest import ID_ROOT
from picorag.kb import KnowledgeBase
from picorag.server import create_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

DOCS = [
    {"id": "fin", "title": "Pelvic fin", "source": "wiki",
     "content": "Pelvic fins are paired fins on the underside of fish. They help the fish steer and stay balanced."},
    {"id": "radar", "title": "Radar", "source": "wiki",
     "content": "An airborne radar finds aircraft by reflected radio waves."},
    {"id": "tea", "title": "Tea", "source": "blog", "content": "Green tea leaves are steamed and dried after picking."},
    {"id": "bike", "title": "Bicycle", "source": "blog", "content": "A bicycle has two wheels, pedals and a chain."},
    {"id": "shark", "title": "Sharks", "source": "blog",
     "content": "Sharks use their fins to steer; a shark's tail fin drives it forward."},
]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is absent (make test installs Debian's chromium)")


class SlowExtractive:
    """The extractive generator, one word at a time with a pause: the page must show the answer growing."""

    def __init__(self) -> None:
        self.inner = load_generator("extractive")
        self.name, self.context_window, self.can_write = "slow-extractive", self.inner.context_window, False

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def stream(self, messages, max_tokens=256) -> Iterator[str]:
        for piece in self.inner.stream(messages, max_tokens):
            for word in piece.split(" "):
                time.sleep(0.03)
                yield word + " "


def build(d: Path, dense: str | None) -> Path:
    (d / "docs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in DOCS), encoding="utf-8")
    token = ID_ROOT.set(d)  # paths relative to d: citations read "Pelvic fin · docs.jsonl · line 1"
    try:
        KnowledgeBase.build(d / "kb", [d / "docs.jsonl"], dense=dense)
    finally:
        ID_ROOT.reset(token)
    return d / "kb"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def dense_server(tmp_path_factory):
    s = Server(create_app(build(tmp_path_factory.mktemp("web"), "minilm"), generator=SlowExtractive()))
    yield s
    s.stop()


@pytest.fixture
def page(browser, dense_server):
    """A fresh page that records console errors and any request leaving this server (the page is offline)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.errors, pg.outside = [], []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("request", lambda r: None if r.url.startswith("http://127.0.0.1:") else pg.outside.append(r.url))
    yield pg
    ctx.close()


def artifact(page, tmp_path: Path, name: str, full: bool = True) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=full)
    if os.environ.get("PICORAG_ARTIFACTS"):
        dest = Path(os.environ["PICORAG_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / name)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


def boxes(page, selector: str) -> list[dict]:
    return [page.locator(selector).nth(i).bounding_box() for i in range(page.locator(selector).count())]


def column_ids(page, mode: str) -> list[str]:
    return page.locator(f".col[data-mode={mode}] .hit").evaluate_all("els => els.map(e => e.dataset.id)")


def test_search_ask_sources_filters_phone(page, dense_server, tmp_path):
    page.goto(dense_server.url + "/")
    page.wait_for_function("document.querySelector('#kb-info').textContent.includes('BM25 + dense')")
    assert page.locator("#kb-info").inner_text().startswith("5 documents")

    # three columns side by side, each with ranked hits, scores and citations
    page.fill("#q", "which fins help a fish steer")
    page.click("#search-form button[type=submit]")
    for mode in ("bm25", "dense", "hybrid"):
        page.wait_for_selector(f".col[data-mode={mode}] .hit")
    cols = boxes(page, ".col")
    assert len(cols) == 3 and cols[0]["x"] < cols[1]["x"] < cols[2]["x"] and cols[0]["y"] == cols[2]["y"]
    for mode in ("bm25", "dense", "hybrid"):
        assert set(column_ids(page, mode)[:2]) == {"fin-0", "shark-0"}, mode
        assert page.locator(f".col[data-mode={mode}] .took").inner_text().endswith("ms")
    first = page.locator(".col[data-mode=hybrid] .hit").first
    cites = ("Pelvic fin · docs.jsonl · line 1", "Sharks · docs.jsonl · line 5")
    assert first.locator(".cite-line").inner_text() in cites
    float(first.locator(".score").inner_text())
    assert "results (BM25 / dense / hybrid)" in page.locator("#status").inner_text()

    # a metadata filter from the values the KB has: only "blog" documents remain, in every column
    assert page.locator("#facet-key").input_value() == "source"
    page.select_option("#facet-value", "blog")
    page.click("#add-filter")
    page.wait_for_function("!document.querySelector('.col[data-mode=bm25] [data-id=\"fin-0\"]')"
                           " && document.querySelectorAll('.col[data-mode=hybrid] .hit').length > 0")
    page.wait_for_function("document.querySelector('#status').textContent.includes('filtered')")
    for mode in ("bm25", "dense", "hybrid"):
        assert set(column_ids(page, mode)) <= {"tea-0", "bike-0", "shark-0"}, mode
    assert page.locator(".chip").inner_text().startswith("source = blog")
    page.click(".chip button")
    page.wait_for_selector(".col[data-mode=bm25] [data-id='fin-0']")

    # clicking a hit shows its chunk text and metadata
    page.locator(".col[data-mode=bm25] [data-id='fin-0']").click()
    assert page.locator("#detail").is_visible()
    assert page.locator("#detail-text").inner_text() == DOCS[0]["content"]
    assert "wiki" in page.locator("#detail-meta").inner_text()
    page.keyboard.press("Escape")
    assert not page.locator("#detail").is_visible()

    # the answer streams in (seen growing while still streaming), then numbered sources that open the chunk
    assert page.input_value("#question") == "which fins help a fish steer"  # carried over from the search
    # a quoting generator cannot write HyDE passages or step-back questions: only what works is offered
    assert page.locator("#ask-strategy option").all_inner_texts() == ["plain", "multi-hop"]
    page.fill("#question", "How do fish steer?")
    page.click("#ask-button")
    page.wait_for_function("document.querySelector('#answer.streaming') && "
                           "document.querySelector('#answer').textContent.trim().split(' ').length >= 2")
    assert page.locator("#sources li").count() == 0  # sources come after the tokens
    page.wait_for_selector("#sources li")
    page.wait_for_function("!document.querySelector('#answer.streaming')")
    answer = page.locator("#answer").inner_text()
    assert "steer" in answer and "[1]" in answer, answer
    assert page.locator("#answer .marker").count() >= 1
    src = page.locator("#sources li").first
    assert src.inner_text().startswith("[1]")
    cited_id = src.locator("a").get_attribute("data-id")
    src.locator("a").click()
    assert page.locator("#detail").is_visible()
    want = next(d["content"] for d in DOCS if f"{d['id']}-0" == cited_id)
    assert page.locator("#detail-text").inner_text() == want
    assert cited_id in page.locator("#detail-id").inner_text()
    artifact(page, tmp_path, "web-source.png", full=False)
    page.keyboard.press("Escape")
    page.locator("#answer .marker").first.click()  # the [n] in the text opens the same chunk
    assert page.locator("#detail-text").inner_text() == want
    page.keyboard.press("Escape")
    artifact(page, tmp_path, "web.png")

    # phone width: columns stack, nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function("document.documentElement.scrollWidth <= 390")
    cols = boxes(page, ".col")
    assert cols[0]["x"] == cols[1]["x"] == cols[2]["x"] and cols[0]["y"] < cols[1]["y"] < cols[2]["y"]
    assert all(c["width"] <= 390 for c in cols)
    artifact(page, tmp_path, "web-phone.png")
    assert not page.errors and not page.outside, (page.errors, page.outside)


def test_upload_from_the_page(page, dense_server, tmp_path):
    page.goto(dense_server.url + "/")
    page.wait_for_function("document.querySelector('#kb-info').textContent.includes('BM25 + dense')")
    docs_before = int(page.locator("#kb-info").inner_text().split()[0])
    page.set_input_files("#files", [
        {"name": "owls.md", "mimeType": "text/markdown", "buffer": b"# Owls\n\nOwls hunt mice at night.\n"},
        {"name": "kites.txt", "mimeType": "text/plain", "buffer": b"Kites fly on windy beaches."},
    ])
    page.click("#upload-form button[type=submit]")
    page.wait_for_function("document.querySelector('#upload-status').textContent.startsWith('added')")
    status = page.locator("#upload-status").inner_text()
    assert status.startswith("added 2,") and "owls.md-0" in status and "kites.txt-0" in status, status
    page.wait_for_function(f"document.querySelector('#kb-info').textContent.startsWith('{docs_before + 2} ')")
    page.fill("#q", "owls hunting mice")
    page.press("#q", "Enter")
    page.wait_for_selector(".col[data-mode=hybrid] [data-id='owls.md-0']")
    assert column_ids(page, "bm25")[0] == "owls.md-0"
    assert not page.errors and not page.outside, (page.errors, page.outside)
    page.set_input_files("#files", [{"name": "evil.exe", "mimeType": "application/octet-stream", "buffer": b"MZ"}])
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#upload-status .error")
    assert "unsupported file type" in page.locator("#upload-status").inner_text()
    assert all("status of 400" in e for e in page.errors), page.errors  # Chromium logs the refused upload


def test_bm25_only_kb_api_key_and_docs(browser, tmp_path):
    """A KB without vectors fills the BM25 column and says what dense/hybrid need; a keyed server asks for
    the key; /docs renders offline."""
    s = Server(create_app(build(tmp_path, None), api_key="s3cret"))
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        pg = ctx.new_page()
        pg.goto(s.url + "/?q=bicycle%20wheels")
        pg.wait_for_selector("#key-panel:not([hidden])")
        assert pg.locator(".hit").count() == 0  # nothing without the key
        pg.fill("#api-key", "s3cret")
        pg.click("#key-form button")
        pg.wait_for_selector(".col[data-mode=bm25] .hit")
        assert pg.locator("#kb-info").inner_text().endswith("BM25 only")
        assert column_ids(pg, "bm25")[0] == "bike-0"
        for mode in ("dense", "hybrid"):
            assert "--dense" in pg.locator(f".col[data-mode={mode}] .note").inner_text()
        assert pg.locator("#ask-mode option").all_inner_texts() == ["bm25"]
        assert pg.locator("#key-panel").is_hidden()

        # /docs: Swagger UI from files this server ships (no CDN), with the endpoints, their bodies, "Authorize"
        outside = []
        pg.on("request", lambda r: None if r.url.startswith(s.url) else outside.append(r.url))
        pg.goto(s.url + "/docs")
        pg.wait_for_selector(".opblock-summary-path", timeout=15_000)
        paths = set(pg.locator(".opblock-summary-path").all_inner_texts())
        assert {"/search", "/ask", "/documents", "/v1/chat/completions", "/facets"} <= {p.strip() for p in paths}
        assert pg.locator(".authorize").count() >= 1
        pg.locator(".opblock-summary-path", has_text="/search").first.click()
        pg.wait_for_selector(".opblock-body .body-param__example, .opblock-body .microlight")
        assert "违约责任" in pg.locator(".opblock-body").first.inner_text()
        assert not outside, outside
    finally:
        ctx.close()
        s.stop()
