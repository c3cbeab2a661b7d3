"""BM25 scores against trusted references on the same tokens: bm25s (lucene) and rank-bm25 (robertson)."""

import gzip
import json
from pathlib import Path

import bm25s
import numpy as np
import pytest
import rank_bm25

from picorag.analyze import Analyzer
from picorag.bm25 import BM25Params, Postings, merge, query_weights, top_k

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCIFACT = SHARED / "beir" / "scifact"


@pytest.fixture(scope="module")
def corpus():
    if not SCIFACT.exists():
        pytest.skip("../shared/data not present")
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for _, line in zip(range(800), f)]
    queries = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open(encoding="utf-8")][:40]
    a = Analyzer()
    return [a.tokenize(d["title"] + " " + d["text"]) for d in docs], [a.tokenize(q) for q in queries]


def our_scores(docs, query, params):
    ix = Postings.from_tokens(docs)
    w = ix.weights(params, ix.total_len / ix.n_docs)
    dfs = {t: ix.df(t) for t in set(query)}
    rows, scores = top_k(ix, w, query_weights(query, dfs, ix.n_docs, params), k=ix.n_docs)
    full = np.zeros(ix.n_docs)
    full[rows] = scores
    return full, rows


def test_lucene_matches_bm25s(corpus):
    docs, queries = corpus
    # bm25s sees each distinct query token once, so compare on de-duplicated queries
    ref = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    vocab = {t: i for i, t in enumerate(sorted({t for d in docs for t in d}))}
    ref.index(bm25s.tokenization.Tokenized(ids=[[vocab[t] for t in d] for d in docs], vocab=vocab),
              show_progress=False)
    checked = 0
    for q in queries:
        q = list(dict.fromkeys(t for t in q if t in vocab))
        if not q:
            continue
        expected = ref.get_scores(q)
        got, rows = our_scores(docs, q, BM25Params(method="lucene"))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert list(rows[:10]) == list(np.lexsort((np.arange(len(docs)), -expected))[:10])
        checked += 1
    assert checked >= 30


def test_robertson_matches_rank_bm25(corpus):
    docs, queries = corpus
    ref = rank_bm25.BM25Okapi(docs, k1=1.2, b=0.75)
    n = len(docs)
    for q in queries:
        q = [t for t in q if t in ref.idf]
        # rank-bm25 floors negative idf (terms in over half the docs) at epsilon * mean idf; we floor
        # at 0, so compare on queries free of such terms
        if not q or any(ref.idf[t] <= 0 or sum(t in set(d) for d in docs) > n / 2 for t in q):
            continue
        got, rows = our_scores(docs, q, BM25Params(k1=1.2, b=0.75, method="robertson"))
        expected = ref.get_scores(q)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert list(rows[:5]) == list(np.lexsort((np.arange(n), -expected))[:5])


def test_filters_apply_before_top_k():
    docs = [["apple"] * 5, ["apple"] * 4, ["apple"], ["pear"]]
    ix = Postings.from_tokens(docs)
    w = ix.weights(BM25Params(), ix.total_len / ix.n_docs)
    q = query_weights(["apple"], {"apple": 3}, 4, BM25Params())
    allowed = np.array([False, False, True, True])
    rows, _ = top_k(ix, w, q, k=1, allowed=allowed)
    assert rows.tolist() == [2]  # the best *allowed* match, not an empty list
    rows, _ = top_k(ix, w, q, k=10)
    assert rows.tolist() == [0, 1, 2]  # only rows that contain a query term


def test_merge_equals_fresh_index():
    a = [["x", "y"], ["y", "z", "z"], ["q"]]
    b = [["x"], ["w", "x", "x"]]
    live_a = np.array([True, False, True])
    merged = merge([(Postings.from_tokens(a), live_a), (Postings.from_tokens(b), np.ones(2, bool))])
    fresh = Postings.from_tokens([a[0], a[2], *b])
    for t in ["x", "y", "z", "q", "w"]:
        assert merged.df(t) == fresh.df(t)
        i, j = merged.term_id.get(t), fresh.term_id.get(t)
        if j is None:
            assert i is None  # "z" lived only in the deleted row
            continue
        sl = slice(merged.indptr[i], merged.indptr[i + 1])
        sf = slice(fresh.indptr[j], fresh.indptr[j + 1])
        assert merged.rows[sl].tolist() == fresh.rows[sf].tolist()
        assert merged.tf[sl].tolist() == fresh.tf[sf].tolist()
    assert merged.doclen.tolist() == fresh.doclen.tolist()


def test_params_validated():
    from picorag.records import PicoragError

    with pytest.raises(PicoragError):
        BM25Params(method="bm99")
    with pytest.raises(PicoragError):
        BM25Params(b=2)


def test_batched_scoring_equals_one_by_one(corpus):
    from picorag.bm25 import top_k_many

    docs, queries = corpus
    params = BM25Params()
    ix = Postings.from_tokens(docs)
    w = ix.weights(params, ix.total_len / ix.n_docs)
    qws = [query_weights(q, {t: ix.df(t) for t in set(q)}, ix.n_docs, params) for q in queries]
    allowed = np.arange(ix.n_docs) % 3 != 0
    for mask in (None, allowed):
        for (r1, s1), qw in zip(top_k_many(ix, w, qws, 10, mask), qws, strict=True):
            r2, s2 = top_k(ix, w, qw, 10, mask)
            assert r1.tolist() == r2.tolist()
            np.testing.assert_allclose(s1, s2, rtol=1e-6)


@pytest.mark.parametrize("n_docs", [12, 400])  # few postings (sparse path) and many (dense path)
def test_top_k_equals_brute_force_with_ties_and_masks(n_docs):
    """Duplicate documents make exact score ties: the k best must be the lowest rows among equals,
    identical in both selection paths, and rows matching no term are never hits."""
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(6)] + [f"rare{i}" for i in range(n_docs)]
    base = [list(rng.choice(vocab[:6], size=rng.integers(1, 5))) for _ in range(n_docs // 4)]
    docs = [base[i % len(base)] if i % 5 else [vocab[6 + i]] for i in range(n_docs)]  # many exact duplicates
    params = BM25Params()
    ix = Postings.from_tokens(docs)
    w = ix.weights(params, ix.total_len / ix.n_docs)
    for query in (["w0"], ["w1", "w2"], ["w3", "rare5", "w4"], ["rare10"], ["absent"]):
        qw = query_weights(query, {t: ix.df(t) for t in set(query)}, ix.n_docs, params)
        full = np.zeros(ix.n_docs)
        for t, wt in qw.items():
            i = ix.term_id[t]
            full[ix.rows[ix.indptr[i]:ix.indptr[i + 1]]] += w[ix.indptr[i]:ix.indptr[i + 1]] * np.float32(wt)
        for mask in (None, np.arange(ix.n_docs) % 3 != 1):
            s = full if mask is None else full * mask
            want = sorted(np.flatnonzero(s), key=lambda r: (-s[r], r))
            for k in (1, 3, 10, n_docs + 5):
                rows, scores = top_k(ix, w, qw, k, mask)
                assert rows.tolist() == want[:k], (query, k)
                np.testing.assert_allclose(scores, s[want[:k]], rtol=1e-6)
