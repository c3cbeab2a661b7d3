"""Property-based fuzzing (hypothesis): bad input never crashes picorag and never touches the KB.

Invariants, for every generated input:
- the Python API returns normally or raises PicoragError (never another exception);
- the CLI (run in-process through `main()`) exits 0, 1 with one `picorag: error:` line, or 2 for bad
  usage (argparse), never 3 (internal error) and never a traceback;
- HTTP answers < 500, and every 4xx is a JSON `{"error": {"message"}}`;
- a rejected write leaves every file of the KB byte-identical.

`make test` runs a few examples per property; `PICORAG_FUZZ_EXAMPLES=N` raises it (bench/stress.py
runs 10,000 inputs in all) and `PICORAG_FUZZ_REPORT=FILE` writes the per-property counts as JSON.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import string
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from picorag.cli import main
from picorag.kb import KnowledgeBase
from picorag.records import PicoragError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_ingest import make_pdf  # noqa: E402

N = int(os.environ.get("PICORAG_FUZZ_EXAMPLES", "12"))
FUZZ = settings(max_examples=N, deadline=None, derandomize=N <= 50, database=None,
                suppress_health_check=list(HealthCheck))
COUNTS: Counter = Counter()  # inputs tried per property, and how many were rejected with a clear error

DOCS = [
    {"id": "cat", "title": "Cats", "content": "Cats purr and sleep all day.", "topic": "pets", "n": 3},
    {"id": "dog", "title": "Dogs", "content": "Dogs bark at the mail carrier.", "topic": "pets"},
    {"id": "law", "title": "民法典", "content": "当事人一方因不可抗力不能履行合同的，部分或者全部免除责任。",
     "topic": "法"},
    {"id": "tea", "title": "Tea", "content": "Green tea is brewed at eighty degrees.", "topic": "food"},
]


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    out = os.environ.get("PICORAG_FUZZ_REPORT")
    if out:
        old = json.loads(Path(out).read_text()) if Path(out).exists() else {}
        Path(out).write_text(json.dumps({**old, **COUNTS}, indent=1, sort_keys=True))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A KB with two segments and a tombstone file, so every kind of file exists."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "a.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in DOCS), encoding="utf-8")
    (d / "b.jsonl").write_text(json.dumps({"id": "owl", "content": "Owls hunt at night."}) + "\n")
    kb = KnowledgeBase.build(d / "kb", [d / "a.jsonl"])
    kb.add([d / "b.jsonl"])
    kb.delete(doc_ids=["tea"])
    return d / "kb"


@contextlib.contextmanager
def kb_copy(template: Path):
    with tempfile.TemporaryDirectory(prefix="fuzzkb-") as tmp:
        dst = Path(tmp) / "kb"
        shutil.copytree(template, dst)
        yield dst


def snapshot(path: Path) -> dict[str, str]:
    """Every file under `path` with its content hash: equal snapshots = nothing was written."""
    return {p.relative_to(path).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def cli(*argv: str) -> tuple[int, str, str]:
    """Run `picorag ARGV` in-process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as e:  # argparse: bad usage
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def check_cli(rc: int, err: str, name: str) -> None:
    assert "Traceback" not in err, err
    assert rc in (0, 1, 2), f"exit {rc}: {err}"
    if rc == 1:
        lines = [ln for ln in err.splitlines() if not ln.startswith("picorag: warning:")]
        assert len(lines) == 1 and lines[0].startswith("picorag: error: "), err
    if rc == 2:
        assert "error:" in err.splitlines()[-1], err
    COUNTS[name] += 1
    COUNTS[f"{name}.rejected"] += rc != 0


def api_call(fn, name: str) -> object | None:
    """fn() must return or raise PicoragError; count the input and whether it was rejected."""
    COUNTS[name] += 1
    try:
        return fn()
    except PicoragError as e:
        assert str(e) and "\n" not in str(e).strip(), repr(e)
        COUNTS[f"{name}.rejected"] += 1
        return None


# -- queries and filters ---------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(codec=None), max_size=200)  # any code point, surrogates included
QUERIES = st.one_of(
    ANY_TEXT,
    st.text(st.characters(min_codepoint=0, max_codepoint=0x1F), max_size=20),  # control characters
    st.sampled_from(["", " ", "\x00", "\ufeff", "*", "AND OR NOT", '"', "\\", "%", "'; DROP TABLE chunks;--"]),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=8), st.integers(1000, 200_000)),  # huge
)
WHERE_KEYS = st.one_of(st.text(max_size=20), st.sampled_from(["topic", "n", "$", "a.b", "a[0]", "'", "meta", "*"]))
WHERE_VALUES = st.one_of(st.text(max_size=20), st.sampled_from(["pets", "3", "法", "null", ""]))


@FUZZ
@given(q=QUERIES, k=st.integers(-3, 10**6), where=st.none() | st.dictionaries(
    WHERE_KEYS, WHERE_VALUES | st.lists(WHERE_VALUES, max_size=3), max_size=3), fetch=st.booleans())
def test_api_search_any_query(template, q, k, where, fetch):
    kb = KnowledgeBase.open(template)
    hits = api_call(lambda: kb.search(q, k=k, where=where, fetch=fetch), "api.search")
    if hits is not None:
        assert len(hits) <= k and all(h.id for h in hits)
    kb.close()


@FUZZ
@given(q=QUERIES, k=st.sampled_from(["5", "0", "-1", "x", "1e9", "99999999999999999999"]),
       where=st.lists(st.one_of(st.text(max_size=20), st.sampled_from(["=", "a=", "=b", "a==b", 'a"=b', "topic=pets"])),
                      max_size=3),
       mode=st.sampled_from([[], ["--mode", "bm25"], ["--mode", "dense"], ["--mode", "hybrid"], ["--json"]]))
def test_cli_search_any_query(template, q, k, where, mode):
    argv = ["search", str(template), q, "-k", k, *mode]
    for w in where:
        argv += [f"--where={w}"]
    rc, out, err = cli(*argv)
    check_cli(rc, err, "cli.search")
    if rc == 0 and "--json" in mode:
        json.loads(out)


# -- documents: JSONL records, odd encodings, binary files named .pdf/.pptx/.jsonl.gz ----------------

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), ANY_TEXT.filter(
    lambda s: not any("\ud800" <= c <= "\udfff" for c in s)))
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
FIELD = st.sampled_from(["id", "_id", "title", "content", "text", "source", "metadata", "meta", ""])
RECORD = st.one_of(
    st.dictionaries(FIELD | st.text(max_size=8), JSON_VALUE, max_size=6),  # wrong types, missing fields
    st.fixed_dictionaries({"id": st.text(max_size=10) | st.integers(), "content": st.text(max_size=300)}),
    st.fixed_dictionaries({"id": st.just("giant"),
                           "content": st.builds(lambda n: "word " * n, st.integers(1, 200_000))}),
    JSON_VALUE,  # not an object at all
)
LINE = st.one_of(RECORD.map(lambda r: json.dumps(r, ensure_ascii=False)),
                 st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
                 st.sampled_from(["{", "[]", "null", '{"id": "x", "content": "a"', "\ufeff{}", " "]))


def rejected_writes_change_nothing(kb_path: Path, files: list[Path], name: str) -> None:
    """`add` the files through the API; a rejection must leave the KB byte-identical, an accepted
    add must leave a KB that opens and searches."""
    before = snapshot(kb_path)
    kb = KnowledgeBase.open(kb_path)
    stats = api_call(lambda: kb.add(files, warn=lambda m: None), name)
    kb.close()
    if stats is None:
        assert snapshot(kb_path) == before
    else:
        kb = KnowledgeBase.open(kb_path)
        assert kb.info()["docs"] >= 4
        kb.search("cats")
        kb.close()


@FUZZ
@given(lines=st.lists(LINE, min_size=1, max_size=6), gz=st.booleans())
def test_jsonl_records(template, lines, gz):
    with kb_copy(template) as kb_path, tempfile.TemporaryDirectory() as tmp:
        data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
        f = Path(tmp) / ("in.jsonl.gz" if gz else "in.jsonl")
        f.write_bytes(gzip.compress(data) if gz else data)
        rejected_writes_change_nothing(kb_path, [f], "api.add.jsonl")


ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "gb18030", "big5", "shift_jis",
             "euc-kr", "koi8-r", "cp1252", "latin-1", "cp437", "mac-roman"]


@FUZZ
@given(text=ANY_TEXT | st.text(string.printable + "中文合同第一条ÄÖü", max_size=500), enc=st.sampled_from(ENCODINGS),
       suffix=st.sampled_from([".txt", ".md"]), junk=st.binary(max_size=20))
def test_text_files_in_odd_encodings(template, text, enc, suffix, junk):
    with kb_copy(template) as kb_path, tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / f"doc{suffix}"
        f.write_bytes(text.encode(enc, "replace") + junk)
        rejected_writes_change_nothing(kb_path, [f], "api.add.text")


def _mutate(data: bytes, how: str, pos: int, junk: bytes) -> bytes:
    pos = pos % (len(data) + 1)
    if how == "truncate":
        return data[:pos]
    if how == "flip":
        return data[:pos] + junk + data[pos + len(junk):]
    if how == "insert":
        return data[:pos] + junk + data[pos:]
    return junk  # replace


MUTATION = st.tuples(st.sampled_from(["truncate", "flip", "insert", "replace"]), st.integers(0, 10**6),
                     st.binary(min_size=1, max_size=64))


@FUZZ
@given(kind=st.sampled_from([".pdf", ".pptx", ".jsonl.gz", ".md"]), base=st.sampled_from(["random", "valid"]),
       mutation=MUTATION)
def test_binary_files_named_as_documents(template, kind, base, mutation):
    valid = {".pdf": make_pdf([["Hello fuzz page one"], ["Second page text"]]),
             ".jsonl.gz": gzip.compress(b'{"id": "z", "content": "zebra"}\n'),
             ".pptx": b"PK\x03\x04" + bytes(100), ".md": b"# Title\n\nBody text.\n"}[kind]
    with kb_copy(template) as kb_path, tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / f"blob{kind}"
        f.write_bytes(_mutate(valid, *mutation) if base == "valid" else mutation[2] * 50)
        rejected_writes_change_nothing(kb_path, [f], "api.add.binary")


@FUZZ
@given(lines=st.lists(LINE, min_size=1, max_size=3))
def test_cli_add_rejects_cleanly(template, lines):
    with kb_copy(template) as kb_path, tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "in.jsonl"
        f.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
        before = snapshot(kb_path)
        rc, _, err = cli("add", str(kb_path), str(f))
        check_cli(rc, err, "cli.add")
        if rc != 0:
            assert snapshot(kb_path) == before


# -- damaged KB files ----------------------------------------------------------------------------------

KB_FILES = ["manifest.json", "chunks.sqlite", "docs.npy", "chunkno.npy", "bm25.indptr.npy", "bm25.rows.npy",
            "bm25.tf.npy", "bm25.weights.npy", "bm25.doclen.npy", "bm25.terms.json", "del-*.npy"]


def _use_damaged_kb(kb_path: Path, name: str) -> None:
    """Every read and write on a damaged KB works or fails with a PicoragError."""

    def session() -> None:
        with KnowledgeBase.open(kb_path) as kb:
            kb.info()
            for q, where in [("cats", None), ("合同 责任", None), ("dogs owls", {"topic": "pets"})]:
                kb.search(q, k=3, where=where)
                kb.search(q, k=3, fetch=False)
            kb.add([kb_path.parent / "new.jsonl"])
            kb.delete(doc_ids=["cat"])
            kb.compact()
            kb.search("owls")

    (kb_path.parent / "new.jsonl").write_text(json.dumps({"id": "new", "content": "brand new owls"}) + "\n")
    api_call(session, name)
    rc, _, err = cli("search", str(kb_path), "cats")
    check_cli(rc, err, "cli.search.damaged")


@FUZZ
@given(target=st.sampled_from(KB_FILES), which=st.integers(0, 1), mutation=MUTATION)
@example(target="chunks.sqlite", which=0, mutation=("flip", 114651, b"\x00"))  # found: NULLs reach delete
@example(target="chunks.sqlite", which=0, mutation=("flip", 114652, b"\x00"))  # found: a two-line error
@example(target="bm25.tf.npy", which=0, mutation=("flip", 762066, b"\x00\x00\x00"))  # found: TokenError
def test_damaged_kb_files(template, target, which, mutation):
    with kb_copy(template) as kb_path:
        if target == "manifest.json":
            f = kb_path / target
        else:
            found = sorted((kb_path / "segments").glob(f"*/{target}"))
            f = found[which % len(found)]
        f.write_bytes(_mutate(f.read_bytes(), *mutation))
        _use_damaged_kb(kb_path, "api.damaged_file")


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@FUZZ
@given(pick=st.integers(0, 10**6), value=JSON_VALUE | st.integers(-(2**40), 2**40), drop=st.booleans())
@example(pick=1, value="1", drop=False)  # found: "version": "1" was a TypeError in read_manifest
def test_manifest_with_wrong_values(template, pick, value, drop):
    """Valid JSON, wrong content: a missing key, a string where a list belongs, a negative count..."""
    with kb_copy(template) as kb_path:
        manifest = json.loads((kb_path / "manifest.json").read_text())
        paths = [p for p in _paths(manifest) if p]
        path = paths[pick % len(paths)]
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        if drop:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
        (kb_path / "manifest.json").write_text(json.dumps(manifest))
        _use_damaged_kb(kb_path, "api.damaged_manifest")


# -- HTTP request bodies -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(template, tmp_path_factory):
    from fastapi.testclient import TestClient

    from picorag.server import create_app

    kb_path = tmp_path_factory.mktemp("http") / "kb"
    shutil.copytree(template, kb_path)
    with TestClient(create_app(kb_path, max_body=100_000), raise_server_exceptions=False) as c:
        yield c, kb_path


def check_http(r, name: str) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.json()["error"]["message"], r.text
    COUNTS[name] += 1
    COUNTS[f"{name}.rejected"] += r.status_code >= 400


BODY = st.one_of(
    st.fixed_dictionaries({}, optional={"query": JSON_VALUE, "question": JSON_VALUE, "k": JSON_VALUE,
                                        "where": JSON_VALUE, "mode": JSON_VALUE, "strategy": JSON_VALUE,
                                        "fusion": JSON_VALUE, "cut": JSON_VALUE, "recall_factor": JSON_VALUE,
                                        "nprobe": JSON_VALUE, "max_tokens": JSON_VALUE, "stream": st.booleans(),
                                        "messages": JSON_VALUE | st.lists(st.dictionaries(
                                            st.sampled_from(["role", "content"]), JSON_VALUE), max_size=3)}),
    JSON_VALUE,
).map(lambda b: json.dumps(b).encode()) | st.binary(max_size=200)


@FUZZ
@given(endpoint=st.sampled_from(["/search", "/ask", "/v1/chat/completions"]), body=BODY)
def test_http_bodies(client, endpoint, body):
    c, _ = client
    r = c.post(endpoint, content=body, headers={"content-type": "application/json"})
    check_http(r, "http.read")


@FUZZ
@given(body=st.one_of(st.fixed_dictionaries({"documents": st.lists(RECORD, max_size=3) | JSON_VALUE}),
                      JSON_VALUE).map(lambda b: json.dumps(b).encode()) | st.binary(max_size=100),
       name=st.one_of(st.text(max_size=40), st.sampled_from(["../../x.md", "/etc/passwd.md", "..\\a.txt", "a/.b.md",
                                                             "x.pdf", "%2e%2e/y.md", "\u202enote.md"])),
       data=st.binary(max_size=300), as_file=st.booleans())
def test_http_documents(client, body, name, data, as_file):
    c, kb_path = client
    outside = sorted(p.name for p in kb_path.parent.iterdir())
    before = snapshot(kb_path)
    if as_file:
        r = c.post("/documents", files={"file": (name, data, "application/octet-stream")})
    else:
        r = c.post("/documents", content=body, headers={"content-type": "application/json"})
    check_http(r, "http.documents")
    if r.status_code >= 400:
        assert snapshot(kb_path) == before
    assert sorted(p.name for p in kb_path.parent.iterdir()) == outside  # nothing escaped the KB directory
    assert not [p for p in kb_path.iterdir() if p.name.startswith("upload-")]
