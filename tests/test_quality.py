"""Retrieval quality on the shared eval sets, so a regression fails the suite (targets from the issue)."""

from pathlib import Path

import pytest

from picorag.evaluate import evaluate
from picorag.kb import KnowledgeBase

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")


def test_law_set_bm25(tmp_path):
    kb = KnowledgeBase.build(tmp_path / "kb", [SHARED / "law" / "corpus"])
    res = evaluate(lambda q, n: kb.search(q, k=n), SHARED / "law" / "eval" / "law_eval_set.jsonl", k=5)
    assert res["n"] == 100
    assert res["hit@5"] >= 0.98 and res["mrr@5"] >= 0.975, res


def test_scifact_bm25(tmp_path):
    d = SHARED / "beir" / "scifact"
    kb = KnowledgeBase.build(tmp_path / "kb", [d / "corpus.jsonl.gz"])
    assert kb.info()["docs"] == 5183
    res = evaluate(lambda q, n: kb.search(q, k=n), d, k=10)
    assert res["n"] == 300
    assert res["ndcg@10"] >= 0.67, res
