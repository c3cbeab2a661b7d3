"""HTTP server: JSON API, an OpenAI-compatible chat endpoint, and the web page at `/`.

    picorag serve KB [--host 127.0.0.1] [--port 8000] [--api-key KEY]

Searching, answering and indexing run in worker threads (sync endpoints, `run_in_threadpool`,
streams in their own thread), so a long request never stalls the event loop. Readers get a snapshot:
each request uses the KnowledgeBase object that was current when it began, and a new one is opened
when the manifest changes, so a search during a write sees the old KB or the new one, never a mix.
Writes use a KnowledgeBase object of their own and the KB's lock.

>>> app = create_app("my-kb")          # doctest: +SKIP
>>> uvicorn.run(app, port=8000)        # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # module level: FastAPI resolves the endpoints' annotations here
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .answer import Answer, ask
from .generate import Generator, load_generator
from .ingest import SUFFIXES, suffix_of
from .kb import KnowledgeBase, write_refused
from .prompt import document
from .records import PicoragError
from .strategies import STRATEGIES

MAX_BODY = 20 * 1024 * 1024  # bytes per request (uploads included)
SEARCH_FIELDS = ("mode", "fusion", "recall_factor", "cut", "nprobe")
OPTION_TYPES: dict[str, tuple[Any, float | None]] = {  # field: (type, least value)
    "mode": (str, None), "fusion": (str, None), "recall_factor": (int, 1), "cut": ((int, float), 0), "nprobe": (int, 1)}
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "favicon.svg": "image/svg+xml"}
DOCS_ASSETS = "/static-offline-docs/"  # Swagger UI and ReDoc files (fastapi-offline), so /docs works offline
OPEN_PATHS = ("/health", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
              *(f"/static/{n}" for n in STATIC))
# metadata keys offered first as filters (statutes, then generic sources); others follow by fewest values
FACET_ORDER = ("law", "short_name", "kind", "source", "title", "book", "chapter", "language", "source_path")


# Request bodies as /docs shows them. The endpoints parse JSON themselves, so every error has one shape.
_WHERE = {"type": "object", "description": 'metadata filters: {"law": "中华人民共和国刑法"} or {"key": ["a", "b"]}',
          "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}}
SEARCH_BODY: dict[str, Any] = {
    "query": {"type": "string"}, "k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
    "mode": {"type": "string", "enum": ["bm25", "dense", "hybrid"], "description": "default: hybrid with vectors"},
    "where": _WHERE, "strategy": {"type": "string", "default": "plain", "enum": list(STRATEGIES)},
    "fusion": {"type": "string", "enum": ["rrf", "weighted"]}, "recall_factor": {"type": "integer"},
    "cut": {"type": "number"}, "nprobe": {"type": "integer"}}
ASK_BODY: dict[str, Any] = {"question": {"type": "string"}, "stream": {"type": "boolean", "default": False,
                            "description": "server-sent events: token…, sources, done"},
                            "max_tokens": {"type": "integer", "default": 256},
                            **{k: v for k, v in SEARCH_BODY.items() if k != "query"}}
CHAT_BODY: dict[str, Any] = {
    "model": {"type": "string", "default": "picorag"}, "stream": {"type": "boolean", "default": False},
    "messages": {"type": "array", "items": {"type": "object", "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant"]}, "content": {"type": "string"}}}},
    "max_tokens": {"type": "integer"}, **{k: v for k, v in SEARCH_BODY.items() if k != "query"}}


def json_body(props: dict[str, Any], required: list[str], example: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": props, "required": required}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema, "example": example}}}}


DOCUMENTS_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["documents"], "properties": {"documents": {
        "type": "array", "items": {"type": "object", "required": ["id", "content"], "properties": {
            "id": {"type": "string"}, "title": {"type": "string"}, "content": {"type": "string"}},
            "additionalProperties": True, "description": "other fields become metadata"}}}},
        "example": {"documents": [{"id": "note-1", "title": "Note", "content": "Text…", "author": "me"}]}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {
        "type": "array", "items": {"type": "string", "format": "binary"},
        "description": ".txt .md .pdf .pptx .jsonl(.gz) files"}}}}}}}


class Snapshots:
    """The current KnowledgeBase, reopened when the manifest on disk changes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.kb = KnowledgeBase.open(self.path)
        self.stamp = self._stamp()

    def _stamp(self) -> tuple[int, int]:
        st = (self.path / "manifest.json").stat()
        return st.st_mtime_ns, st.st_ino

    def write(self, method: str, *args: Any, **kw: Any) -> Any:
        """A write through its own KnowledgeBase object: a writer reloads its object in place, and the
        snapshot that readers in other threads are searching must not change under them."""
        with KnowledgeBase.open(self.path) as kb:
            out = getattr(kb, method)(*args, **kw)
        self.current()
        return out

    def current(self) -> KnowledgeBase:
        stamp = self._stamp()
        if stamp != self.stamp:
            with self.lock:
                if stamp != self.stamp:  # requests still holding the old object keep using it
                    self.kb, self.stamp = KnowledgeBase.open(self.path), stamp
        return self.kb


class BodyTooLarge(PicoragError):
    """A request body over the server's limit (answered with 413)."""


class BodyLimit:
    """ASGI middleware counting body bytes as they arrive: a chunked request (no Content-Length) is
    stopped at the limit too, before it fills memory or disk."""

    def __init__(self, app: Any, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise BodyTooLarge(f"request body over {self.max_body} bytes")
            return message

        await self.app(scope, limited, send)


def safe_upload_name(name: str) -> str:
    """The file's own name only: no directories, no hidden names, a supported type."""
    base = os.path.basename(name.replace("\\", "/")).strip()
    if not base or base.startswith(".") or len(base) > 200 or re.search(r"[\x00-\x1f]", base):
        raise PicoragError(f"invalid file name {name!r}")
    if suffix_of(Path(base)) not in SUFFIXES:
        raise PicoragError(f"unsupported file type {base!r}; supported: {', '.join(sorted(SUFFIXES))}")
    return base


def facets(kb: KnowledgeBase, max_values: int = 100) -> list[dict[str, Any]]:
    """Metadata keys with 2..max_values distinct non-empty text values over the live chunks, with
    counts: what the web page offers as filters. Deleted rows are left out in SQL (json_each)."""
    counts: dict[str, dict[str, int]] = {}
    for seg in kb.segments:
        dead = json.dumps(np.flatnonzero(~seg.live).tolist())
        sql = ("SELECT j.key, j.value, count(*) FROM chunks, json_each(chunks.meta) AS j WHERE j.type = 'text' "
               "AND j.value != '' AND length(j.value) <= 200 AND chunks.row NOT IN (SELECT value FROM json_each(?)) "
               "GROUP BY j.key, j.value")
        for key, value, n in seg.store.con.execute(sql, (dead,)):
            per_key = counts.setdefault(key, {})
            per_key[value] = per_key.get(value, 0) + n
    keys = [k for k, v in counts.items() if 2 <= len(v) <= max_values]
    keys.sort(key=lambda k: (FACET_ORDER.index(k) if k in FACET_ORDER else len(FACET_ORDER), len(counts[k]), k))
    return [{"key": k, "values": [{"value": v, "count": n} for v, n in sorted(counts[k].items(), key=lambda x: -x[1])]}
            for k in keys]


def warm_up(kb: KnowledgeBase) -> None:
    """One search at start-up, so the first user does not wait for jieba's dictionary (~1-2 s) or the encoder."""
    try:
        kb.search("warm up 预热", k=1)
    except Exception:  # best effort: a KB that cannot search reports it on the first real request
        pass


def create_app(kb_path: str | Path, api_key: str | None = None, generator: Generator | None = None,
               max_body: int = MAX_BODY) -> FastAPI:
    """The FastAPI application serving one KB."""
    snaps = Snapshots(kb_path)
    gen = generator or load_generator("extractive")
    threading.Thread(target=warm_up, args=(snaps.kb,), daemon=True).start()
    app = FastAPIOffline(title="picorag", version="0.1.0", favicon_url="/static/favicon.svg",
                         description="Local retrieval-augmented generation with citations. The web page is at `/`.")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "status": status}}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        path = request.url.path
        if api_key and path not in OPEN_PATHS and not path.startswith(DOCS_ASSETS):  # the page asks for the key
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            given = given or request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), api_key.encode()):  # constant time
                return error(401, "missing or wrong API key (Authorization: Bearer KEY)")
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > max_body):
            return error(413, f"request body over {max_body} bytes")  # refused before reading it
        try:
            return await call_next(request)
        except Exception as e:  # never a stack trace to the client
            while isinstance(e, ExceptionGroup) and e.exceptions:  # raised while the body streamed in
                e = e.exceptions[0]
            if isinstance(e, PicoragError):
                return error(413 if isinstance(e, BodyTooLarge) else 400, str(e))
            if reason := write_refused(e):  # staging an upload in the KB's folder on a full or read-only disk
                return error(507, f"could not write to the knowledge base ({reason}); it is unchanged")
            return error(500, f"internal error: {type(e).__name__}")

    def body_of(raw: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(raw or b"{}")
        except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            raise PicoragError(f"request body is not JSON ({getattr(e, 'msg', None) or e.reason})") from None
        if not isinstance(obj, dict):
            raise PicoragError("request body must be a JSON object")
        return obj

    def search_args(b: dict[str, Any]) -> dict[str, Any]:
        where = b.get("where") or None
        if where is not None and (not isinstance(where, dict) or
                                  not all(isinstance(v, str | list) for v in where.values())):
            raise PicoragError('"where" must be an object of key: value or key: [values]')
        k = b.get("k", 5)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 100:
            raise PicoragError('"k" must be an integer from 1 to 100')
        opts = {f: b[f] for f in SEARCH_FIELDS if b.get(f) is not None}
        for f, (kind, low) in OPTION_TYPES.items():
            v = opts.get(f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, kind) or (low is not None and v < low)):
                raise PicoragError(f'"{f}" must be ' + ("a string" if kind is str else f"a number >= {low}"))
        return {"k": k, "where": where, **opts}

    def max_tokens_of(b: dict[str, Any]) -> int:
        n = b.get("max_tokens") or 256
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 32768:
            raise PicoragError('"max_tokens" must be an integer from 1 to 32768')
        return n

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/kb")
    def kb_info() -> dict[str, Any]:
        """The KB's manifest summary, the generator, and the strategies that can work with both."""
        info = snaps.current().info()
        # hyde and step-back need a generator that writes; hyde also needs vectors (see strategies.py)
        usable = [s for s in STRATEGIES if s in ("plain", "multi-hop") or
                  (gen.can_write and (s != "hyde" or info["dense"]))]
        return {**info, "generator": {"name": gen.name, "can_write": gen.can_write}, "strategies": usable}

    facet_cache: dict[tuple[str, int], list[dict[str, Any]]] = {}

    @app.get("/facets")
    def kb_facets() -> dict[str, Any]:
        """Metadata keys and their values (with chunk counts), to filter searches by."""
        kb = snaps.current()
        stamp = (kb.manifest["updated"], kb.manifest["generation"])
        if stamp not in facet_cache:
            facet_cache.clear()
            facet_cache[stamp] = facets(kb)
        return {"facets": facet_cache[stamp]}

    @app.post("/search", openapi_extra=json_body(SEARCH_BODY, ["query"], {"query": "违约责任", "k": 5}))
    async def search(request: Request) -> dict[str, Any]:
        b = body_of(await request.body())
        query = b.get("query")
        if not isinstance(query, str):
            raise PicoragError('"query" (a string) is required')
        kb, t0 = snaps.current(), time.perf_counter()
        strategy = b.get("strategy", "plain")
        args = search_args(b)
        if strategy == "plain":
            hits = await run_in_threadpool(kb.search, query, **args)
        else:
            from .strategies import retrieve

            hits = (await run_in_threadpool(retrieve, kb, query, strategy, gen, **args))[0]
        return {"query": query, "mode": args.get("mode") or ("hybrid" if kb.manifest.get("dense") else "bm25"),
                "hits": [h.to_dict() for h in hits], "took_ms": (time.perf_counter() - t0) * 1000}

    def run_ask(question: str, b: dict[str, Any], history: list[dict[str, Any]], on_token: Any = None) -> Answer:
        if not isinstance(question, str):
            raise PicoragError('"question" (a string) is required')
        return ask(snaps.current(), question, gen, strategy=b.get("strategy", "plain"), history=history,
                   max_tokens=max_tokens_of(b), on_token=on_token, **search_args(b))

    def streamed(produce: Any, frame: Any) -> StreamingResponse:
        """Run `produce(on_token)` in a thread and stream what it yields as server-sent events."""
        import queue

        q: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                q.put(("done", produce(lambda t: q.put(("token", t)))))
            except Exception as e:  # reported to the client as an event, not a stack trace
                q.put(("error", str(e) if isinstance(e, PicoragError) else f"internal error: {type(e).__name__}"))

        threading.Thread(target=work, daemon=True).start()

        def events() -> Iterator[str]:
            while True:
                kind, value = q.get()
                yield from frame(kind, value)
                if kind != "token":
                    return

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/ask", openapi_extra=json_body(ASK_BODY, ["question"], {"question": "违约了要承担什么责任？"}))
    async def ask_endpoint(request: Request) -> Any:
        b = body_of(await request.body())
        if not b.get("stream"):
            return (await run_in_threadpool(run_ask, b.get("question"), b, [])).to_dict()
        run_ask_args = (b.get("question"), b, [])
        if not isinstance(run_ask_args[0], str) or not run_ask_args[0].strip():
            raise PicoragError('"question" (a non-empty string) is required')

        def frame(kind: str, value: Any) -> Iterator[str]:
            if kind == "token":
                yield f"event: token\ndata: {json.dumps({'text': value}, ensure_ascii=False)}\n\n"
            elif kind == "done":
                yield f"event: sources\ndata: {json.dumps(value.to_dict(), ensure_ascii=False)}\n\n"
                yield "event: done\ndata: {}\n\n"
            else:
                yield f"event: error\ndata: {json.dumps({'message': value}, ensure_ascii=False)}\n\n"

        return streamed(lambda on_token: run_ask(*run_ask_args, on_token=on_token), frame)

    @app.post("/documents", openapi_extra=DOCUMENTS_BODY)
    async def add_documents(request: Request) -> dict[str, Any]:
        """JSON {"documents": [{"id", "title", "content", ...}]} or multipart file uploads."""
        with tempfile.TemporaryDirectory(prefix="upload-", dir=snaps.path) as tmp:
            root = Path(tmp)
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                form = await request.form()
                files = [f for _, f in form.multi_items() if hasattr(f, "filename")]  # values() keeps one per field
                if not files:
                    raise PicoragError("no files in the upload")
                for f in files:
                    name = safe_upload_name(f.filename or "")
                    if (root / name).exists():
                        raise PicoragError(f"two uploaded files are named {name!r}")
                    with open(root / name, "wb") as out:  # name has no directory part: stays in tmp
                        shutil.copyfileobj(f.file, out)
            else:
                docs = body_of(await request.body()).get("documents")
                if not isinstance(docs, list) or not docs:
                    raise PicoragError('"documents" must be a non-empty list of {"id", "title", "content"}')
                with open(root / "documents.jsonl", "w", encoding="utf-8") as out:
                    for d in docs:
                        out.write(json.dumps(d, ensure_ascii=False) + "\n")
            warnings: list[str] = []
            try:
                stats = await run_in_threadpool(snaps.write, "add", [root], warn=warnings.append, id_root=root)
            except PicoragError as e:  # name the upload, not the server's temporary directory
                message = str(e).replace(f"{root}/documents.jsonl:", "document ").replace(f"{root}/", "")
                raise PicoragError(message) from None
            warnings = [w.replace(f"{root}/", "") for w in warnings]
        return {**stats, "warnings": warnings}

    @app.delete("/documents/{doc_id:path}")
    def delete_document(doc_id: str) -> dict[str, Any]:
        return snaps.write("delete", doc_ids=[doc_id])

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "picorag", "object": "model", "created": 0, "owned_by": "picorag"}]}

    @app.post("/v1/chat/completions", openapi_extra=json_body(CHAT_BODY, ["messages"], {
        "model": "picorag", "messages": [{"role": "user", "content": "违约了要承担什么责任？"}]}))
    async def chat_completions(request: Request) -> Any:
        b = body_of(await request.body())
        msgs = b.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise PicoragError('"messages" must be a non-empty list of {"role", "content"}')
        users = [i for i, m in enumerate(msgs) if m.get("role") == "user"]
        if not users or not isinstance(msgs[users[-1]].get("content"), str):
            raise PicoragError("the conversation needs a user message with text content")
        last = users[-1]
        history = [{"role": m["role"], "content": m["content"]} for m in msgs[:last]
                   if m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)]
        question = msgs[last]["content"]
        options = {**b, "max_tokens": max_tokens_of(b)}
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), b.get("model", "picorag")

        def sources_text(a: Answer) -> str:
            lines = [f"[{c['n']}] {c['citation']}" for c in a.citations]
            return "\n\nSources:\n" + "\n".join(lines) if lines else ""

        def sources(a: Answer) -> list[dict[str, Any]]:
            return [{**c, **document(next(h for h in a.hits if h.id == c["id"]))} for c in a.citations]

        if not b.get("stream"):
            a = await run_in_threadpool(run_ask, question, options, history)
            return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": a.text + sources_text(a)}}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                    "sources": sources(a)}

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def frame(kind: str, value: Any) -> Iterator[str]:
            if kind == "token":
                yield chunk({"content": value})
            elif kind == "done":
                yield chunk({"content": sources_text(value)}, "stop", sources=sources(value))
                yield "data: [DONE]\n\n"
            else:
                yield f"data: {json.dumps({'error': {'message': value}}, ensure_ascii=False)}\n\n"

        return streamed(lambda on_token: run_ask(question, options, history, on_token), frame)

    web = resources.files("picorag").joinpath("web")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return web.joinpath("index.html").read_text(encoding="utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            return error(404, f"no such file: {name}")
        return Response(web.joinpath(name).read_bytes(), media_type=STATIC[name], headers={"cache-control": "no-cache"})

    @app.exception_handler(PicoragError)
    async def bad_input(request: Request, exc: PicoragError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error(404, f"no such endpoint: {request.method} {request.url.path}")
        if exc.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}")
        return error(exc.status_code, str(exc.detail))

    app.add_middleware(BodyLimit, max_body=max_body)  # outside `guard`, which turns its error into a 413
    if api_key:  # lets /docs send the key ("Authorize")
        schema = app.openapi()
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    return app


def serve(kb_path: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          generator: Generator | None = None) -> None:
    """Run the server (blocking). Binding beyond loopback requires an API key."""
    import uvicorn

    api_key = api_key or os.environ.get("PICORAG_API_KEY") or None
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        raise PicoragError(f"binding to {host} exposes the KB beyond this machine: set --api-key or PICORAG_API_KEY")
    app = create_app(kb_path, api_key=api_key, generator=generator)
    print(f"picorag serving {kb_path} at http://{host}:{port}/  (API docs at /docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
