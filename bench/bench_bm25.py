"""Foundation benchmark: picorag BM25 vs bm25s vs rank-bm25 on BEIR SciFact, plus the law set.

    .venv/bin/python bench/bench_bm25.py

One process, one thread (thread pools capped before numpy loads; bm25s with its numpy backend and
n_threads=0, numba not used). Writes bench/out/bm25.md and bench/out/bm25.json, plots
docs/img/bm25_scifact.png and prints the markdown report.

What is measured, per library, the way a user would call it:
  quality     nDCG@10, recall@100, MRR@10 on the 300 SciFact test queries with picorag.evaluate's
              metric functions over doc-level rankings (picorag chunks -> their doc ids).
  build       from the corpus file (read + parse + tokenize + index; picorag's KnowledgeBase.build
              also chunks, writes SQLite and fsyncs), and the BM25-only part on pre-tokenized docs.
  queries/s   end-to-end from the raw query string (each library's own tokenizer) and scoring-only
              from pre-tokenized queries; top-10; best of several passes over all 300 queries.

Times are CPU seconds of the process by default (the dev machine is shared, and CPU time of
single-threaded work does not count the moments another process had the core); wall-clock is
recorded next to it in the JSON and quoted in the report. --wall reports wall-clock instead.
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from common import limit_threads

limit_threads(1)  # before numpy is imported anywhere

import bm25s
import numpy as np
import rank_bm25
import Stemmer
from common import (
    DATA,
    IMG,
    OUT,
    bar_panel,
    cpu_info,
    fmt,
    git_commit,
    md_table,
    peak_rss_mb,
    per_second,
    pyplot,
    repeat_time,
    timed2,
    versions,
    write_json,
    write_text,
)

from picorag.analyze import Analyzer
from picorag.bm25 import BM25Params, Postings, query_weights, top_k, top_k_many
from picorag.evaluate import evaluate, load_beir, mrr_at, ndcg_at, recall_at
from picorag.kb import KnowledgeBase
from picorag.retrieve import bm25_ranked, to_hits

SCIFACT = DATA / "beir" / "scifact"
LAW = DATA / "law"
K = 10  # results per query in the timed runs
DEPTH = 100  # results per query for the quality metrics (recall@100)
WHOLE_DOC_CHUNK = 2048  # the longest SciFact abstract is 1,524 chunker tokens: one chunk per doc
BM25S_REF = 0.6863  # data/beir/README.md: bm25s 0.3.16, same tokenization
CLOCK = {"name": "cpu"}  # which clock the report uses; --wall switches to wall-clock
PARAMS = BM25Params()  # k1=1.5, b=0.75, lucene: the same settings as bm25s' defaults


# -- data ----------------------------------------------------------------------------------------


def load_corpus() -> tuple[list[str], list[str]]:
    """SciFact doc ids and 'title text' strings, as a bm25s / rank-bm25 user would prepare them."""
    ids, texts = [], []
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            ids.append(d["_id"])
            texts.append(d["title"] + " " + d["text"])
    return ids, texts


def quality(rankings: list[list[str]], queries: list) -> dict[str, float]:
    """Mean nDCG@10, recall@100, MRR@10 of doc-id rankings (same code as picorag.evaluate)."""
    nd, rec, mrr = [], [], []
    for docs, q in zip(rankings, queries, strict=True):
        rels = [q.qrels.get(d, 0.0) for d in docs]
        nd.append(ndcg_at(rels, list(q.qrels.values()), 10))
        rec.append(recall_at(rels, len(q.qrels), 100))
        mrr.append(mrr_at(rels, 10))
    n = len(queries)
    return {"ndcg@10": sum(nd) / n, "recall@100": sum(rec) / n, "mrr@10": sum(mrr) / n}


def secs(t: dict[str, float]) -> float:
    """The figure reported for a timing from common.repeat_time: best CPU or best wall seconds."""
    return t["best_cpu_s"] if CLOCK["name"] == "cpu" else t["best_s"]


def best(fn, repeat: int, warmup: int = 0, min_time: float = 0.0) -> float:
    return secs(repeat_time(fn, repeat=repeat, warmup=warmup, min_time=min_time))


def qps(fn, n: int, repeat: int = 5, warmup: int = 1, min_time: float = 1.5) -> dict[str, float]:
    """Queries/s of `fn` (one pass over n queries): best pass of >= `repeat` passes and >= `min_time` s."""
    t = repeat_time(fn, repeat=repeat, warmup=warmup, min_time=min_time)
    return {**t, "queries": n, "qps": per_second(n, secs(t)), "qps_wall": per_second(n, t["best_s"]),
            "qps_cpu": per_second(n, t["best_cpu_s"])}


# -- picorag -------------------------------------------------------------------------------------


def kb_doc_ranking(kb: KnowledgeBase, text: str, n: int = DEPTH) -> list[str]:
    """Top n distinct doc ids; a doc ranks at its best chunk (as picorag.evaluate does)."""
    want = n * 3
    while True:
        hits = kb.search(text, want)
        docs = list(dict.fromkeys(h.doc_id for h in hits))
        if len(docs) >= n or len(hits) < want:
            return docs[:n]
        want *= 2


def core_search(ix: Postings, weights: np.ndarray, terms: list[str], k: int,
                live: np.ndarray | None = None) -> np.ndarray:
    """What KnowledgeBase.search does between tokenizing and fetching hits (one segment)."""
    dfs = {t: ix.df(t) for t in set(terms)}
    return top_k(ix, weights, query_weights(terms, dfs, ix.n_docs, PARAMS), k, live)[0]


def bench_picorag_kb(name: str, tmp: Path, queries: list, q_texts: list[str], chunk_size: int | None,
                     repeat: int) -> tuple[dict[str, Any], KnowledgeBase]:
    opts = {} if chunk_size is None else {"chunk_size": chunk_size}
    wall, cpu = [], []
    for i in range(repeat):  # a fresh directory each time: the cold build a user runs
        path = tmp / f"{name}-{i}"
        w, c, _ = timed2(lambda p=path: KnowledgeBase.build(p, [SCIFACT / "corpus.jsonl.gz"], **opts))
        wall.append(w)
        cpu.append(c)
        if i < repeat - 1:
            shutil.rmtree(path)
    build = {"best_s": min(wall), "best_cpu_s": min(cpu), "wall_s": wall, "cpu_s": cpu}
    kb = KnowledgeBase.open(tmp / f"{name}-{repeat - 1}")
    info = kb.info()
    res: dict[str, Any] = {"chunking": info["chunking"], "chunks": info["chunks"], "docs": info["docs"],
                           "build_from_file_s": secs(build), "build_timings": build,
                           "kb_bytes": info["size_bytes"]}
    res["quality"] = quality([kb_doc_ranking(kb, t) for t in q_texts], queries)
    check = evaluate(lambda q, n: kb.search(q, k=n), SCIFACT, k=10)  # the project's own eval path
    assert abs(check["ndcg@10"] - res["quality"]["ndcg@10"]) < 1e-9, (check["ndcg@10"], res["quality"])
    # like bm25s, return ranked ids: fetch=False; the cost of full hits (text, metadata, citation) apart
    res["qps_e2e"] = qps(lambda: [kb.search(t, K, fetch=False) for t in q_texts], len(q_texts))
    res["qps_e2e_hits"] = qps(lambda: [kb.search(t, K) for t in q_texts], len(q_texts))
    seg = kb.segments[0]
    assert len(kb.segments) == 1
    q_terms = [kb.analyzer.tokenize(t) for t in q_texts]
    res["qps_scoring"] = qps(lambda: [core_search(seg.postings, seg.weights, t, K, None) for t in q_terms],
                             len(q_terms))
    batch = {"qps_e2e": qps(lambda: kb.search_many(q_texts, K, fetch=False), len(q_texts)),
             "qps_scoring": qps(lambda: top_k_many(seg.postings, seg.weights, [
                 query_weights(t, {x: seg.postings.df(x) for x in set(t)}, seg.n, PARAMS) for t in q_terms], K),
                 len(q_terms))}
    return res, kb, batch


def latency_breakdown(kb: KnowledgeBase, q_texts: list[str]) -> list[tuple[str, float]]:
    """Cumulative microseconds per query as the stages of KnowledgeBase.search are added one by one.

    Each stage is timed as a whole pipeline up to that point (not in isolation), so a stage's cost
    includes the cache misses it suffers from the stages before it, as in a real search."""
    seg = kb.segments[0]
    an = kb.analyzer

    def weights_of(terms: list[str]) -> dict[str, float]:
        return query_weights(terms, {x: seg.postings.df(x) for x in set(terms)}, seg.n, PARAMS)

    p = seg.postings
    plain = (Postings(p.terms, np.asarray(p.indptr), np.asarray(p.rows), np.asarray(p.tf), np.asarray(p.doclen)),
             np.asarray(seg.weights))
    kb_views = KnowledgeBase.open(kb.path)  # the same KB with its arrays as plain ndarray views (np.asarray)
    for s in kb_views.segments:
        for name in ("indptr", "rows", "tf", "doclen"):
            setattr(s.postings, name, np.asarray(getattr(s.postings, name)))
        s.weights = np.asarray(s.weights)
    stages = [
        ("tokenize the query (Analyzer)", lambda: [an.tokenize(t) for t in q_texts]),
        ("+ df lookups and idf weights (bm25.query_weights)", lambda: [weights_of(an.tokenize(t)) for t in q_texts]),
        ("+ score and top-k on the KB's np.memmap arrays (bm25.top_k)", lambda: [
            top_k(seg.postings, seg.weights, weights_of(an.tokenize(t)), K, seg.live) for t in q_texts]),
        ("  (the same, top_k on plain ndarray views of those arrays)", lambda: [
            top_k(*plain, weights_of(an.tokenize(t)), K, seg.live) for t in q_texts]),
        ("+ ranked (segment, row) list and sort (retrieve.bm25_ranked)", lambda: [
            bm25_ranked(kb, [t], K)[0] for t in q_texts]),
        ("+ fetch text, metadata, citation from SQLite (retrieve.to_hits)", lambda: [
            to_hits(kb, bm25_ranked(kb, [t], K)[0]) for t in q_texts]),
        ("KnowledgeBase.search, the whole call", lambda: [kb.search(t, K) for t in q_texts]),
        ("what-if: KnowledgeBase.search with the memmaps as ndarray views", lambda: [
            kb_views.search(t, K) for t in q_texts]),
    ]
    out = [(name, best(fn, repeat=5, warmup=1, min_time=1.0) / len(q_texts) * 1e6) for name, fn in stages]
    kb_views.close()
    return out


# -- main ----------------------------------------------------------------------------------------


def run(repeat: int) -> dict[str, Any]:
    t_start = time.perf_counter()
    stemmer = Stemmer.Stemmer("english")
    queries = load_beir(SCIFACT)
    q_texts = [q.text for q in queries]
    settings = {"k": K, "depth": DEPTH, "repeat": repeat, "bm25": PARAMS.to_dict(), "queries": len(queries)}
    out: dict[str, Any] = {"scifact": {}, "settings": settings, "loadavg_start": os.getloadavg()}
    sf = out["scifact"]

    load = repeat_time(load_corpus, repeat=repeat, warmup=0)
    doc_ids, texts = load_corpus()
    ids_arr = np.array(doc_ids)
    out["settings"]["corpus_docs"] = len(doc_ids)
    out["load_corpus_s"] = secs(load)

    def bm25s_tok(x, **kw):
        return bm25s.tokenize(x, stopwords="en", stemmer=stemmer, show_progress=False, **kw)

    # bm25s: tokenize to ids, index, retrieve (numpy backend, sequential)
    tok_t = repeat_time(lambda: bm25s_tok(texts), repeat=repeat, warmup=0)
    corpus_tok = bm25s_tok(texts)

    def bm25s_index():
        r = bm25s.BM25(k1=PARAMS.k1, b=PARAMS.b, method="lucene", backend="numpy")
        r.index(corpus_tok, show_progress=False)
        return r

    idx_t = repeat_time(bm25s_index, repeat=repeat, warmup=0)
    retriever = bm25s_index()
    assert retriever.backend == "numpy"
    q_tok = bm25s_tok(q_texts, return_ids=False)  # list of lists of str

    def bm25s_retrieve(qs, k):
        return retriever.retrieve(qs, k=k, show_progress=False, n_threads=0, backend_selection="numpy")

    docs_idx = bm25s_retrieve(q_tok, DEPTH).documents
    bm25s_q = quality([list(ids_arr[row]) for row in docs_idx], queries)
    base = {"quality": bm25s_q, "tokenize_s": secs(tok_t), "index_s": secs(idx_t),
            "build_from_file_s": secs(load) + secs(tok_t) + secs(idx_t)}
    sf["bm25s_batch"] = {**base, "mode": "one retrieve() call with all 300 queries",
                         "qps_e2e": qps(lambda: bm25s_retrieve(bm25s_tok(q_texts), K), len(q_texts)),
                         "qps_scoring": qps(lambda: bm25s_retrieve(q_tok, K), len(q_texts))}
    sf["bm25s_single"] = {**base, "mode": "one retrieve() call per query",
                          "qps_e2e": qps(lambda: [bm25s_retrieve(bm25s_tok(t), K) for t in q_texts],
                                         len(q_texts)),
                          "qps_scoring": qps(lambda: [bm25s_retrieve([t], K) for t in q_tok], len(q_texts))}

    # rank-bm25: BM25Okapi on bm25s' tokens (as strings); slow, so one pass over the 300 queries
    str_tok_t = repeat_time(lambda: bm25s_tok(texts, return_ids=False), repeat=repeat, warmup=0)
    corpus_str = bm25s_tok(texts, return_ids=False)
    okapi_t = repeat_time(lambda: rank_bm25.BM25Okapi(corpus_str, k1=PARAMS.k1, b=PARAMS.b), repeat=repeat,
                          warmup=0)
    okapi = rank_bm25.BM25Okapi(corpus_str, k1=PARAMS.k1, b=PARAMS.b)
    okapi_rank = [okapi.get_top_n(t, doc_ids, n=DEPTH) for t in q_tok]  # quality; also the warm-up pass
    sf["rank_bm25"] = {"quality": quality(okapi_rank, queries), "tokenize_s": secs(str_tok_t),
                       "index_s": secs(okapi_t), "build_from_file_s": secs(load) + secs(str_tok_t) + secs(okapi_t),
                       "qps_scoring": qps(lambda: [okapi.get_top_n(t, doc_ids, n=K) for t in q_tok], len(q_tok),
                                          repeat=1, warmup=0, min_time=0),
                       "qps_e2e": qps(lambda: [okapi.get_top_n(bm25s_tok(t, return_ids=False)[0], doc_ids, n=K)
                                               for t in q_texts], len(q_texts), repeat=1, warmup=0, min_time=0)}

    # picorag: whole KBs from the corpus file, then the BM25 core alone
    with tempfile.TemporaryDirectory(prefix="bench-bm25-", dir=OUT) as tmpdir:
        tmp = Path(tmpdir)
        sf["picorag_whole"], kb, batch = bench_picorag_kb("whole", tmp, queries, q_texts, WHOLE_DOC_CHUNK, repeat)
        assert sf["picorag_whole"]["chunks"] == len(doc_ids), "SciFact docs should be single chunks"
        sf["picorag_whole_batch"] = {**sf["picorag_whole"], **batch}
        sf["picorag_default"], kb_default, _ = bench_picorag_kb("default", tmp, queries, q_texts, None, repeat)
        kb_default.close()

        an = Analyzer()
        index_texts = [c["index_prefix"] + c["text"] for c in kb.segments[0].store.iter_chunks()]
        ptok_t = repeat_time(lambda: [an.tokenize(t) for t in index_texts], repeat=repeat, warmup=0)
        ptok = [an.tokenize(t) for t in index_texts]

        def core_index(tokens):
            ix = Postings.from_tokens(tokens)
            return ix, ix.weights(PARAMS, ix.total_len / ix.n_docs)

        pidx_t = repeat_time(lambda: core_index(ptok), repeat=repeat, warmup=0)
        ix, w = core_index(ptok)
        sf["picorag_whole"]["tokenize_s"] = secs(ptok_t)
        sf["picorag_whole"]["index_s"] = secs(pidx_t)
        sf["picorag_whole"]["vocab"] = len(ix.terms)

        # cross-check: picorag's scoring on exactly bm25s' tokens (in-memory arrays)
        bix_t = repeat_time(lambda: core_index(corpus_str), repeat=repeat, warmup=0)
        bix, bw = core_index(corpus_str)
        sf["picorag_core_bm25s_tokens"] = {
            "quality": quality([list(ids_arr[core_search(bix, bw, t, DEPTH)]) for t in q_tok], queries),
            "index_s": secs(bix_t), "vocab": len(bix.terms),
            "qps_scoring": qps(lambda: [core_search(bix, bw, t, K) for t in q_tok], len(q_tok))}
        sf["bm25s_batch"]["vocab"] = sf["bm25s_single"]["vocab"] = len(retriever.vocab_dict) - 1  # minus ""

        out["latency_us"] = latency_breakdown(kb, q_texts)
        kb.close()

        # law set: BM25 alone, picorag's own eval
        law_kb = tmp / "law"
        w_law, c_law, kb_law = timed2(lambda: KnowledgeBase.build(law_kb, [LAW / "corpus"]))
        t_law = c_law if CLOCK["name"] == "cpu" else w_law
        res = evaluate(lambda q, n: kb_law.search(q, k=n, mode="bm25"), LAW / "eval" / "law_eval_set.jsonl", k=5)
        out["law"] = {"build_from_file_s": t_law, "build_wall_s": w_law, "build_cpu_s": c_law,
                      "chunks": kb_law.info()["chunks"], "docs": kb_law.info()["docs"],
                      **{k: v for k, v in res.items() if k != "dataset"}}
        kb_law.close()

    out["env"] = {"cpu": cpu_info(), "threads": 1, "git_commit": git_commit(),
                  "versions": versions(["picorag", "bm25s", "rank-bm25", "numpy", "PyStemmer", "jieba",
                                        "matplotlib"]),
                  "bm25s_backend": retriever.backend,
                  "numba_installed": importlib.util.find_spec("numba") is not None}
    out["env"]["peak_rss_mb"] = peak_rss_mb()
    out["env"]["loadavg_end"] = os.getloadavg()
    out["settings"]["clock"] = CLOCK["name"]
    out["total_s"] = time.perf_counter() - t_start
    return out


# -- report --------------------------------------------------------------------------------------

SYSTEMS = [  # key, label
    ("picorag_whole", f"picorag KB, whole docs (chunk_size={WHOLE_DOC_CHUNK}), one query per call"),
    ("picorag_whole_batch", "picorag KB, whole docs, batch search_many"),
    ("picorag_default", "picorag KB, default chunks (256/32), one query per call"),
    ("bm25s_batch", "bm25s, numpy, batch retrieve"),
    ("bm25s_single", "bm25s, numpy, one query per call"),
    ("rank_bm25", "rank-bm25 BM25Okapi"),
    ("picorag_core_bm25s_tokens", "picorag BM25 core on bm25s' tokens"),
]


def latency_rows(stages: list[tuple[str, float]]) -> list[list[str]]:
    rows, prev = [], 0.0
    for name, us in stages:
        cumulative = name.startswith(("tokenize", "+"))
        rows.append([name, f"{us:,.1f}", f"{us - prev:+,.1f}" if cumulative and prev else ""])
        if cumulative:
            prev = us
    return rows


SYSTEMS_SHORT = {"picorag_whole": "picorag KB whole docs", "picorag_whole_batch": "picorag KB batch",
                 "picorag_default": "picorag KB 256/32",
                 "bm25s_batch": "bm25s batch", "bm25s_single": "bm25s per query", "rank_bm25": "rank-bm25",
                 "picorag_core_bm25s_tokens": "picorag core on bm25s tokens"}


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    sf, law = r["scifact"], r["law"]
    out = [(f"SciFact nDCG@10 ≥ 0.67 (picorag KB, {what})", f"{sf[key]['quality']['ndcg@10']:.4f}",
            sf[key]["quality"]["ndcg@10"] >= 0.67)
           for key, what in (("picorag_whole", "whole docs"), ("picorag_default", "default chunks"))]
    for mode in ("e2e", "scoring"):  # like against like: batch vs batch, one query per call vs the same
        for mine_key, other in (("picorag_whole_batch", "bm25s_batch"), ("picorag_whole", "bm25s_single")):
            mine, theirs = sf[mine_key][f"qps_{mode}"]["qps"], sf[other][f"qps_{mode}"]["qps"]
            how = "batch" if "batch" in other else "per query"
            out.append((f"q/s {mode} ≥ bm25s ({how})", f"{mine:,.0f} vs {theirs:,.0f} "
                        f"({mine / theirs:.2f}×)", mine >= theirs))
        for mine_key in ("picorag_whole", "picorag_whole_batch"):
            ratio = sf[mine_key][f"qps_{mode}"]["qps"] / sf["rank_bm25"][f"qps_{mode}"]["qps"]
            how = "batch" if "batch" in mine_key else "per query"
            out.append((f"q/s {mode} ≥ 100× rank-bm25 (picorag {how})", f"{ratio:,.0f}×", ratio >= 100))
    out.append(("law hit@5 ≥ 0.98", f"{law['hit@5']:.4f}", law["hit@5"] >= 0.98))
    out.append(("law MRR@5 ≥ 0.975", f"{law['mrr@5']:.4f}", law["mrr@5"] >= 0.975))
    return out


def report(r: dict[str, Any]) -> str:
    sf, env = r["scifact"], r["env"]
    v = env["versions"]
    same = abs(sf["picorag_core_bm25s_tokens"]["quality"]["ndcg@10"] - sf["bm25s_batch"]["quality"]["ndcg@10"]) < 5e-5
    lines = [
        "## BM25 (foundation)",
        "",
        f"BEIR SciFact ({r['settings']['corpus_docs']:,} docs, {r['settings']['queries']} test queries), "
        f"BM25 k1={PARAMS.k1} b={PARAMS.b} ({PARAMS.method} idf), one thread. "
        f"picorag {v['picorag']} (git {env['git_commit']}), bm25s {v['bm25s']} (numpy backend), "
        f"rank-bm25 {v['rank-bm25']}, numpy {v['numpy']}, PyStemmer {v['PyStemmer']}. "
        f"CPU: {env['cpu']['model']}, nproc {env['cpu']['nproc']}, Python {env['cpu']['python']}. "
        + ("Times are **CPU seconds** of this single-threaded process (`time.process_time`): the machine is shared "
           f"(load average {r['loadavg_start'][0]:.1f} at the start, {env['loadavg_end'][0]:.1f} at the end), and "
           "CPU time does not count the moments another process had the core. Wall-clock figures are in "
           "bm25.json and below." if r["settings"]["clock"] == "cpu" else "Times are wall-clock seconds."),
        "",
    ]
    rows = []
    for key, label in SYSTEMS:
        s = sf[key]
        q = s["quality"]
        rows.append([label, f"{q['ndcg@10']:.4f}", f"{q['recall@100']:.4f}", f"{q['mrr@10']:.4f}",
                     *(f"{s[key]:.2f}" if key in s else "–" for key in ("build_from_file_s", "tokenize_s", "index_s")),
                     fmt(s["qps_e2e"]["qps"]) if "qps_e2e" in s else "–", fmt(s["qps_scoring"]["qps"])])
    lines += [md_table(["system", "nDCG@10", "R@100", "MRR@10", "build from file (s)", "tokenize corpus (s)",
                        "BM25 index from tokens (s)", "q/s end-to-end", "q/s scoring-only"], rows), ""]
    lines += [
        f"- nDCG@10 reference for bm25s with this tokenization (data/beir/README.md): {BM25S_REF}. Quality uses "
        f"picorag.evaluate's metric functions on doc-level top-{DEPTH} rankings (a chunked document ranks at its "
        "best chunk); the picorag KB rows were also checked against `picorag.evaluate.evaluate`.",
        f"- q/s: top-{K} over all {r['settings']['queries']} test queries; the best pass of ≥ 5 passes and ≥ 1.5 s "
        "of passes, after a warm-up pass (rank-bm25: one timed pass each, after the untimed quality pass). "
        "*End-to-end* starts from the query string with each library's own tokenizer (picorag: its Analyzer "
        "with Snowball stemming; bm25s and rank-bm25: `bm25s.tokenize(stopwords="
        "'en', stemmer=PyStemmer english)`) and ends with ranked ids, as bm25s' row indices (picorag: "
        "`search(..., fetch=False)`; with full hits — text, metadata, citation from SQLite — picorag whole docs does "
        f"{fmt(sf['picorag_whole']['qps_e2e_hits']['qps'])} q/s). *Scoring-only* starts from pre-tokenized queries. "
        "Wall-clock q/s end-to-end / scoring-only in the same run: " + "; ".join(
            f"{label} {fmt(sf[key]['qps_e2e']['qps_wall']) if 'qps_e2e' in sf[key] else '–'} / "
            f"{fmt(sf[key]['qps_scoring']['qps_wall'])}" for key, label in SYSTEMS_SHORT.items()) + ".",
        f"- Build from file: picorag = `KnowledgeBase.build` (read gz JSONL, chunk, analyze, index, write SQLite + "
        f"npy, fsync; its wall-clock best is {fmt(sf['picorag_whole']['build_timings']['best_s'])} s whole docs, "
        f"{fmt(sf['picorag_default']['build_timings']['best_s'])} s default chunks), best of "
        f"{r['settings']['repeat']}; bm25s / rank-bm25 = read + parse the corpus "
        f"({r['load_corpus_s']:.2f} s) + tokenize + index, each part best of {r['settings']['repeat']}. "
        "*BM25 index from tokens*: picorag `Postings.from_tokens` + `weights`, bm25s `BM25.index`, rank-bm25 "
        "`BM25Okapi(...)`.",
        "- rank-bm25's BM25Okapi uses a different idf (ln((N−df+.5)/(df+.5)), negative values floored at "
        "0.25 × mean idf) and the Robertson tf part; bm25s and picorag use Lucene's idf ln(1 + (N−df+.5)/(df+.5)).",
        f"- The last row indexes bm25s' own tokens with `picorag.bm25` (in-memory arrays): same settings and tokens "
        f"give {'the same' if same else 'a different'} nDCG@10 as bm25s; vocabulary "
        f"{sf['picorag_core_bm25s_tokens']['vocab']:,} terms "
        f"vs bm25s {sf['bm25s_batch']['vocab']:,} and picorag's Analyzer {sf['picorag_whole']['vocab']:,}.",
        "",
        f"Where a picorag query's time goes (KB with whole docs, top-{K}): CPU µs per query as the stages of "
        "`KnowledgeBase.search` are added one at a time, each pipeline timed whole (best pass of ≥ 5 and ≥ 1 s):",
        "",
        md_table(["stages", "µs/query", "added"], latency_rows(r["latency_us"])),
        "",
    ]
    law = r["law"]
    metric_keys = ["hit@5", "mrr@5", "ndcg@10", "recall@100"]
    law_rows = [["all", str(law["n"])] + [f"{law[m]:.4f}" for m in metric_keys]]
    law_rows += [[tag, str(m["n"])] + [f"{m[k]:.4f}" for k in metric_keys] for tag, m in law.get("by_tag", {}).items()]
    lines += [
        f"Law set (3 statutes, {law['chunks']:,} article chunks, {law['n']} questions), picorag BM25 alone via "
        f"`picorag.evaluate.evaluate` (a hit = right law and article); build {fmt(law['build_from_file_s'])} s "
        f"({fmt(law['build_wall_s'])} s wall; includes loading jieba's dictionary), {fmt(law['qps'])} q/s wall-clock "
        "as evaluate reports it (each query fetches 100 hits):",
        "",
        md_table(["questions", "n"] + metric_keys, law_rows),
        "",
        "Targets:",
        "",
        md_table(["target", "measured", "met"], [[t, m, "yes" if ok else "**no**"] for t, m, ok in targets(r)],
                 align="lrc"),
        "",
        f"Whole run: {r['total_s']:.0f} s, peak RSS {env['peak_rss_mb']:.0f} MiB.",
    ]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    sf = r["scifact"]
    short = {"picorag_whole": "picorag KB (whole docs)", "picorag_whole_batch": "picorag KB\n(batch)",
             "picorag_default": "picorag KB (256/32)",
             "bm25s_batch": "bm25s (batch)", "bm25s_single": "bm25s (per query)", "rank_bm25": "rank-bm25",
             "picorag_core_bm25s_tokens": "picorag core,\nbm25s tokens"}
    color = {k: ("tab:blue" if k.startswith("picorag") else "tab:orange" if k.startswith("bm25s") else "tab:grey")
             for k in short}
    cpu = r["settings"]["clock"] == "cpu"
    per = "queries per CPU second" if cpu else "queries/s"
    keys = list(short)
    build = [k for k in keys if "build_from_file_s" in sf[k] and k != "bm25s_single"]
    e2e = [k for k in keys if "qps_e2e" in sf[k]]
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5))
    bar_panel(axes[0][0], [short[k] for k in keys], [sf[k]["quality"]["ndcg@10"] for k in keys],
              title="nDCG@10 (higher is better)", colors=[color[k] for k in keys],
              value_fmt=lambda x: f"{x:.4f}", lines=[(0.67, "target 0.67")])
    bar_panel(axes[0][1], [short[k].replace(" (batch)", "") for k in build],
              [sf[k]["build_from_file_s"] for k in build], colors=[color[k] for k in build],
              title=f"index build from the corpus file, {'CPU ' if cpu else ''}s (lower is better)",
              value_fmt=lambda x: f"{x:.2f}")
    bar_panel(axes[1][0], [short[k] for k in e2e], [sf[k]["qps_e2e"]["qps"] for k in e2e], log=True,
              title=f"{per} end-to-end, top-10 (log)", colors=[color[k] for k in e2e])
    bar_panel(axes[1][1], [short[k] for k in keys], [sf[k]["qps_scoring"]["qps"] for k in keys], log=True,
              title=f"{per} scoring-only, pre-tokenized (log)", colors=[color[k] for k in keys])
    fig.suptitle(f"BM25 on BEIR SciFact ({r['settings']['queries']} test queries), 1 thread, "
                 f"{r['env']['cpu']['model']}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="index builds are timed best-of-N (default 5)")
    ap.add_argument("--wall", action="store_true", help="report wall-clock instead of CPU time (both are in the JSON)")
    args = ap.parse_args()
    CLOCK["name"] = "wall" if args.wall else "cpu"
    OUT.mkdir(parents=True, exist_ok=True)
    r = run(args.repeat)
    md = report(r)
    write_json(OUT / "bm25.json", r)
    write_text(OUT / "bm25.md", md)
    plot(r, IMG / "bm25_scifact.png")
    print(md)
    print(f"wrote {OUT / 'bm25.md'}, {OUT / 'bm25.json'}, {IMG / 'bm25_scifact.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
