"""Metrics on hand-computed cases, dataset loaders, and an end-to-end eval on a tiny KB."""

import json
import math

import pytest

from picorag.evaluate import evaluate, hit_at, load_beir, mrr_at, ndcg_at, recall_at
from picorag.kb import KnowledgeBase
from picorag.records import PicoragError


def test_metrics_hand_computed():
    rels = [0, 0, 1, 0, 1]
    assert hit_at(rels, 2) == 0.0 and hit_at(rels, 3) == 1.0
    assert mrr_at(rels, 5) == pytest.approx(1 / 3)
    assert mrr_at(rels, 2) == 0.0
    # two relevant docs at ranks 3 and 5, three relevant overall
    dcg = 1 / math.log2(4) + 1 / math.log2(6)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at(rels, [1, 1, 1], 10) == pytest.approx(dcg / idcg)
    assert recall_at(rels, 3, 100) == pytest.approx(2 / 3)
    assert recall_at(rels, 3, 3) == pytest.approx(1 / 3)
    # graded relevance: linear gain, ideal ordering by grade
    assert ndcg_at([1, 2], [2, 1], 10) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert ndcg_at([], [1], 10) == 0.0 and ndcg_at([1], [], 10) == 0.0


def make_beir(tmp_path):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    docs = [{"_id": "d1", "title": "Aspirin", "text": "Aspirin reduces fever and pain."},
            {"_id": "d2", "title": "Insulin", "text": "Insulin lowers blood sugar."},
            {"_id": "d3", "title": "Vitamin", "text": "Vitamin C is found in citrus fruit."}]
    (d / "corpus.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    qs = [{"_id": "q1", "text": "what lowers blood sugar"}, {"_id": "q2", "text": "fever pain relief"},
          {"_id": "q3", "text": "unjudged query"}]
    (d / "queries.jsonl").write_text("".join(json.dumps(x) + "\n" for x in qs))
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td1\t1\nq2\td3\t0\n")
    return d


def test_beir_end_to_end(tmp_path):
    d = make_beir(tmp_path)
    queries = load_beir(d)
    assert [q.qid for q in queries] == ["q1", "q2"]  # unjudged and zero-score judgments dropped
    kb = KnowledgeBase.build(tmp_path / "kb", [d / "corpus.jsonl"])
    res = evaluate(lambda q, n: kb.search(q, k=n), d, k=5)
    assert res["n"] == 2 and res["hit@5"] == 1.0 and res["mrr@5"] == 1.0 and res["ndcg@10"] == 1.0
    assert res["qps"] > 0


def test_gold_jsonl_by_metadata_and_tags(tmp_path):
    src = tmp_path / "law.jsonl"
    src.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in [
        {"id": "a1", "content": "盗窃公私财物数额较大的处三年以下有期徒刑", "law": "刑法", "article": "第二百六十四条"},
        {"id": "a2", "content": "诈骗公私财物数额较大的处三年以下有期徒刑", "law": "刑法", "article": "第二百六十六条"},
    ]), encoding="utf-8")
    kb = KnowledgeBase.build(tmp_path / "kb", [src])
    ev = tmp_path / "eval.jsonl"
    ev.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in [
        {"sample_id": "s1", "tag": "semantic", "query": "盗窃", "gold": {"law": "刑法", "article": "第二百六十四条"}},
        {"sample_id": "s2", "tag": "semantic", "query": "诈骗", "gold": {"law": "刑法", "article": "第二百六十六条"}},
        {"sample_id": "s3", "tag": "locate", "query": "诈骗", "gold": {"law": "刑法", "article": "第二百六十四条"}},
    ]), encoding="utf-8")
    res = evaluate(lambda q, n: kb.search(q, k=n), ev, k=1)
    assert res["hit@1"] == pytest.approx(2 / 3)
    assert res["by_tag"]["semantic"]["hit@1"] == 1.0 and res["by_tag"]["locate"]["hit@1"] == 0.0
    assert res["by_tag"]["locate"]["n"] == 1
    with pytest.raises(PicoragError, match="gold has no chapter"):
        evaluate(lambda q, n: kb.search(q, k=n), ev, match=["law", "chapter"])


def test_bad_datasets(tmp_path):
    with pytest.raises(PicoragError, match="not found"):
        evaluate(lambda q, n: [], tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(PicoragError, match="queries.jsonl is missing"):
        load_beir(tmp_path / "d")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "x", "gold": {"law": "a", "article": "b"}}\n{oops\n')
    with pytest.raises(PicoragError, match=r"bad.jsonl:2: malformed JSON"):
        evaluate(lambda q, n: [], bad)
