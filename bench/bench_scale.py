"""Scale benchmark: streaming builds of 10k / 100k / 1M wiki passages (BM25 + IVF-PQ), peak RSS,
query latency, IVF-PQ recall, and picorag vs bm25s / plain FAISS at 100k.

    .venv/bin/python bench/bench_scale.py data        # derived corpora + the vector lookup (once)
    .venv/bin/python bench/bench_scale.py all         # builds, queries, side by side, report
    .venv/bin/python bench/bench_scale.py report      # tables + plot from bench/out/scale.json

Corpora (bench/out/scale/): wiki-10k and wiki-100k are the first passages of
../shared/data/wiki/passages.jsonl.gz; wiki-1m is the 111,639 passages 9 times (copy 0 verbatim, copies
1-8 perturbed: each word dropped with p=0.1, and with p=0.02 replaced by a new word `<word>q<copy>`
so the vocabulary keeps growing as a real corpus does; title suffixed " (c<copy>)"), cut at 1,000,000.

Vectors: MiniLM on 2 shared cores embeds ~13 passages per CPU-second (bench/out/scale/embed_log.jsonl),
so 1M passages would take ~21 CPU-hours. bench/scale_embed.py embedded the first R passages for
real; every other vector is derived: passage p (copy j) gets real vector p mod R, plus Gaussian noise
(cos ≈ 0.85 to its source) when p >= R, plus more (cos ≈ 0.95) when j >= 1, renormalised. A
`DerivedEncoder` serves these by a hash of the chunk text, so builds run the real pipeline with
embedding replaced by a lookup. Queries are real: MiniLM encodings of passages' first 8 words.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from common import limit_threads

limit_threads(1)  # before numpy is imported anywhere: one BLAS/OpenMP thread, so CPU time is per core

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    DATA,
    IMG,
    OUT,
    cpu_info,
    git_commit,
    latency_stats,
    loadavg,
    md_table,
    peak_rss_mb,
    pyplot,
    rss_mb,
    versions,
    write_json,
    write_text,
)

DIR = OUT / "scale"
SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
COPIES = 9
S1, S2 = 0.0316, 0.0158  # per-dimension noise: cos ≈ 1/sqrt(1 + 384 σ²) ≈ 0.85 and 0.95
N_QUERIES = 200
REAL_PIECES = 3  # real MiniLM vectors used: 3 x 1000 (what 2 shared cores embedded in the time there was)


def index_text(title: str, text: str) -> str:
    return (f"{title}\n" if title else "") + text.strip()


def key_of(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


def perturb(text: str, j: int, rng: random.Random) -> str:
    out = []
    for w in text.split():
        r = rng.random()
        if r < 0.1:
            continue
        out.append(f"{w}q{j}" if r < 0.12 and w.isalpha() else w)
    return " ".join(out) or text


def make_data() -> None:
    """Write wiki-{10k,100k,1m}.jsonl and keys.npy/vals.npy (text hash -> passage, copy)."""
    DIR.mkdir(parents=True, exist_ok=True)
    base = [json.loads(line) for line in gzip.open(DATA / "wiki" / "passages.jsonl.gz", "rt", encoding="utf-8")]
    keys, vals = [], []
    files = {name: open(DIR / f"wiki-{name}.jsonl", "w", encoding="utf-8") for name in SIZES}
    n = 0
    for j in range(COPIES):
        rng = random.Random(j)
        for p, rec in enumerate(base):
            if n >= SIZES["1m"]:
                break
            out = rec if j == 0 else {"id": f"{rec['id']}c{j}", "title": f"{rec['title']} (c{j})",
                                      "text": perturb(rec["text"], j, rng)}
            line = json.dumps(out, ensure_ascii=False) + "\n"
            for name, size in SIZES.items():
                if n < size:
                    files[name].write(line)
            keys.append(key_of(index_text(out["title"], out["text"])))
            vals.append(p * 16 + j)
            n += 1
    for f in files.values():
        f.close()
    keys_a = np.array(keys, np.uint64)
    order = np.argsort(keys_a)
    assert len(np.unique(keys_a)) == len(keys_a), "hash collision or duplicate passage"
    np.save(DIR / "keys.npy", keys_a[order])
    np.save(DIR / "vals.npy", np.array(vals, np.int64)[order])
    # the lookup is only right if picorag embeds exactly index_text(): check on a sample
    from picorag.chunk import chunk_record
    from picorag.ingest import read_jsonl

    for i, r in enumerate(read_jsonl(DIR / "wiki-1m.jsonl")):
        if i % 997 == 0:
            cs = chunk_record(r)
            assert len(cs) == 1 and cs[0].index_text == index_text(r.title, r.sections[0].text), r.doc_id
        if i > 200_000:
            break


def real_vectors() -> np.ndarray:
    parts = sorted(DIR.glob("base-*.npy"))[:REAL_PIECES]
    assert len(parts) == REAL_PIECES, "run bench/scale_embed.py first"
    return np.concatenate([np.load(p) for p in parts]).astype(np.float32)


class DerivedEncoder:
    """Vectors by lookup (see the module docstring); name/dim are MiniLM's, so queries use MiniLM."""

    name = "minilm"
    dim = 384

    def __init__(self):
        self.real = real_vectors()
        self.keys = np.load(DIR / "keys.npy", mmap_mode="r")
        self.vals = np.load(DIR / "vals.npy", mmap_mode="r")

    def vector(self, p: int, j: int) -> np.ndarray:
        r = len(self.real)
        v = self.real[p % r].copy()
        if p >= r:
            v += S1 * np.random.default_rng([p, 0]).standard_normal(self.dim, dtype=np.float32)
        if j:
            v += S2 * np.random.default_rng([p, j + 1]).standard_normal(self.dim, dtype=np.float32)
        return v / np.linalg.norm(v)

    def encode(self, texts, kind="passage") -> np.ndarray:
        ks = np.array([key_of(t) for t in texts], np.uint64)
        pos = np.searchsorted(self.keys, ks)
        if not np.array_equal(self.keys[np.minimum(pos, len(self.keys) - 1)], ks):
            raise KeyError("text not in the derived corpus")
        return np.stack([self.vector(int(v) // 16, int(v) % 16) for v in self.vals[pos]])


def kb_path(size: str, kind: str = "ivfpq") -> Path:
    return DIR / "kbs" / f"{size}-{kind}"


def child_build(size: str, kind: str) -> dict:
    """Build one KB in this (fresh) process; peak RSS is this process's."""
    from picorag import KnowledgeBase

    enc = DerivedEncoder() if kind != "bm25" else None
    rss0 = rss_mb()
    c0, t0 = time.process_time(), time.perf_counter()
    staged = kb_path(size, kind) / ".build"
    resumed = len(list(staged.glob("shard-*/meta.json"))) if staged.is_dir() else 0
    kb = KnowledgeBase.build(kb_path(size, kind), [DIR / f"wiki-{size}.jsonl"], batch_size=10_000,
                             dense="minilm" if enc else None, index=kind if enc else "flat", encoder=enc,
                             resume=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    info = kb.info()
    return {"size": size, "kind": kind, "chunks": info["chunks"], "wall_s": wall, "cpu_s": cpu,
            "chunks_per_s": info["chunks"] / wall, "chunks_per_cpu_s": info["chunks"] / cpu,
            "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0, "disk_mb": info["size_bytes"] / 2**20,
            "dense": info["dense"], "segment_dense": kb.manifest["segments"][0]["dense"], "loadavg": loadavg(),
            "resumed_after_shards": resumed}


def queries() -> list[str]:
    rng = random.Random(7)
    base = [json.loads(line) for line in open(DIR / "wiki-10k.jsonl", encoding="utf-8")]
    return [" ".join(base[rng.randrange(len(base))]["text"].split()[:8]) for _ in range(N_QUERIES)]


def query_vectors(qs: list[str]) -> np.ndarray:
    f = DIR / "queries.npy"
    if not f.exists():
        from picorag.encoders import load_encoder

        np.save(f, load_encoder("minilm").encode(qs, kind="query"))
    return np.load(f)


def timed_loop(fn, items) -> dict:
    """Call fn on each item; wall latency stats plus CPU ms per call (robust on a busy machine)."""
    lat = []
    c0 = time.process_time()
    for it in items:
        t = time.perf_counter()
        fn(it)
        lat.append(time.perf_counter() - t)
    return latency_stats(lat) | {"cpu_ms": (time.process_time() - c0) * 1e3 / max(len(lat), 1)}


def exact_top10(vectors: np.ndarray, qv: np.ndarray) -> np.ndarray:
    """Exact top-10 rows of every query: one matrix product per block of rows (the ground truth)."""
    best_s = np.full((len(qv), 0), -np.inf, np.float32)
    best_i = np.zeros((len(qv), 0), np.int64)
    q = qv.astype(np.float32).T
    for s in range(0, len(vectors), 65_536):
        sc = np.asarray(vectors[s : s + 65_536], np.float32) @ q  # (rows, queries)
        cand_s = np.concatenate([best_s, sc.T], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + len(sc)), (len(qv), len(sc)))], axis=1)
        top = np.argsort(-cand_s, axis=1, kind="stable")[:, :10]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    return best_i


def child_query(size: str, kind: str) -> dict:
    from picorag import KnowledgeBase
    from picorag.retrieve import to_hits

    qs = queries()
    qv = query_vectors(qs)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    kb = KnowledgeBase.open(kb_path(size, kind))
    open_s = time.perf_counter() - t0
    out = {"size": size, "kind": kind, "open_s": open_s, "rss_open_mb": rss_mb() - rss0}
    for fetch in (False, True):
        out[f"bm25_fetch_{fetch}"] = timed_loop(lambda q, f=fetch: kb.search(q, k=10, mode="bm25", fetch=f), qs)
    if kind != "bm25":
        seg = kb.segments[0]
        truth = exact_top10(seg.vectors.vectors, qv)
        lat, recall = [], []
        for v, exact in zip(qv, truth, strict=True):
            t = time.perf_counter()
            rows, scores = seg.vectors.search(v, 10)
            to_hits(kb, [((0, int(r)), float(s)) for r, s in zip(rows, scores, strict=True)])
            lat.append(time.perf_counter() - t)
            recall.append(len(set(exact.tolist()) & set(rows.tolist())) / 10)
        out["dense_no_encoder"] = latency_stats(lat)
        out["recall_at_10"] = float(np.mean(recall))
        out["nprobe"] = seg.vectors.params.get("nprobe")
        out["dense_cpu_ms"] = timed_loop(lambda v: seg.vectors.search(v, 10), qv)["cpu_ms"]
        out["dense_with_encoder"] = timed_loop(lambda q: kb.search(q, k=10, mode="dense"), qs[:50])
        out["dense_exact_numpy"] = timed_loop(lambda v: seg.vectors._exact(v, 10, None), qv[:10])
    out["rss_after_queries_mb"] = rss_mb()
    out["loadavg"] = loadavg()
    return out


def child_bm25s() -> dict:
    """bm25s over the same 100k passages (title + text, English stemmer and stopwords)."""
    import bm25s
    import Stemmer

    corpus = [index_text(r["title"], r["text"]) for r in map(json.loads, open(DIR / "wiki-100k.jsonl"))]
    stemmer = Stemmer.Stemmer("english")
    c0, t0 = time.process_time(), time.perf_counter()
    toks = bm25s.tokenize(corpus, stopwords="en", stemmer=stemmer, show_progress=False)
    model = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    model.index(toks, show_progress=False)
    index_s, index_cpu = time.perf_counter() - t0, time.process_time() - c0
    qs = queries()
    model.retrieve(bm25s.tokenize(qs, stopwords="en", stemmer=stemmer, show_progress=False), k=10,
                   show_progress=False, n_threads=1)  # warm, as for picorag
    t0 = time.perf_counter()
    model.retrieve(bm25s.tokenize(qs, stopwords="en", stemmer=stemmer, show_progress=False), k=10,
                   show_progress=False, n_threads=1)
    batch_qps = len(qs) / (time.perf_counter() - t0)
    lat = timed_loop(lambda q: model.retrieve(bm25s.tokenize([q], stopwords="en", stemmer=stemmer,
                                                             show_progress=False), k=10, show_progress=False,
                                              n_threads=1), qs)
    return {"index_s": index_s, "index_cpu_s": index_cpu, "batch_qps": batch_qps, "query": lat,
            "peak_rss_mb": peak_rss_mb(), "loadavg": loadavg()}


def child_picorag_bm25() -> dict:
    out = child_build("100k", "bm25")
    from picorag import KnowledgeBase

    kb = KnowledgeBase.open(kb_path("100k", "bm25"))
    qs = queries()
    kb.search_many(qs, k=10, mode="bm25", fetch=False)  # warm: the mapped arrays are paged in once
    t0 = time.perf_counter()
    kb.search_many(qs, k=10, mode="bm25", fetch=False)
    out["batch_qps"] = len(qs) / (time.perf_counter() - t0)
    out["query"] = timed_loop(lambda q: kb.search(q, k=10, mode="bm25", fetch=False), qs)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def child_faiss_flat() -> dict:
    """Plain FAISS IndexFlatIP over the 100k KB's vectors vs picorag's exact and IVF-PQ search."""
    import faiss

    from picorag import KnowledgeBase

    faiss.omp_set_num_threads(1)
    kb = KnowledgeBase.open(kb_path("100k"))
    vecs = np.asarray(kb.segments[0].vectors.vectors, np.float32)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    qv = query_vectors(queries()).astype(np.float32)
    t0 = time.perf_counter()
    _, truth = index.search(qv, 10)
    batch_qps = len(qv) / (time.perf_counter() - t0)
    out = {"faiss_flat": {"batch_qps": batch_qps, "query": timed_loop(lambda v: index.search(v[None], 10), qv),
                          "recall_at_10": 1.0}}
    ix = kb.segments[0].vectors
    for name, fn in (("picorag_flat", lambda v: ix._exact(v, 10, None)[0]),
                     ("picorag_ivfpq", lambda v: ix.search(v, 10)[0])):
        rec = [len(set(fn(v).tolist()) & set(t_ids.tolist())) / 10 for v, t_ids in zip(qv, truth, strict=True)]
        q = timed_loop(fn, qv)
        out[name] = {"qps": 1e3 / q["mean_ms"], "query": q, "recall_at_10": float(np.mean(rec))}
    out["loadavg"] = loadavg()
    return out


CHILDREN = {"build": child_build, "query": child_query, "bm25s": child_bm25s, "picorag-bm25": child_picorag_bm25,
            "faiss-flat": child_faiss_flat}


def run_child(*args: str) -> dict:
    """Run a stage in a fresh interpreter (so its peak RSS is its own); keep its result in
    bench/out/scale/result-<stage>.json, so stages can run separately or concurrently."""
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(args)} (load {loadavg()})", file=sys.stderr, flush=True)
    res = subprocess.run([sys.executable, __file__, "child", *args], capture_output=True, text=True)
    if res.returncode:
        sys.stderr.write(res.stderr[-4000:])
        raise SystemExit(f"stage {args} failed")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    write_json(DIR / f"result-{'-'.join(args)}.json", out)
    return out


def run_all(sizes: list[str]) -> None:
    for size in sizes:
        if size in SIZES:
            run_child("build", size, "ivfpq")
            run_child("query", size, "ivfpq")
        else:  # a side-by-side stage
            run_child(size)
    report()


def collect() -> dict:
    r: dict = {"machine": cpu_info() | {"commit": git_commit(), "loadavg_report": loadavg(),
                                        "real_vectors": REAL_PIECES * 1000,
                                        "versions": versions(["numpy", "faiss-cpu", "bm25s", "ray"])}}
    for s in SIZES:
        for stage in ("build", "query"):
            f = DIR / f"result-{stage}-{s}-ivfpq.json"
            if f.exists():
                r[f"{stage}-{s}"] = json.loads(f.read_text())
    for stage in ("picorag-bm25", "bm25s", "faiss-flat"):
        f = DIR / f"result-{stage}.json"
        if f.exists():
            r[stage] = json.loads(f.read_text())
    for s in SIZES:
        f = DIR / f"result-{s}-sharding-phase.json"
        if f.exists():
            r[f"sharding-{s}"] = json.loads(f.read_text())
    log = DIR / "embed_log.jsonl"
    if log.exists():
        pieces = [json.loads(line) for line in log.read_text().splitlines()]
        r["minilm"] = {"passages": sum(p["n"] for p in pieces), "cpu_s": sum(p["cpu_s"] for p in pieces),
                       "wall_s": sum(p["wall_s"] for p in pieces)}
    write_json(OUT / "scale.json", r)
    return r


def build_of(r: dict, size: str) -> dict:
    """A build's figures; a build killed after sharding and resumed adds both runs up."""
    b = dict(r[f"build-{size}"])
    if b.get("resumed_after_shards") and f"sharding-{size}" in r:
        first = r[f"sharding-{size}"]
        b["wall_s"] += first["wall_s"]
        b["cpu_s"] += first["cpu_s"]
        b["chunks_per_cpu_s"] = b["chunks"] / b["cpu_s"]
        b["peak_rss_mb"] = max(b["peak_rss_mb"], first["peak_rss_mb"])
    return b


def report() -> None:
    r = collect()
    sizes = [s for s in SIZES if f"build-{s}" in r]
    rows, qrows = [], []
    for s in sizes:
        b, q = build_of(r, s), r.get(f"query-{s}", {})
        label = f"{s} (2 runs: sharding, SIGKILL, --resume merge)" if b.get("resumed_after_shards") else s
        rows.append([label, b["chunks"], b["wall_s"], b["cpu_s"], b["chunks_per_cpu_s"], b["peak_rss_mb"], b["disk_mb"],
                     q.get("open_s"), q.get("rss_open_mb")])
        g = q.get
        qrows.append([s, g("bm25_fetch_False", {}).get("p50_ms"), g("bm25_fetch_False", {}).get("cpu_ms"),
                      g("bm25_fetch_True", {}).get("p50_ms"), g("dense_no_encoder", {}).get("p50_ms"),
                      g("dense_cpu_ms"), g("dense_with_encoder", {}).get("p50_ms"),
                      g("dense_with_encoder", {}).get("cpu_ms"), g("recall_at_10"), g("nprobe")])
    text = ["### Build vs corpus size (BM25 + IVF-PQ, embedding replaced by the derived-vector lookup)", "",
            md_table(["passages", "chunks", "build s", "build CPU s", "chunks/CPU-s", "peak RSS MB", "disk MB",
                      "open s", "RSS of open MB"], rows), "",
            "### Queries (k = 10, 200 queries; dense with MiniLM: 50)", "",
            md_table(["passages", "BM25 p50 ms (ids)", "BM25 CPU ms", "BM25 p50 ms (with text)",
                      "dense p50 ms (no encoder)", "dense CPU ms (no encoder)", "dense p50 ms (with MiniLM)",
                      "dense CPU ms (with MiniLM)", "IVF-PQ recall@10 vs exact", "nprobe"], qrows), ""]
    if "bm25s" in r:
        p, s = r["picorag-bm25"], r["bm25s"]
        text += ["### 100k passages: picorag BM25 vs bm25s (one run, same queries)", "",
                 md_table(["", "index s", "index CPU s", "batch q/s", "query p50 ms", "query CPU ms", "peak RSS MB"],
                          [["picorag (build incl. chunking, SQLite store)", p["wall_s"], p["cpu_s"], p["batch_qps"],
                            p["query"]["p50_ms"], p["query"].get("cpu_ms"), p["peak_rss_mb"]],
                           ["bm25s 0.3.16 (tokenize + index, in memory)", s["index_s"], s["index_cpu_s"],
                            s["batch_qps"], s["query"]["p50_ms"], s["query"].get("cpu_ms"), s["peak_rss_mb"]]]), ""]
    if "faiss-flat" in r:
        d = r["faiss-flat"]
        text += ["### 100k passages: picorag dense vs plain FAISS flat", "",
                 md_table(["", "q/s (one query at a time)", "p50 ms", "CPU ms a query", "recall@10 vs exact"],
                          [["FAISS IndexFlatIP (float32, in RAM)", 1e3 / d["faiss_flat"]["query"]["mean_ms"],
                            d["faiss_flat"]["query"]["p50_ms"], d["faiss_flat"]["query"].get("cpu_ms"), 1.0],
                           ["picorag flat (float32 copy of the float16 file, numpy)", d["picorag_flat"]["qps"],
                            d["picorag_flat"]["query"]["p50_ms"], d["picorag_flat"]["query"].get("cpu_ms"),
                            d["picorag_flat"]["recall_at_10"]],
                           ["picorag IVF-PQ (+ exact re-score)", d["picorag_ivfpq"]["qps"],
                            d["picorag_ivfpq"]["query"]["p50_ms"], d["picorag_ivfpq"]["query"].get("cpu_ms"),
                            d["picorag_ivfpq"]["recall_at_10"]]]), ""]
    m = r["machine"]
    loads = {k: v["loadavg"] for k, v in r.items() if isinstance(v, dict) and "loadavg" in v}
    text += [f"Machine: {m['nproc']} cores ({m['model']}), shared with other jobs; 1/5/15-min load average at the "
             f"end of each stage: " + "; ".join(f"{k} {v}" for k, v in loads.items())
             + f". Real MiniLM vectors: {m['real_vectors']}; commit {m['commit']}."]
    write_text(OUT / "scale.md", "\n".join(text) + "\n")
    if len(sizes) >= 2:
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        bs = [build_of(r, s) for s in sizes]
        n = [b["chunks"] for b in bs]
        axes[0].loglog(n, [b["cpu_s"] for b in bs], "o-", label="CPU s")
        axes[0].loglog(n, [b["wall_s"] for b in bs], "s--", label="wall s (machine load 11-29)")
        axes[0].loglog(n, [bs[-1]["cpu_s"] * x / n[-1] for x in n], ":", c="gray", label="linear")
        axes[0].set(xlabel="chunks", ylabel="seconds", title="build time (BM25 + IVF-PQ)")
        axes[0].legend()
        axes[1].semilogx(n, [b["peak_rss_mb"] for b in bs], "o-")
        axes[1].axhline(4096, ls=":", c="red")
        axes[1].set(xlabel="chunks", ylabel="MB", title="peak RSS during build (target < 4 GB)", ylim=(0, 4500))
        fig.tight_layout()
        fig.savefig(IMG / "scale.png", dpi=110)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "data":
        make_data()
    elif cmd == "child":
        print(json.dumps(CHILDREN[sys.argv[2]](*sys.argv[3:])))
    elif cmd == "all":
        run_all(sys.argv[2:] or list(SIZES))
    elif cmd == "report":
        report()
    else:
        raise SystemExit(__doc__)
