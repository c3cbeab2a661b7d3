"""Faults a KB must survive with a clear error and its old state intact: disk full, read-only
filesystem, two writers, readers during writes, enormous inputs; plus regressions found by
tests/test_fuzz.py."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from picorag.kb import KnowledgeBase
from picorag.server import create_app


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


DOCS = [{"id": f"d{i}", "title": f"Doc {i}", "content": f"document number {i} about cats and dogs"} for i in range(5)]


@pytest.fixture
def kb(tmp_path):
    return KnowledgeBase.build(tmp_path / "kb", [write_jsonl(tmp_path / "docs.jsonl", DOCS)])


# -- regressions found by the fuzzer -------------------------------------------------------------------


def test_http_body_that_is_not_utf8_is_a_400(kb):
    with TestClient(create_app(kb.path), raise_server_exceptions=False) as c:
        for body in (b"\x80", b"\xff\xfe{}", b"\x00\x00"):
            r = c.post("/search", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"], r.text


def test_damaged_kb_files_are_one_clear_error(kb):
    """Found by fuzzing: a truncated .npy (EOFError), a manifest with wrong types (TypeError), a
    SQLite file that is not a database, rows past the end (IndexError) all surfaced as tracebacks."""
    import shutil

    import numpy as np

    from picorag.records import PicoragError

    seg = kb.path / "segments" / kb.manifest["segments"][0]["name"]
    pristine = kb.path.parent / "pristine"
    shutil.copytree(kb.path, pristine)

    def damage(fn) -> str:
        shutil.rmtree(kb.path)
        shutil.copytree(pristine, kb.path)
        fn()
        with pytest.raises(PicoragError, match="damaged") as e:
            with KnowledgeBase.open(kb.path) as opened:
                opened.search("cats")
                opened.add([write_jsonl(kb.path.parent / "more.jsonl", [{"id": "x", "content": "x"}])])
                opened.compact()
        return str(e.value)

    def manifest(**changes):
        m = json.loads((kb.path / "manifest.json").read_text())
        for k, v in changes.items():
            m["segments"][0][k] = v if k != "top" else None
        (kb.path / "manifest.json").write_text(json.dumps(m))

    assert "docs.npy" not in damage(lambda: (seg / "docs.npy").write_bytes((seg / "docs.npy").read_bytes()[:70]))
    damage(lambda: (seg / "chunks.sqlite").write_bytes(b"not a database" * 100))
    assert "segments[0]" in damage(lambda: manifest(chunks="5"))
    assert "not a segment name" in damage(lambda: manifest(name="../../etc"))

    def rows_past_the_end():
        rows = np.load(seg / "bm25.rows.npy")
        rows[0] = 10**6
        np.save(seg / "bm25.rows.npy", rows)
        kb.delete(doc_ids=["d1"])  # so compact has work to do

    assert "bm25.rows points past the last chunk" in damage(rows_past_the_end)
