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
