"""Streaming, memory-bounded builds: records in batches -> shards on disk -> one merged segment.

A build reads its inputs a batch of records at a time. Each batch becomes a *shard*: its chunks,
their BM25 term frequencies and their float16 vectors, written to disk and forgotten. When the
input ends, the shards are merged on disk into one ordinary segment (see segment.py) whose arrays
equal those of an in-memory build, so BM25 scores are the same. Peak memory is set by the batch
size (plus the vocabulary and an ANN index's training sample), not by the corpus.

    KB/.build/                 staging area; kept when a build is killed, for `--resume`
      config.json              settings and input files (sizes, mtimes) that a resume must match
      dense.json               the resolved dense settings (model, dim, index), once known
      seen.sqlite              doc_id -> location, shard: duplicate ids refused without RAM per doc
      shard-000001/            a finished batch (renamed into place when complete):
        chunks.sqlite, docs.npy, chunkno.npy, bm25.{indptr,rows,tf,doclen}.npy, bm25.terms.json,
        vectors.f16.npy, meta.json {"records_end", "chunks", "docs", "total_len"}

The work on a batch (`process`: chunk, hash, analyze, embed) is a pure function of the records and
the settings, so it can run in another process or on a Ray worker (distributed.py).

>>> from picorag.records import Record, Section
>>> s = Settings(64, 8, {"language": "en"}, None)
>>> process([Record("a", "", [Section("Cats purr.")])], s).chunks[0].id
'a-0'
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .analyze import Analyzer
from .bm25 import BM25Params, Postings, write_merged
from .chunk import chunk_record
from .encoders import Encoder, embed, load_encoder
from .ingest import list_files, read_paths
from .integrity import load_array
from .records import Chunk, PicoragError, Record
from .segment import fsync_dir, publish
from .store import merge_stores, write_store
from .vectors import VectorIndex, build_faiss, default_train_sample, index_params

STAGING = ".build"
DEFAULT_BATCH = 10_000  # records per shard
MAX_BATCH_CHARS = 64_000_000  # ...and at most this much text, whatever the records' sizes
Warn = Callable[[str], None]
Mapper = Callable[[Callable[[list[Record]], "ShardData"], Iterator[list[Record]]], Iterator["ShardData"]]


@dataclass(frozen=True)
class Settings:
    """What a worker needs to turn records into a shard: chunking, analyzer, dense config."""

    chunk_size: int
    overlap: int
    analyzer: dict[str, Any]
    dense: dict[str, Any] | None


@dataclass
class ShardData:
    """One processed batch."""

    chunks: list[Chunk]
    hashes: dict[str, str]  # doc_id -> content hash, for documents that have chunks
    postings: Postings | None
    vectors: np.ndarray | None  # float16 (n, dim)
    n_records: int
    empty: list[tuple[str, str]] = field(default_factory=list)  # (location, doc_id) of records without text


def doc_hash(chunks: list[Chunk]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(json.dumps([c.id, c.text, c.index_prefix, c.meta], ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()[:32]


def location(rec: Record) -> str:
    return f"{rec.meta.get('source_path', '?')}" + (f":{rec.meta['line']}" if "line" in rec.meta else "")


def check_encoder(encoder: Encoder, dense: dict[str, Any]) -> Encoder:
    if encoder.dim != dense["dim"]:
        raise PicoragError(f"encoder {encoder.name} gives {encoder.dim}-d vectors but the KB was embedded with "
                           f"{dense['model']} ({dense['dim']}-d)")
    return encoder


@lru_cache(maxsize=4)
def _analyzer(spec: str) -> Analyzer:
    return Analyzer.from_dict(json.loads(spec))


def prepare(records: list[Record], size: int, overlap: int) -> tuple[list[Chunk], dict[str, str], list]:
    """Chunk records; return chunks, doc_id -> hash, and the (location, doc_id) of empty records."""
    chunks: list[Chunk] = []
    hashes: dict[str, str] = {}
    empty = []
    for rec in records:
        cs = chunk_record(rec, size, overlap)
        if not cs:
            empty.append((location(rec), rec.doc_id))
            continue
        chunks.extend(cs)
        hashes[rec.doc_id] = doc_hash(cs)
    return chunks, hashes, empty


def index_chunks(chunks: list[Chunk], s: Settings, encoder: Encoder | None = None) -> tuple[Postings, Any]:
    """BM25 term frequencies (no weights yet) and float16 vectors of chunks."""
    analyzer = _analyzer(json.dumps(s.analyzer, sort_keys=True))
    postings = Postings.from_tokens(analyzer.tokenize(c.index_text) for c in chunks)
    vectors = None
    if s.dense:
        encoder = encoder or check_encoder(load_encoder(s.dense["model"]), s.dense)
        vectors = embed(encoder, [c.index_text for c in chunks])
    return postings, vectors


def process(records: list[Record], s: Settings, encoder: Encoder | None = None) -> ShardData:
    """A batch of records -> a shard's data (what a Ray task runs)."""
    chunks, hashes, empty = prepare(records, s.chunk_size, s.overlap)
    postings, vectors = index_chunks(chunks, s, encoder)
    return ShardData(chunks, hashes, postings, vectors, len(records), empty)


def batches(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    """Lists of up to `size` records (fewer when their text passes MAX_BATCH_CHARS)."""
    if size < 1:
        raise PicoragError(f"batch size must be at least 1 (got {size})")
    batch: list[Record] = []
    chars = 0
    for rec in records:
        batch.append(rec)
        chars += sum(len(s.text) for s in rec.sections)
        if len(batch) >= size or chars >= MAX_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def write_shard(directory: Path, data: ShardData, records_end: int) -> dict[str, Any]:
    """Write a finished shard (temp dir, fsync, rename): after the rename it counts as done."""
    tmp = directory.parent / f".tmp-{directory.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_store(str(tmp / "chunks.sqlite"), data.chunks, data.hashes)
    doc_num: dict[str, int] = {}
    np.save(tmp / "docs.npy", np.array([doc_num.setdefault(c.doc_id, len(doc_num)) for c in data.chunks], np.int32))
    np.save(tmp / "chunkno.npy", np.array([int(c.id.rsplit("-", 1)[1]) for c in data.chunks], np.int32))
    assert data.postings is not None
    data.postings.save(str(tmp), None)
    if data.vectors is not None:
        np.save(tmp / "vectors.f16.npy", np.asarray(data.vectors, np.float16))
    meta = {"records_end": records_end, "chunks": len(data.chunks), "docs": len(doc_num),
            "total_len": data.postings.total_len}
    (tmp / "meta.json").write_text(json.dumps(meta))
    publish(str(tmp), str(directory))
    return meta


class Staging:
    """The `.build` directory of one build: finished shards, the seen-ids table, the settings."""

    def __init__(self, root: Path, config: dict[str, Any], resume: bool, warn: Warn):
        self.root = root
        found = (root / "config.json").is_file()
        if resume and found:
            old = json.loads((root / "config.json").read_text(encoding="utf-8"))
            if old != config:
                changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise PicoragError(f"cannot resume: the interrupted build used different {', '.join(changed)}; "
                                   "run the build without --resume to start over")
        else:
            if resume:
                warn(f"no interrupted build to resume in {root.parent}; building from the start")
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            _write_json(root / "config.json", config)
        self.shards: list[Path] = []
        self.meta: list[dict[str, Any]] = []
        for i in itertools.count(1):  # finished shards form a prefix; anything after a gap is redone
            d = self.shard_dir(i)
            if not (d / "meta.json").is_file():
                break
            self.shards.append(d)
            self.meta.append(json.loads((d / "meta.json").read_text()))
        for d in root.iterdir():
            if d.is_dir() and d not in self.shards:
                shutil.rmtree(d, ignore_errors=True)
        self.seen = sqlite3.connect(root / "seen.sqlite")
        self.seen.executescript("PRAGMA synchronous=OFF; CREATE TABLE IF NOT EXISTS seen "
                                "(doc_id TEXT PRIMARY KEY, loc TEXT NOT NULL, shard INTEGER NOT NULL);")
        self.seen.execute("DELETE FROM seen WHERE shard > ?", (len(self.shards),))  # claimed by unfinished shards
        self.seen.commit()

    def shard_dir(self, i: int) -> Path:
        return self.root / f"shard-{i:06d}"

    @property
    def records_done(self) -> int:
        return self.meta[-1]["records_end"] if self.meta else 0

    def dense(self) -> dict[str, Any] | None:
        f = self.root / "dense.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def set_dense(self, dense: dict[str, Any] | None) -> None:
        _write_json(self.root / "dense.json", dense)

    def claim(self, batch: list[Record], shard: int) -> None:
        """Record the batch's doc ids; a duplicate (in the batch or earlier) fails naming both places."""
        mine: dict[str, str] = {}
        for rec in batch:
            loc = location(rec)
            if rec.doc_id in mine:
                raise PicoragError(f"duplicate document id {rec.doc_id!r} in {mine[rec.doc_id]} and {loc}")
            mine[rec.doc_id] = loc
        ids = list(mine)
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            hit = self.seen.execute(f"SELECT doc_id, loc FROM seen WHERE doc_id IN ({','.join('?' * len(part))}) "
                                    "LIMIT 1", part).fetchone()
            if hit:
                raise PicoragError(f"duplicate document id {hit[0]!r} in {hit[1]} and {mine[hit[0]]}")
        self.seen.executemany("INSERT INTO seen VALUES (?,?,?)", [(d, loc, shard) for d, loc in mine.items()])
        self.seen.commit()

    def add(self, data: ShardData) -> None:
        i = len(self.shards) + 1
        self.meta.append(write_shard(self.shard_dir(i), data, self.records_done + data.n_records))
        self.shards.append(self.shard_dir(i))

    def close(self) -> None:
        self.seen.close()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)


def input_signature(sources: Iterable[str | Path]) -> list[list[Any]]:
    """The input files with sizes and mtimes: a resume refuses inputs that changed since."""
    out = []
    for f in list_files(sources, lambda m: None):
        st = f.stat()
        out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def run(staging: Staging, sources: Iterable[str | Path], settings: Settings, batch_size: int, warn: Warn,
        mapper: Mapper | None = None, on_first: Callable[[list[Record]], Settings] | None = None,
        progress: Callable[..., Any] | None = None, encoder: Encoder | None = None) -> None:
    """Stream `sources` into shards under `staging`, skipping the records of finished shards.
    `on_first` may settle the settings from the first batch (the dense model for "auto");
    `mapper` runs `process` over batches, in order (default: here, one after another, with
    `encoder` if given)."""
    records = read_paths(sources, warn)
    skip = staging.records_done
    if skip:
        for _ in itertools.islice(records, skip):  # parsing is cheap next to chunking and embedding
            pass
    stream = batches(records, batch_size)
    first = next(stream, None)
    if first is None:
        return
    if on_first is not None:
        settings = on_first(first)

    def claimed() -> Iterator[list[Record]]:
        for n, batch in enumerate(itertools.chain([first], stream), len(staging.shards) + 1):
            staging.claim(batch, n)
            yield batch

    if mapper is not None:
        encoder = None  # a loaded model stays in this process; workers load their own

    def work(batch: list[Record]) -> ShardData:
        return process(batch, settings, encoder)

    results = (mapper or map)(work, claimed())
    bar = progress(desc="shards", initial=len(staging.shards), unit="shard") if progress else None
    for data in results:
        for loc, doc_id in data.empty:
            warn(f"{loc}: document {doc_id!r} has no text, skipped")
        staging.add(data)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(records=staging.records_done, refresh=False)
    if bar is not None:
        bar.close()


def write_live_shard(seg: Any, directory: Path, block: int = 1 << 23) -> int:
    """Write a segment's live rows as a shard (what `compact` merges): chunks streamed from SQLite,
    postings filtered `block` at a time into mapped arrays, vectors copied a block of rows at a time.
    Returns the number of rows written."""
    from numpy.lib.format import open_memmap

    tmp = directory.parent / f".tmp-{directory.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    live = np.asarray(seg.live)
    hashes = {d: h for d, h, _, _ in seg.store.doc_rows()}
    write_store(str(tmp / "chunks.sqlite"), (Chunk(c["id"], c["doc_id"], c["text"], c["index_prefix"], c["meta"])
                                             for c in seg.store.iter_chunks() if live[c["row"]]), hashes)
    docs = np.asarray(seg.doc_of_row)[live]
    nums = np.concatenate([[0], np.cumsum(docs[1:] != docs[:-1])]) if len(docs) else np.zeros(0)
    np.save(tmp / "docs.npy", nums.astype(np.int32))
    np.save(tmp / "chunkno.npy", load_array(Path(seg.directory) / "chunkno.npy", mmap_mode="r")[live].astype(np.int32))
    ix = seg.postings
    new_row = (np.cumsum(live) - 1).astype(np.int32)
    nnz = len(ix.rows)
    kept = sum(int(live[ix.rows[a : a + block]].sum()) for a in range(0, nnz, block))
    out_rows = open_memmap(tmp / "bm25.rows.npy", "w+", np.int32, (kept,)) if kept else np.zeros(0, np.int32)
    out_tf = open_memmap(tmp / "bm25.tf.npy", "w+", np.uint16, (kept,)) if kept else np.zeros(0, np.uint16)
    indptr = np.asarray(ix.indptr)
    new_indptr = np.zeros(len(indptr), np.int64)
    done = 0
    for a in range(0, nnz, block):  # postings stay term-major with rows ascending: filtering keeps both
        rows = ix.rows[a : a + block]
        keep = live[rows]
        cum = np.concatenate([[0], np.cumsum(keep)])
        inside = (indptr >= a) & (indptr < a + len(rows))
        new_indptr[inside] = done + cum[indptr[inside] - a]
        n = int(cum[-1])
        out_rows[done : done + n] = new_row[rows[keep]]
        out_tf[done : done + n] = ix.tf[a : a + block][keep]
        done += n
    new_indptr[indptr >= nnz] = done
    used = np.diff(new_indptr) > 0  # terms left without postings are dropped, as a fresh build has none
    for name, arr in (("rows", out_rows), ("tf", out_tf)):
        if isinstance(arr, np.memmap):
            arr.flush()
        else:
            np.save(tmp / f"bm25.{name}.npy", arr)
    del out_rows, out_tf
    np.save(tmp / "bm25.indptr.npy", np.concatenate([[0], np.cumsum(np.diff(new_indptr)[used])]).astype(np.int64))
    doclen = np.asarray(ix.doclen)[live]
    np.save(tmp / "bm25.doclen.npy", doclen)
    with open(tmp / "bm25.terms.json", "w", encoding="utf-8") as f:
        json.dump([t for t, u in zip(ix.terms, used.tolist(), strict=True) if u], f, ensure_ascii=False)
    n_live = int(live.sum())
    if seg.vectors is not None:
        vec = seg.vectors.vectors
        out = open_memmap(tmp / "vectors.f16.npy", "w+", np.float16, (n_live, vec.shape[1])) if n_live else None
        at = 0
        for a in range(0, len(live), 65_536):
            part = np.asarray(vec[a : a + 65_536])[live[a : a + 65_536]]
            if out is not None:
                out[at : at + len(part)] = part
            at += len(part)
        if out is None:
            np.save(tmp / "vectors.f16.npy", np.zeros((0, vec.shape[1]), np.float16))
        else:
            out.flush()
            del out
    meta = {"records_end": 0, "chunks": n_live, "docs": int(nums[-1]) + 1 if len(nums) else 0,
            "total_len": int(doclen.sum())}
    (tmp / "meta.json").write_text(json.dumps(meta))
    publish(str(tmp), str(directory))
    return n_live


def embed_segment(seg: Any, encoder: Encoder, dense: dict[str, Any], tmp: Path, batch: int | None = None,
                  seed: int = 0) -> VectorIndex:
    """Vectors for an existing segment (`add --dense`), embedded `batch` chunks at a time into a
    float16 file under `tmp` (memory-mapped), then indexed as a build would."""
    from numpy.lib.format import open_memmap

    tmp.mkdir(parents=True, exist_ok=True)
    vec = open_memmap(tmp / f"{seg.name}.f16.npy", "w+", np.float16, (seg.n, dense["dim"])) if seg.n else \
        np.zeros((0, dense["dim"]), np.float16)
    at, texts, batch = 0, [], batch or DEFAULT_BATCH
    for c in itertools.chain(seg.store.iter_chunks(), [None]):
        if c is not None:
            texts.append(c["index_prefix"] + c["text"])
        if texts and (c is None or len(texts) >= batch):
            vec[at : at + len(texts)] = embed(encoder, texts)
            at, texts = at + len(texts), []
    kind = dense.get("index", "flat") if seg.n >= dense.get("min_ann_rows", 1000) else "flat"
    params = index_params(kind, seg.n, dense["dim"], dense.get("nlist"), nprobe=dense.get("nprobe"))
    return VectorIndex(vec, build_faiss(vec, params, dense.get("train_sample") or default_train_sample(params, seg.n),
                                        seed), params)


def merge_segment(seg_root: Path, name: str, shards: list[Path], bm25: BM25Params, dense: dict[str, Any] | None,
                  base_n: int = 0, base_len: int = 0, seed: int = 0) -> dict[str, Any]:
    """Merge finished shards into the segment `seg_root/name` (temp dir + rename); its manifest entry.
    BM25 weights use the average length over the KB's `base_n` rows plus the new ones."""
    from numpy.lib.format import open_memmap

    tmp = seg_root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    merge_stores(str(tmp / "chunks.sqlite"), [str(d / "chunks.sqlite") for d in shards])
    metas = [json.loads((d / "meta.json").read_text()) for d in shards]
    docs, nos, doc_off = [], [], 0
    for d, m in zip(shards, metas, strict=True):
        docs.append(load_array(d / "docs.npy") + np.int32(doc_off))
        nos.append(load_array(d / "chunkno.npy"))
        doc_off += m["docs"]
    np.save(tmp / "docs.npy", np.concatenate(docs or [np.zeros(0, np.int32)]).astype(np.int32))
    np.save(tmp / "chunkno.npy", np.concatenate(nos or [np.zeros(0, np.int32)]).astype(np.int32))
    del docs, nos
    n, total_len = write_merged(str(tmp), [str(d) for d in shards], bm25, base_n, base_len)
    params = None
    if dense is not None:
        vec = open_memmap(tmp / "vectors.f16.npy", "w+", np.float16, (n, dense["dim"])) if n else \
            np.zeros((0, dense["dim"]), np.float16)
        off = 0
        for d in shards:
            part = load_array(d / "vectors.f16.npy", mmap_mode="r")
            vec[off : off + len(part)] = part
            off += len(part)
        if isinstance(vec, np.memmap):
            vec.flush()
        else:
            np.save(tmp / "vectors.f16.npy", vec)
        kind = dense.get("index", "flat") if n >= dense.get("min_ann_rows", 1000) else "flat"
        params = index_params(kind, n, dense["dim"], dense.get("nlist"), nprobe=dense.get("nprobe"))
        index = build_faiss(vec, params, dense.get("train_sample") or default_train_sample(params, n), seed)
        VectorIndex(vec, index, params).save_index(str(tmp))
        del vec
    publish(str(tmp), str(seg_root / name))
    return {"name": name, "chunks": n, "docs": doc_off, "deleted": None, "n_deleted": 0, "live_docs": doc_off,
            "total_len": total_len, "dense": params}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(str(path.parent))
