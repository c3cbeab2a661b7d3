"""The HTTP server, started by the test on 127.0.0.1 and stopped after: JSON API, SSE streaming,
uploads, the OpenAI-compatible endpoint (with the official client), API keys and limits."""

import json
import threading
import time

import httpx
import pytest
from servers import Server

from picorag.kb import KnowledgeBase
from picorag.records import PicoragError
from picorag.server import create_app, safe_upload_name, serve

DOCS = [
    {"id": "refund", "title": "Refunds", "content": "Refunds are paid within 7 days of the return."},
    {"id": "ship", "title": "Shipping", "content": "Orders over 50 euros ship for free. Express costs extra."},
    {"id": "law/590", "title": "民法典", "law": "中华人民共和国民法典",
     "content": "当事人一方因不可抗力不能履行合同的，根据不可抗力的影响，部分或者全部免除责任。"},
]


@pytest.fixture(scope="module")
def kb_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("srv")
    src = d / "docs.jsonl"
    src.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in DOCS), encoding="utf-8")
    KnowledgeBase.build(d / "kb", [src])
    return d / "kb"


@pytest.fixture(scope="module")
def server(kb_path):
    s = Server(create_app(kb_path, max_body=200_000))
    yield s
    s.stop()


def test_health_kb_and_search(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/health").json() == {"status": "ok"}
        info = c.get("/kb").json()
        assert info["docs"] == 3 and info["generator"] == {"name": "extractive", "can_write": False}
        assert info["strategies"] == ["plain", "multi-hop"]  # hyde, step-back need a writing generator
        r = c.post("/search", json={"query": "refunds paid", "k": 2})
        assert r.status_code == 200 and r.json()["hits"][0]["id"] == "refund-0"
        assert r.json()["mode"] == "bm25" and r.json()["hits"][0]["citation"]
        r = c.post("/search", json={"query": "合同", "where": {"law": "中华人民共和国民法典"}})
        assert [h["doc_id"] for h in r.json()["hits"]] == ["law/590"]
        assert "openapi" in c.get("/openapi.json").json()


def test_facets_and_page_assets(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        facets = {f["key"]: f["values"] for f in c.get("/facets").json()["facets"]}
        assert "law" not in facets  # one value only: nothing to choose between
        assert {v["value"] for v in facets["title"]} == {"Refunds", "Shipping", "民法典"}
        assert all(v["count"] == 1 for v in facets["title"])
        page = c.get("/").text
        assert "/static/app.js" in page and "/static/style.css" in page and "https://" not in page
        for name, kind in [("app.js", "javascript"), ("style.css", "text/css"), ("favicon.svg", "svg")]:
            r = c.get(f"/static/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"] and "https://" not in r.text
        assert c.get("/static/../server.py").status_code == 404
        assert c.get("/static/index.html").status_code == 404


def test_errors_are_json_never_a_stack(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for body, message in [({"query": "  "}, "empty query"), ({}, '"query"'), ({"query": "x", "k": 0}, '"k"'),
                              ({"query": "x", "mode": "dense"}, "has no vectors")]:
            r = c.post("/search", json=body)
            assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
        r = c.post("/search", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
        r = c.post("/search", content=b"x" * 300_000)
        assert r.status_code == 413
        # chunked bodies carry no Content-Length: they are counted as they arrive and stopped at the limit
        chunks = (b"x" * 10_000 for _ in range(30))
        r = c.post("/search", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "over 200000 bytes" in r.json()["error"]["message"], r.text
        head = b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
        parts = iter([head, *(b"word " * 2000 for _ in range(30)), b"\r\n--B--\r\n"])
        r = c.post("/documents", content=parts, headers={"content-type": "multipart/form-data; boundary=B"})
        assert r.status_code == 413, r.text
        assert c.get("/nope").status_code == 404 and "no such endpoint" in c.get("/nope").json()["error"]["message"]
        assert "Traceback" not in c.post("/ask", json={"question": 5}).text
        for path, body, message in [("/search", {"query": "x", "k": True}, '"k"'),
                                    ("/search", {"query": "x", "recall_factor": "a"}, '"recall_factor"'),
                                    ("/search", {"query": "x", "nprobe": 0}, '"nprobe"'),
                                    ("/ask", {"question": "x", "max_tokens": "many"}, '"max_tokens"'),
                                    ("/documents", {"documents": [{"id": 1}]}, "document 1: record needs")]:
            r = c.post(path, json=body)
            assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
            assert "upload-" not in r.text  # the server's temporary paths stay private
        r = c.get("/search")
        assert r.status_code == 405 and r.json()["error"]["message"] == "GET is not allowed on /search"


def test_ask_json_and_streamed(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        a = c.post("/ask", json={"question": "How long do refunds take?", "k": 2}).json()
        assert a["citations"][0]["id"] == "refund-0" and "[1]" in a["answer"]
        events = []
        with c.stream("POST", "/ask", json={"question": "How long do refunds take?", "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            kind = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[6:])))
        kinds = [k for k, _ in events]
        assert kinds[0] == "token" and kinds[-2:] == ["sources", "done"]
        text = "".join(d["text"] for k, d in events if k == "token")
        assert events[-2][1]["answer"] == text.strip() and events[-2][1]["citations"][0]["id"] == "refund-0"


def test_add_and_delete_documents(kb_path, server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/documents", json={"documents": [{"id": "owl", "title": "Owls", "content": "Owls hunt at night."}]})
        assert r.status_code == 200 and r.json()["chunk_ids"] == ["owl-0"], r.text
        assert c.post("/search", json={"query": "owls"}).json()["hits"][0]["id"] == "owl-0"
        files = {"file": ("../../evil/notes.md", b"# Zebras\n\nZebras have stripes.\n", "text/markdown")}
        r = c.post("/documents", files=files)
        assert r.status_code == 200 and r.json()["chunk_ids"] == ["notes.md-0"], r.text
        assert not (kb_path.parent / "evil").exists()
        assert not [p for p in kb_path.iterdir() if p.name.startswith("upload-")]  # temp files cleaned up
        two = [("file", ("a.md", b"Alpacas hum.", "text/markdown")),
               ("file", ("b.md", b"Bees dance.", "text/markdown"))]
        r = c.post("/documents", files=two)  # several files under one field name: all of them count
        assert r.status_code == 200 and r.json()["chunk_ids"] == ["a.md-0", "b.md-0"], r.text
        same = [("file", ("a.md", b"x", "text/markdown")), ("file", ("d/a.md", b"y", "text/markdown"))]
        r = c.post("/documents", files=same)
        assert r.status_code == 400 and "two uploaded files" in r.json()["error"]["message"]
        r = c.post("/documents", files={"file": ("x.exe", b"MZ", "application/octet-stream")})
        assert r.status_code == 400 and "unsupported file type" in r.json()["error"]["message"]
        assert c.delete("/documents/owl").json()["chunks"] == 1
        assert c.post("/search", json={"query": "owls"}).json()["hits"] == []
        assert c.delete("/documents/owl").status_code == 400  # already gone
        assert c.delete("/documents/law/590").json()["chunks"] == 1  # ids with slashes


def test_readers_see_whole_snapshots_during_writes(kb_path, server):
    """Searches (three threads) while documents are added in worker threads: each result set is one
    committed state, never a mix, and never an error."""
    stop, bad, seen = threading.Event(), [], set()

    def reader():
        try:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                while not stop.is_set():
                    r = c.post("/search", json={"query": "batch", "k": 100})
                    if r.status_code != 200:
                        bad.append(r.text)
                        continue
                    n = len(r.json()["hits"])
                    seen.add(n)
                    if n % 5:  # documents are added five at a time in one commit
                        bad.append(n)
        except Exception as e:  # a dead reader must fail the test, not go unnoticed
            bad.append(repr(e))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for i in range(8):
            docs = [{"id": f"b{i}-{j}", "content": f"batch document {i} {j}"} for j in range(5)]
            assert c.post("/documents", json={"documents": docs}).status_code == 200
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert not bad and max(seen) == 40 and len(seen) > 2, (bad[:5], seen)


def test_openai_client_against_the_endpoint(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["picorag"]
    r = client.chat.completions.create(model="picorag", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "How long do refunds take?"}])
    text = r.choices[0].message.content
    assert "Refunds are paid within 7 days" in text and "Sources:\n[1]" in text
    assert r.model_extra["sources"][0]["id"] == "refund-0"
    stream = client.chat.completions.create(model="picorag", stream=True, messages=[
        {"role": "user", "content": "How long do refunds take?"}])
    chunks = list(stream)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks).startswith("Refunds are paid")
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].model_extra["sources"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="picorag", messages=[{"role": "system", "content": "no question"}])


def test_api_key_and_binding(kb_path):
    s = Server(create_app(kb_path, api_key="s3cret"))
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            assert c.get("/health").status_code == 200  # open for probes
            assert c.get("/kb").status_code == 401
            assert c.get("/facets").status_code == 401
            assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200  # asks for the key
            docs = c.get("/docs").text
            assert "/static-offline-docs/swagger-ui-bundle.js" in docs and "cdn." not in docs  # works offline
            assert c.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
            assert c.get("/openapi.json").json()["security"] == [{"bearer": []}]
            assert c.get("/kb", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/kb", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert c.post("/search", json={"query": "refunds"}, headers={"X-API-Key": "s3cret"}).status_code == 200
    finally:
        s.stop()
    with pytest.raises(PicoragError, match="--api-key"):
        serve(kb_path, host="0.0.0.0", port=0)


def test_a_slow_answer_does_not_stall_other_requests(kb_path):
    """Work runs in worker threads: while one answer takes a second, searches and /health still answer."""
    from picorag.generate import load_generator

    class Slow:
        name, context_window, can_write = "slow", 1 << 20, False

        def count_tokens(self, text):
            return len(text.split())

        def stream(self, messages, max_tokens=256):
            time.sleep(1.5)
            yield from load_generator("extractive").stream(messages, max_tokens)

    s = Server(create_app(kb_path, generator=Slow()))
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            t = threading.Thread(target=lambda: c.post("/ask", json={"question": "How long do refunds take?"}))
            t.start()
            time.sleep(0.3)
            t0 = time.perf_counter()
            assert c.get("/health").status_code == 200
            assert c.post("/search", json={"query": "refunds"}).status_code == 200
            assert time.perf_counter() - t0 < 0.8 and t.is_alive()
            t.join()
    finally:
        s.stop()


def test_upload_names():
    assert safe_upload_name("a/b/../report.pdf") == "report.pdf"
    assert safe_upload_name("C:\\\\Users\\\\x\\\\notes.md") == "notes.md"
    for bad in ["", "..", ".hidden.md", "evil.sh", "a\x00.md"]:
        with pytest.raises(PicoragError):
            safe_upload_name(bad)
