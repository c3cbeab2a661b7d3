"""Streaming builds: shards merged on disk equal an in-memory build, resume after SIGKILL, IVF
indexes filled shard by shard, and the same KB from a local Ray (2 workers)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from picorag import KnowledgeBase
from picorag.bm25 import BM25Params, Postings, write_merged
from picorag.cli import main
from picorag.records import PicoragError
from picorag.vectors import index_params

WORDS = [f"w{i}" for i in range(3000)] + ["cat", "dog", "river", "bank", "money", "music", "piano", "war"]


def corpus(path: Path, n: int, seed: int = 0, long_every: int = 17) -> Path:
    """n JSONL records of Zipf-distributed words; every `long_every`-th one spans several chunks."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = max(3, int(rng.integers(5, 60)) * (6 if long_every and i % long_every == 0 else 1))
            ids = np.minimum(rng.zipf(1.3, words) - 1, len(WORDS) - 1)
            sents = [" ".join(WORDS[j] for j in ids[s : s + 12]) + "." for s in range(0, len(ids), 12)]
            f.write(json.dumps({"id": f"d{i}", "title": f"T{i % 50}", "text": " ".join(sents)}) + "\n")
    return path


def snapshot(kb_path: Path) -> dict[str, object]:
    """Every array and table row of a one-segment KB (what must not depend on how it was built)."""
    m = json.loads((kb_path / "manifest.json").read_text())
    assert len(m["segments"]) == 1
    d = kb_path / "segments" / m["segments"][0]["name"]
    out: dict[str, object] = {f.name: np.load(f) for f in sorted(d.glob("*.npy"))}
    out["terms"] = json.loads((d / "bm25.terms.json").read_text())
    con = sqlite3.connect(d / "chunks.sqlite")
    out["chunks"] = con.execute("SELECT * FROM chunks ORDER BY row").fetchall()
    out["docs"] = con.execute("SELECT rowid, * FROM docs ORDER BY first_row").fetchall()
    con.close()
    entry = {k: v for k, v in m["segments"][0].items() if k != "name"}
    out["entry"] = entry
    out["counts"] = m["counts"]
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return corpus(tmp_path_factory.mktemp("scale") / "c.jsonl", 400)


def test_write_merged_equals_one_in_memory_index(tmp_path):
    rng = np.random.default_rng(1)
    docs = [[f"t{x}" for x in rng.zipf(1.5, int(rng.integers(0, 30)))] for _ in range(300)]
    params = BM25Params(k1=1.2, b=0.6)
    whole = Postings.from_tokens(docs)
    cuts = [0, 1, 40, 41, 200, 300]
    parts = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        d = tmp_path / f"p{i}"
        d.mkdir()
        Postings.from_tokens(docs[a:b]).save(str(d), None)
        parts.append(str(d))
    out = tmp_path / "out"
    out.mkdir()
    assert write_merged(str(out), parts, params, base_n=50, base_len=700) == (300, whole.total_len)
    merged, weights = Postings.load(str(out))
    assert merged.terms == whole.terms
    for name in ("indptr", "rows", "tf", "doclen"):
        assert np.array_equal(getattr(merged, name), getattr(whole, name)), name
    avgdl = (700 + whole.total_len) / 350
    assert np.array_equal(weights, whole.weights(params, avgdl))


def test_batch_size_does_not_change_the_kb(src, tmp_path):
    one = KnowledgeBase.build(tmp_path / "one", [src], chunk_size=64, overlap=8, batch_size=10_000)
    many = KnowledgeBase.build(tmp_path / "many", [src], chunk_size=64, overlap=8, batch_size=7)
    assert one.info()["chunks"] > 400  # long documents made several chunks
    assert_same(snapshot(tmp_path / "one"), snapshot(tmp_path / "many"))
    for q in ("cat dog", "w3 w17 river", "piano war money"):
        assert [(h.id, h.score) for h in one.search(q, k=10)] == [(h.id, h.score) for h in many.search(q, k=10)]
    assert not (tmp_path / "many" / ".build").exists()  # staging is gone after the commit


def test_add_in_batches_equals_one_batch(src, tmp_path):
    lines = Path(src).read_text().splitlines()
    changed = list(lines)
    changed[40] = json.dumps({"id": "d40", "text": "changed text about a river bank."})  # one replaced
    new = corpus(tmp_path / "new.jsonl", 79, seed=5).read_text().splitlines()
    changed += [json.dumps(json.loads(line) | {"id": f"e{i}"}) for i, line in enumerate(new)]  # 79 added
    stats = {}
    for name, bs in (("a", 10_000), ("b", 9)):
        data = tmp_path / f"data-{name}" / "c.jsonl"
        data.parent.mkdir()
        data.write_text("\n".join(lines) + "\n")
        kb = KnowledgeBase.build(tmp_path / name, [data], chunk_size=64, overlap=8)
        data.write_text("\n".join(changed) + "\n")
        stats[name] = kb.add([data], batch_size=bs)
        kb.compact()
    assert stats["a"] == stats["b"]
    assert (stats["a"]["unchanged"], stats["a"]["replaced"], stats["a"]["added"]) == (399, 1, 79)
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    a["chunks"] = [r[:5] + (r[5].replace("data-a", ""),) for r in a["chunks"]]  # metadata names the file
    b["chunks"] = [r[:5] + (r[5].replace("data-b", ""),) for r in b["chunks"]]
    a["docs"], b["docs"] = ([r[:2] + r[3:] for r in x["docs"]] for x in (a, b))  # hashes cover the path too
    assert_same(a, b)
    assert not (tmp_path / "b" / ".add").exists()


def test_duplicate_id_in_a_later_batch_names_both_lines(tmp_path):
    src = corpus(tmp_path / "c.jsonl", 30)
    with open(src, "a") as f:
        f.write(json.dumps({"id": "d3", "text": "again"}) + "\n")
    with pytest.raises(PicoragError, match=r"duplicate document id 'd3' in .*c.jsonl:4 and .*c.jsonl:31"):
        KnowledgeBase.build(tmp_path / "kb", [src], batch_size=4)
    assert not (tmp_path / "kb").exists()  # a failed first build leaves nothing behind


class FakeEncoder:
    """Deterministic clustered unit vectors from a hash of the text: fast, and ANN-friendly."""

    name = "fake"
    dim = 32

    def __init__(self):
        self.centers = np.random.default_rng(0).normal(size=(20, self.dim))

    def encode(self, texts, kind="passage"):
        out = []
        for t in texts:
            r = np.random.default_rng(abs(hash(t)) % 2**32)
            out.append(self.centers[r.integers(20)] + 0.3 * r.normal(size=self.dim))
        v = np.asarray(out, np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["ivfflat", "ivfpq"])
def test_ivf_trained_on_a_sample_and_filled_shard_by_shard(tmp_path, kind):
    src = corpus(tmp_path / "c.jsonl", 2500, long_every=0)
    kb = KnowledgeBase.build(tmp_path / "kb", [src], dense="fake", index=kind, encoder=FakeEncoder(),
                             batch_size=400, train_sample=1200, nlist=20, nprobe=3)
    seg = kb.segments[0]
    p = seg.vectors.params
    assert p == index_params(kind, 2500, 32, nlist=20, nprobe=3) and p["nlist"] == 20 and p["nprobe"] == 3
    assert seg.vectors.index.ntotal == 2500 and seg.vectors.index.is_trained
    assert kb.manifest["dense"] == {"model": "fake", "dim": 32, "index": kind, "nlist": 20, "nprobe": 3,
                                    "train_sample": 1200}
    vecs = np.asarray(seg.vectors.vectors, np.float32)
    flat = KnowledgeBase.build(tmp_path / "flat", [src], dense="fake", encoder=FakeEncoder(), batch_size=10_000)
    assert np.array_equal(np.asarray(flat.segments[0].vectors.vectors), seg.vectors.vectors)
    recall = []
    for q in vecs[::50]:
        exact = set(flat.segments[0].vectors.search(q, 10)[0].tolist())
        recall.append(len(exact & set(seg.vectors.search(q, 10)[0].tolist())) / 10)
    assert np.mean(recall) >= 0.9


def test_index_params_from_corpus_size():
    p = index_params("ivfpq", 1_000_000, 384)
    assert p["nlist"] == 4000 and 1_000_000 / p["nlist"] >= 39 and p["pq_m"] == 48
    assert index_params("ivfflat", 5000, 384, nlist=1000)["nlist"] == 5000 // 39  # capped: 39 points a list


BUILD_SCRIPT = """
import sys
from picorag import KnowledgeBase
KnowledgeBase.build(sys.argv[1], [sys.argv[2]], chunk_size=64, overlap=8, batch_size=5, resume=True)
"""


def test_resume_after_sigkill(src, tmp_path):
    kb = tmp_path / "kb"
    proc = subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(kb), str(src)])
    deadline = time.monotonic() + 120
    while not (kb / ".build" / "shard-000012" / "meta.json").exists():
        assert proc.poll() is None, "the build finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (kb / "manifest.json").exists()
    done = len(list((kb / ".build").glob("shard-*/meta.json")))
    with pytest.raises(PicoragError, match="cannot resume.*chunking"):
        KnowledgeBase.build(kb, [src], chunk_size=65, overlap=8, batch_size=5, resume=True)
    assert (kb / ".build" / "shard-000001").exists()  # a refused resume keeps the work
    seen: list[int] = []
    import picorag.shard as shard

    real = shard.Staging.add

    def spy(self, data):
        seen.append(len(self.shards) + 1)
        return real(self, data)

    shard.Staging.add = spy
    try:
        resumed = KnowledgeBase.build(kb, [src], chunk_size=64, overlap=8, batch_size=5, resume=True)
    finally:
        shard.Staging.add = real
    assert seen[0] == done + 1 >= 13 and seen[-1] == 80  # 400 records in shards of 5: only unfinished ones made
    fresh = KnowledgeBase.build(tmp_path / "fresh", [src], chunk_size=64, overlap=8)
    assert_same(snapshot(kb), snapshot(tmp_path / "fresh"))
    assert [h.id for h in resumed.search("w5 w9", k=10)] == [h.id for h in fresh.search("w5 w9", k=10)]


def test_cli_resume_and_index_flags(src, tmp_path, capsys):
    kb = tmp_path / "kb"
    assert main(["build", str(kb), "--from", str(src), "--batch-size", "50", "--resume", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["chunks"] > 400 and "no interrupted build" in out.err
    small = corpus(tmp_path / "small.jsonl", 12)
    assert main(["build", str(kb), "--from", str(small), "--dense", "minilm", "--index", "ivfflat", "--nlist", "4",
                 "--nprobe", "2", "--train-sample", "300", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dense"]["nprobe"] == 2
    assert main(["build", str(kb), "--from", str(src), "--batch-size", "0"]) == 1
    assert "batch size" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_build_equals_single_process(src, tmp_path):
    one = KnowledgeBase.build(tmp_path / "one", [src], chunk_size=64, overlap=8, batch_size=60)
    dist = KnowledgeBase.build(tmp_path / "ray", [src], chunk_size=64, overlap=8, batch_size=60, ray="local")
    assert_same(snapshot(tmp_path / "one"), snapshot(tmp_path / "ray"))
    assert [h.id for h in one.search("river bank", k=10)] == [h.id for h in dist.search("river bank", k=10)]


def test_ids_of_a_large_segment_come_from_sqlite(src, tmp_path, monkeypatch):
    import picorag.segment as segment

    kb = KnowledgeBase.build(tmp_path / "kb", [src], chunk_size=64, overlap=8)
    want = [(h.id, h.score) for h in kb.search("w5 w9 river", k=20, fetch=True)]
    monkeypatch.setattr(segment, "IDS_IN_MEMORY", 10)  # as if the segment were huge
    big = KnowledgeBase.open(tmp_path / "kb")
    assert [(h.id, h.score) for h in big.search("w5 w9 river", k=20, fetch=False)] == want
    assert big.segments[0]._doc_ids is None  # no list of every doc id was made
    assert isinstance(big.segments[0].doc_of_row, np.ndarray) and not big.segments[0].doc_of_row.flags.owndata


def test_cli_add_in_batches(src, tmp_path, capsys):
    kb = tmp_path / "kb"
    half = tmp_path / "half.jsonl"
    half.write_text("".join(Path(src).read_text().splitlines(keepends=True)[:200]))
    assert main(["build", str(kb), "--from", str(half), "--chunk-size", "64", "--overlap", "8"]) == 0
    capsys.readouterr()
    assert main(["add", str(kb), str(src), "--batch-size", "30", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["added"], stats["replaced"], stats["unchanged"]) == (200, 200, 0)  # the path is in the hash
    assert main(["add", str(kb), str(src), "--batch-size", "0"]) == 1
    assert "batch size must be at least 1" in capsys.readouterr().err
    assert KnowledgeBase.open(kb).info()["chunks"] == KnowledgeBase.build(tmp_path / "b", [src], chunk_size=64,
                                                                          overlap=8).info()["chunks"]


def test_compact_streams_live_rows_into_one_segment(tmp_path, monkeypatch):
    import picorag.kb

    monkeypatch.setattr(picorag.kb, "load_encoder", lambda name: FakeEncoder())  # `add` embeds with the KB's model
    src = corpus(tmp_path / "c.jsonl", 1200, long_every=0)
    lines = src.read_text().splitlines(keepends=True)
    parts = []
    for i in range(3):
        p = tmp_path / f"p{i}" / "c.jsonl"  # the same path relative to each root: same ids, same hashes
        p.parent.mkdir()
        p.write_text("".join(lines[i * 400 : (i + 1) * 400]))
        parts.append(p)
    kb = KnowledgeBase.build(tmp_path / "kb", [parts[0]], dense="fake", index="ivfflat", encoder=FakeEncoder(),
                             nlist=8)
    for p in parts[1:]:
        kb.add([p])
    gone = [f"d{i}" for i in range(0, 1200, 7)]
    kb.delete(doc_ids=gone)
    kb.delete(chunk_ids=["d1-0", "d801-0"])
    assert kb.compact() == {"segments_before": 3, "segments_after": 1, "chunks": 1200 - len(gone) - 2}
    keep = tmp_path / "keep.jsonl"
    keep.write_text("".join(line for i, line in enumerate(lines) if i % 7 and i not in (1, 801)))
    fresh = KnowledgeBase.build(tmp_path / "fresh", [keep], dense="fake", index="ivfflat", encoder=FakeEncoder(),
                                nlist=8)
    for q in ("w1 w2", "w10 river", "w3"):
        assert [(h.id, h.score) for h in kb.search(q, k=10, mode="bm25")] == \
            [(h.id, h.score) for h in fresh.search(q, k=10, mode="bm25")]
    a, b = kb.segments[0], fresh.segments[0]
    assert np.array_equal(np.asarray(a.vectors.vectors), np.asarray(b.vectors.vectors))
    assert a.vectors.params == b.vectors.params and a.vectors.index.ntotal == len(b.vectors.vectors)
    assert [c["id"] for c in a.store.iter_chunks()] == [c["id"] for c in b.store.iter_chunks()]
    assert not (tmp_path / "kb" / ".add").exists()


def test_batched_bm25_mixes_sparse_and_dense_queries():
    from picorag.bm25 import query_weights, top_k, top_k_many

    rng = np.random.default_rng(3)
    docs = [["common"] + [f"t{x}" for x in rng.zipf(1.4, 20)] for _ in range(2000)]
    ix = Postings.from_tokens(docs)
    params = BM25Params()
    w = ix.weights(params, ix.total_len / ix.n_docs)
    qs = [["common", "t1"], ["t40"], ["t2", "t3"], ["t77", "t5"], ["nothing"]]
    qws = [query_weights(q, {t: ix.df(t) for t in q}, ix.n_docs, params) for q in qs]
    sizes = [sum(ix.df(t) for t in q) for q in qs]
    assert min(sizes) * 8 < ix.n_docs <= max(sizes) * 8  # both paths are taken
    for mask in (None, np.arange(ix.n_docs) % 4 != 0):
        for (r1, s1), qw in zip(top_k_many(ix, w, qws, 10, mask), qws, strict=True):
            r2, s2 = top_k(ix, w, qw, 10, mask)
            assert r1.tolist() == r2.tolist()
            np.testing.assert_allclose(s1, s2, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_build_with_minilm_vectors_equals_single_process(tmp_path):
    src = corpus(tmp_path / "c.jsonl", 40, long_every=0)
    one = KnowledgeBase.build(tmp_path / "one", [src], dense="minilm", batch_size=10)
    dist = KnowledgeBase.build(tmp_path / "ray", [src], dense="minilm", batch_size=10, ray="local")
    assert_same(snapshot(tmp_path / "one"), snapshot(tmp_path / "ray"))
    assert [h.id for h in one.search("w3 w8", k=5)] == [h.id for h in dist.search("w3 w8", k=5)]


def test_add_dense_streams_vectors_into_existing_segments(tmp_path, monkeypatch):
    import picorag.kb
    import picorag.shard

    monkeypatch.setattr(picorag.kb, "load_encoder", lambda name: FakeEncoder())
    monkeypatch.setattr(picorag.shard, "DEFAULT_BATCH", 333)  # several embedding batches per segment
    src = corpus(tmp_path / "c.jsonl", 1500, long_every=0)
    kb = KnowledgeBase.build(tmp_path / "kb", [src])
    kb.add(dense="fake", index="ivfflat")
    dense = KnowledgeBase.build(tmp_path / "dense", [src], dense="fake", index="ivfflat", encoder=FakeEncoder())
    a, b = kb.segments[0].vectors, dense.segments[0].vectors
    assert np.array_equal(np.asarray(a.vectors), np.asarray(b.vectors))
    assert a.params == b.params and a.params["kind"] == "ivfflat" and a.index.ntotal == 1500
    assert not (tmp_path / "kb" / ".add").exists()


def test_a_failed_resume_keeps_the_finished_shards(src, tmp_path, monkeypatch):
    import picorag.shard as shard

    kb = tmp_path / "kb"
    real_add = shard.Staging.add

    def stop_after_3(self, data):
        if len(self.shards) == 3:
            raise KeyboardInterrupt  # as if killed: the staging area stays
        return real_add(self, data)

    monkeypatch.setattr(shard.Staging, "add", stop_after_3)
    with pytest.raises(KeyboardInterrupt):
        KnowledgeBase.build(kb, [src], batch_size=50)
    assert len(list((kb / ".build").glob("shard-*/meta.json"))) == 3
    monkeypatch.setattr(shard.Staging, "add", real_add)

    def broken(records, settings, encoder=None):
        raise PicoragError("the encoder went away")

    monkeypatch.setattr(shard, "process", broken)
    with pytest.raises(PicoragError, match="went away"):
        KnowledgeBase.build(kb, [src], batch_size=50, resume=True)
    assert len(list((kb / ".build").glob("shard-*/meta.json"))) == 3  # earlier work kept for the next try
    monkeypatch.undo()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(Path(src).read_text() + "{not json\n")
    with pytest.raises(PicoragError, match="malformed JSON"):
        KnowledgeBase.build(tmp_path / "other", [bad], batch_size=50)
    assert not (tmp_path / "other").exists()  # a first build that failed on its input leaves nothing
