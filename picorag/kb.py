"""The knowledge base: a directory of immutable segments and one manifest that commits them.

    KB/manifest.json     format version, analyzer, BM25 and chunking settings, segment list, counts
    KB/segments/...      see segment.py
    KB/.lock             writers hold an exclusive flock on it; readers never lock

A write (build, add, delete, compact) creates new files only, then atomically replaces the
manifest (write temp, fsync, os.replace, fsync dir). A reader opens whatever manifest it finds, so
it sees the old KB or the new one, never a mix; a write that dies half-way leaves the old KB intact.

>>> import tempfile, pathlib
>>> src = pathlib.Path(tempfile.mkdtemp()) / "d.jsonl"
>>> _ = src.write_text('{"id": "a", "text": "Cats purr."}\\n{"id": "b", "text": "Dogs bark."}\\n')
>>> kb = KnowledgeBase.build(pathlib.Path(tempfile.mkdtemp()) / "kb", [src])
>>> [h.id for h in kb.search("dogs")]
['b-0']
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .analyze import Analyzer
from .bm25 import BM25Params
from .chunk import DEFAULT_OVERLAP, DEFAULT_SIZE
from .encoders import Encoder, auto_encoder_name, load_encoder
from .ingest import ID_ROOT, read_paths
from .integrity import DAMAGE, check_manifest, check_segment, verify_segment
from .records import Hit, PicoragError
from .segment import Segment, fsync_dir
from .shard import (
    DEFAULT_BATCH,
    STAGING,
    Settings,
    ShardData,
    Staging,
    batches,
    check_encoder,
    doc_hash,
    embed_segment,
    index_chunks,
    input_signature,
    merge_segment,
    prepare,
    write_live_shard,
)
from .shard import run as run_shards
from .tune import discard_tuned
from .vectors import KINDS

__all__ = ["KnowledgeBase", "check_encoder", "doc_hash", "read_manifest", "write_lock"]

FORMAT = "picorag-kb"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ADD_STAGING = ".add"  # shards of an `add` in progress; removed by the next write if it died
# merge policy: every add makes a segment, and a search and an open cost grow with their number; past
# MAX_SEGMENTS the smallest MERGE_FACTOR are merged into one, so each chunk is rewritten O(log n) times
MAX_SEGMENTS = 10
MERGE_FACTOR = 10
Warn = Callable[[str], None]
Where = dict[str, str | list[str]]


def _bar(**kw: Any) -> Any:
    """A progress bar on stderr (shown on a terminal only)."""
    from tqdm import tqdm

    return tqdm(disable=None, leave=False, dynamic_ncols=True, **kw)


_REFUSED = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large",
            errno.EROFS: "read-only file system"}


def write_refused(e: BaseException) -> str | None:
    """Why the filesystem refused a write (full, read-only, over a size limit), or None for other errors."""
    if isinstance(e, OSError) and e.errno in _REFUSED:
        return f"{_REFUSED[e.errno]}: {e.strerror}"
    if isinstance(e, sqlite3.OperationalError) and getattr(e, "sqlite_errorcode", 0) & 0xFF in (
            sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY):
        return f"{'disk full' if e.sqlite_errorcode == sqlite3.SQLITE_FULL else 'write failed'}: SQLite: {e}"
    return None


@contextlib.contextmanager
def write_lock(path: Path, timeout: float = 60.0) -> Iterator[None]:
    """One writer at a time; a second one waits up to `timeout` seconds, then fails clearly. A write
    the filesystem refuses (disk full, read-only) becomes a PicoragError, its temporary files removed."""
    try:
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise PicoragError(f"cannot write to {path} ({write_refused(e) or e.strerror})") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PicoragError(f"{path} is locked by another write; try again when it finishes") from None
                time.sleep(0.05)
        try:
            yield
        except (*DAMAGE, OSError) as e:
            reason = write_refused(e)
            if reason is None:
                if not isinstance(e, OSError):
                    _verify(path)  # the KB's own files at fault? then say so (a 'damaged' PicoragError)
                raise
            with contextlib.suppress(Exception):  # free the space the failed write took, if we can
                _collect_garbage(path, read_manifest(path))
            raise PicoragError(f"could not write {path} ({reason}); the previous state is intact") from None
    finally:
        os.close(fd)


def _verify(path: Path) -> None:
    """The full check of every segment (see integrity.verify_segment); raises when one is damaged."""
    with KnowledgeBase.open(path) as kb:
        for seg in kb.segments:
            verify_segment(seg, path)


def read_manifest(path: Path) -> dict[str, Any]:
    mf = path / MANIFEST
    if not mf.is_file():
        raise PicoragError(f"knowledge base not found at {path} — build it with: picorag build {path} --from …")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PicoragError(f"{path} is not a readable picorag knowledge base (manifest.json: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PicoragError(f"{path} is not a picorag knowledge base (manifest.json has no '{FORMAT}' format)")
    if not isinstance(manifest.get("version", 0), int):  # compared before check_manifest runs
        raise PicoragError(f"knowledge base at {path} is damaged (manifest.json: 'version' is not a number)")
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise PicoragError(f"{path} was written by a newer picorag (KB format {manifest['version']}; this "
                           f"version reads up to {FORMAT_VERSION}) — upgrade picorag")
    return manifest


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    tmp = path / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / MANIFEST)
    fsync_dir(str(path))


class KnowledgeBase:
    """A searchable KB. Open one with `KnowledgeBase.open(path)`, make one with `.build`."""

    def __init__(self, path: Path, manifest: dict[str, Any], segments: list[Segment]):
        self.path = path
        self.manifest = manifest
        self.segments = segments
        self.analyzer = Analyzer.from_dict(manifest["analyzer"])
        self.params = BM25Params(**manifest["bm25"])
        self._encoder: Encoder | None = None

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path) -> KnowledgeBase:
        path = Path(path)
        for attempt in range(3):
            manifest = read_manifest(path)
            check_manifest(manifest, path)  # a damaged manifest is one clear error, not a KeyError later
            try:
                segs = [Segment.open(str(path / "segments"), e) for e in manifest["segments"]]
                for seg, e in zip(segs, manifest["segments"], strict=True):
                    check_segment(seg, e, (manifest["dense"] or {}).get("dim"), path)
                return cls(path, manifest, segs)
            except FileNotFoundError as e:
                # A writer may have committed and removed old files between our two reads: retry.
                if attempt == 2:
                    raise PicoragError(f"knowledge base at {path} is damaged: missing {e.filename}") from None
            except (*DAMAGE, OSError) as e:  # truncated .npy (EOFError), not a database (sqlite3), ...
                if attempt < 2 and read_manifest(path).get("generation") != manifest["generation"]:
                    continue  # not damage: a commit removed files we were opening (SQLite: "unable to open")
                raise PicoragError(f"knowledge base at {path} is damaged ({type(e).__name__}: {e})") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        for s in self.segments:
            s.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------

    @classmethod
    def build(cls, path: str | Path, sources: Iterable[str | Path], *, chunk_size: int = DEFAULT_SIZE,
              overlap: int = DEFAULT_OVERLAP, bm25: BM25Params | None = None,
              analyzer: Analyzer | None = None, dense: str | None = None, index: str = "flat",
              warn: Warn | None = None, batch_size: int = DEFAULT_BATCH, resume: bool = False,
              ray: str | None = None, nlist: int | None = None, nprobe: int | None = None,
              train_sample: int | None = None, encoder: Encoder | None = None) -> KnowledgeBase:
        """Build a KB from files/directories; an existing KB at `path` is replaced atomically.
        `dense` names an encoder ("auto", "minilm", "e5-small" or a model directory) to also
        store vectors, searched through `index` ("flat", "hnsw", "ivfflat" or "ivfpq"; `nlist`,
        `nprobe`, `train_sample` tune IVF, chosen from the corpus size when None).

        Input is streamed `batch_size` records at a time into shards under KB/.build, merged at
        the end (see shard.py): memory follows the batch size, not the corpus. A killed build
        continues from its last finished shard with `resume=True`. `ray` ("local" or a cluster
        address) runs chunking and embedding as Ray tasks; `encoder` embeds passages with an
        already loaded encoder (its name must be `dense`)."""
        path = Path(path)
        warn = warn or (lambda m: None)
        ours = {STAGING, ".lock", "segments"}  # what a killed first build leaves behind
        if path.exists() and not (path / MANIFEST).exists() and (
                not path.is_dir() or any(p.name not in ours for p in path.iterdir())):
            raise PicoragError(f"{path} exists and is not a picorag knowledge base; refusing to overwrite it")
        if (path / MANIFEST).exists():
            read_manifest(path)  # refuse to replace a KB written by a newer version
        if chunk_size < 1 or not 0 <= overlap < chunk_size:
            raise PicoragError(f"need chunk size >= 1 and 0 <= overlap < size (got {chunk_size}, {overlap})")
        if index not in KINDS:
            raise PicoragError(f"unknown index {index!r}; choose one of {', '.join(KINDS)}")
        if batch_size < 1:
            raise PicoragError(f"batch size must be at least 1 (got {batch_size})")
        sources = list(sources)
        analyzer_d, bm25_p = (analyzer or Analyzer()).to_dict(), bm25 or BM25Params()
        config = {"sources": input_signature(sources), "chunking": [chunk_size, overlap], "analyzer": analyzer_d,
                  "dense": [dense, index, nlist, nprobe, train_sample], "batch_size": batch_size}
        mapper = None
        if ray is not None:
            from .distributed import ray_mapper

            mapper = ray_mapper(ray)
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        (path / "segments").mkdir(exist_ok=True)
        try:
            with write_lock(path):
                old = read_manifest(path) if (path / MANIFEST).exists() else {"segments": []}
                _collect_garbage(path, old)  # leftovers of a write that died before committing
                staging = Staging(path / STAGING, config, resume, warn)
                extra = {k: v for k, v in (("nlist", nlist), ("nprobe", nprobe), ("train_sample", train_sample))
                         if v is not None}

                def settle(first: list) -> Settings:
                    if dense is not None and staging.dense() is None:
                        texts = [sec.text for r in first for sec in r.sections]
                        cfg = ({"model": dense, "dim": encoder.dim, "index": index} if encoder is not None
                               else _dense_config(dense, index, texts[:: max(1, len(texts) // 200)]))
                        staging.set_dense(None if cfg is None else cfg | extra)
                    return Settings(chunk_size, overlap, analyzer_d, staging.dense())

                earlier = len(staging.shards)
                try:
                    run_shards(staging, sources, Settings(chunk_size, overlap, analyzer_d, staging.dense()),
                               batch_size, warn, mapper, settle, _bar, encoder)
                except PicoragError:
                    if not earlier:  # bad input or an unreachable Ray: keep only the work of earlier runs
                        staging.remove()
                    raise
                if not sum(m["chunks"] for m in staging.meta):
                    staging.remove()
                    raise PicoragError("no documents with text found in the inputs")
                gen = old.get("generation", 0) + 1
                manifest = {
                    "format": FORMAT, "version": FORMAT_VERSION, "generation": gen,
                    "next_segment": old.get("next_segment", 1) + 1,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "analyzer": analyzer_d, "bm25": bm25_p.to_dict(),
                    "chunking": {"size": chunk_size, "overlap": overlap}, "dense": staging.dense(), "segments": [],
                }
                name = f"seg-{manifest['next_segment'] - 1:06d}"
                manifest["segments"] = [merge_segment(path / "segments", name, staging.shards, bm25_p,
                                                      staging.dense())]
                discard_tuned(path)  # a `picorag tune` adapter learned from the old chunks: gone before the commit
                cls._commit(path, manifest)
                staging.remove()
        except PicoragError:
            if created:
                shutil.rmtree(path, ignore_errors=True)
            raise
        return cls.open(path)

    @staticmethod
    def _commit(path: Path, manifest: dict[str, Any]) -> None:
        segs = manifest["segments"]
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest["counts"] = {"docs": sum(s["live_docs"] for s in segs),
                              "chunks": sum(s["chunks"] - s["n_deleted"] for s in segs)}
        try:
            _write_manifest(path, manifest)
        except OSError as e:
            kind = "disk full" if e.errno == errno.ENOSPC else e.strerror
            raise PicoragError(f"could not commit {path} ({kind}); the previous state is intact") from None
        _collect_garbage(path, manifest)

    def _reload(self) -> None:
        """Re-open from the newest manifest (a writer, holding the lock, must work on the latest
        committed state) and drop leftovers of writes that died before committing."""
        fresh = KnowledgeBase.open(self.path)
        self.close()
        self.__dict__.update(fresh.__dict__)
        _collect_garbage(self.path, self.manifest)

    def add(self, sources: Iterable[str | Path] = (), warn: Warn | None = None, dense: str | None = None,
            index: str = "flat", id_root: Path | None = None, batch_size: int = DEFAULT_BATCH) -> dict[str, Any]:
        """Add documents: new ones are indexed, unchanged ones skipped, changed ones replaced.
        `dense` gives a KB without vectors its vectors (all existing chunks are embedded); file ids
        are relative to `id_root` when given (else to the working directory). Input is streamed
        `batch_size` records at a time into shards, merged into one new segment at the end."""
        warn = warn or (lambda m: None)
        ch = self.manifest["chunking"]
        stats: dict[str, Any] = {"added": 0, "replaced": 0, "unchanged": 0, "chunks": 0, "chunk_ids": []}
        with write_lock(self.path):
            self._reload()
            if dense is not None:
                self._enable_dense(dense, index)
            settings = Settings(ch["size"], ch["overlap"], self.manifest["analyzer"], self.manifest.get("dense"))
            encoder = self.encoder() if settings.dense else None
            staging = Staging(self.path / ADD_STAGING, {}, False, warn)
            replaced: list[str] = []
            token = ID_ROOT.set(id_root)
            try:
                for n, batch in enumerate(batches(read_paths(sources, warn), batch_size), 1):
                    staging.claim(batch, n)
                    chunks, hashes, empty = prepare(batch, ch["size"], ch["overlap"])
                    for loc, doc_id in empty:
                        warn(f"{loc}: document {doc_id!r} has no text, skipped")
                    existing = self._live_hashes(list(hashes))
                    unchanged = {d for d, h in hashes.items() if existing.get(d) == h}
                    replaced += [d for d in hashes if d in existing and d not in unchanged]
                    new_chunks = [c for c in chunks if c.doc_id not in unchanged]
                    stats["unchanged"] += len(unchanged)
                    stats["chunk_ids"] += [c.id for c in new_chunks]
                    postings, vectors = index_chunks(new_chunks, settings, encoder)
                    staging.add(ShardData(new_chunks, {d: h for d, h in hashes.items() if d not in unchanged},
                                          postings, vectors, len(batch)))
                stats["chunks"] = len(stats["chunk_ids"])
                stats["replaced"] = len(replaced)
                stats["added"] = sum(m["docs"] for m in staging.meta) - len(replaced)
                if not stats["chunks"]:
                    return stats
                manifest = json.loads(json.dumps(self.manifest))
                manifest["generation"] += 1
                self._tombstone(manifest, lambda seg: seg.store.rows_of_docs(replaced))
                base_n = sum(s["chunks"] for s in manifest["segments"])
                base_len = sum(s["total_len"] for s in manifest["segments"])
                name = f"seg-{manifest['next_segment']:06d}"
                manifest["next_segment"] += 1
                manifest["segments"].append(merge_segment(self.path / "segments", name, staging.shards, self.params,
                                                          manifest.get("dense"), base_n, base_len))
                staging.remove()
                self._commit(self.path, manifest)
                self._reload()
                if len(self.segments) > MAX_SEGMENTS:
                    smallest = sorted(self.segments, key=lambda seg: int(seg.live.sum()))[:MERGE_FACTOR]
                    stats["merged_segments"] = len(smallest)
                    self._merge(smallest)
            finally:
                ID_ROOT.reset(token)
                staging.remove()
        return stats

    def _enable_dense(self, dense: str, index: str) -> None:
        current = self.manifest.get("dense")
        if current is not None:
            if dense not in ("auto", current["model"]):
                raise PicoragError(f"{self.path} already has vectors from {current['model']}; to use {dense}, "
                                   f"rebuild with: picorag build {self.path} --from … --dense {dense}")
            return
        sample = [c["text"] for s in self.segments for c in s.store.get(list(range(0, s.n, max(1, s.n // 100))))]
        manifest = json.loads(json.dumps(self.manifest))
        manifest["generation"] += 1
        manifest["dense"] = _dense_config(dense, index, sample)
        encoder = check_encoder(load_encoder(manifest["dense"]["model"]), manifest["dense"])
        try:  # a segment at a time, its vectors streamed through a mapped file: memory stays bounded
            for seg, entry in zip(self.segments, manifest["segments"], strict=True):
                entry.update(seg.write_vectors(embed_segment(seg, encoder, manifest["dense"],
                                                             self.path / ADD_STAGING)))
        finally:
            shutil.rmtree(self.path / ADD_STAGING, ignore_errors=True)
        self._commit(self.path, manifest)
        self._reload()

    def delete(self, doc_ids: Iterable[str] = (), chunk_ids: Iterable[str] = ()) -> dict[str, int]:
        """Tombstone whole documents and/or single chunks. Unknown ids fail and nothing is written."""
        doc_ids, chunk_ids = list(doc_ids), list(chunk_ids)
        with write_lock(self.path):
            self._reload()
            live_docs = set(self._live_hashes(doc_ids))
            live_chunks = {cid for seg in self.segments for cid, r in seg.store.rows_of_ids(chunk_ids).items()
                           if seg.live[r]}
            missing = [d for d in doc_ids if d not in live_docs] + [c for c in chunk_ids if c not in live_chunks]
            if missing:
                raise PicoragError(f"not in the knowledge base: {', '.join(map(repr, missing[:5]))}"
                                   + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
            manifest = json.loads(json.dumps(self.manifest))
            manifest["generation"] += 1
            n = self._tombstone(manifest, lambda seg: seg.store.rows_of_docs(doc_ids)
                                + list(seg.store.rows_of_ids(chunk_ids).values()))
            self._commit(self.path, manifest)
            self._reload()
        return {"docs": len(doc_ids), "chunks": n}

    def _tombstone(self, manifest: dict[str, Any], rows_of: Callable[[Segment], list[int]]) -> int:
        """Mark rows dead in every segment (writing new tombstone files); return rows newly deleted."""
        total = 0
        for seg, entry in zip(self.segments, manifest["segments"], strict=False):
            rows = rows_of(seg)
            dead = ~seg.live
            before = int(dead.sum())
            dead[rows] = True
            if int(dead.sum()) > before:
                total += int(dead.sum()) - before
                entry.update(seg.write_tombstones(dead, manifest["generation"]))
        return total

    def _live_hashes(self, doc_ids: list[str]) -> dict[str, str]:
        """doc_id -> content hash for documents that still have live chunks."""
        out: dict[str, str] = {}
        for seg in self.segments:
            for d, (h, first, n) in seg.store.docs_info(doc_ids).items():
                if seg.live[first : first + n].any():  # a document's rows are contiguous
                    out[d] = h
        return out

    def compact(self) -> dict[str, int]:
        """Merge all segments into one, dropping deleted chunks; BM25 becomes exact again."""
        with write_lock(self.path):
            self._reload()
            before = len(self.segments)
            if before == 1 and self.segments[0].live.all():
                return {"segments_before": 1, "segments_after": 1, "chunks": self.segments[0].n}
            n = self._merge(self.segments)
        return {"segments_before": before, "segments_after": 1, "chunks": n}

    def _merge(self, merging: list[Segment]) -> int:
        """Replace `merging` (held under the write lock) by one segment of their live rows, committed;
        BM25 weights use the length statistics of the whole KB. Returns the rows written."""
        for seg in merging:  # a rewrite reads everything: check it all first (as Lucene does on merge)
            verify_segment(seg, self.path)
        names = {seg.name for seg in merging}
        manifest = json.loads(json.dumps(self.manifest))
        kept = [e for e in manifest["segments"] if e["name"] not in names]
        # each segment's live rows become a shard; the shards merge on disk as a build's do
        staging = Staging(self.path / ADD_STAGING, {}, False, lambda m: None)
        try:
            n = 0
            for i, seg in enumerate(merging, 1):
                if seg.live.any():
                    n += write_live_shard(seg, staging.shard_dir(i))
                    staging.shards.append(staging.shard_dir(i))
            manifest["generation"] += 1
            name = f"seg-{manifest['next_segment']:06d}"
            manifest["next_segment"] += 1
            base_n = sum(e["chunks"] for e in kept)
            base_len = sum(e["total_len"] for e in kept)
            manifest["segments"] = kept + [merge_segment(self.path / "segments", name, staging.shards, self.params,
                                                         manifest.get("dense"), base_n, base_len)]
        finally:
            staging.remove()
        self._commit(self.path, manifest)
        self._reload()
        return n

    # -- reading ---------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        m = self.manifest
        segs = [{k: e[k] for k in ("name", "chunks", "docs", "n_deleted")}
                | {"bytes": _dir_size(self.path / "segments" / e["name"])} for e in m["segments"]]
        return {"path": str(self.path), "format_version": m["version"], "generation": m["generation"],
                "docs": m["counts"]["docs"], "chunks": m["counts"]["chunks"], "segments": segs,
                "size_bytes": sum(s["bytes"] for s in segs), "analyzer": m["analyzer"], "bm25": m["bm25"],
                "chunking": m["chunking"], "dense": m.get("dense"), "created": m["created"],
                "updated": m["updated"]}

    def search(self, query: str, k: int = 5, where: Where | None = None, mode: str | None = None,
               fetch: bool = True, **options: Any) -> list[Hit]:
        """The k best chunks. `mode`: bm25, dense or hybrid (default: hybrid when the KB has
        vectors); `where` filters metadata before ranking; fetch=False returns ids and scores
        only (faster); other options: see retrieve.Options."""
        from .retrieve import Options, search

        return search(self, query, k, where, Options(mode=mode, **options), fetch=fetch)

    def search_many(self, queries: list[str], k: int = 5, where: Where | None = None, mode: str | None = None,
                    fetch: bool = True, **options: Any) -> list[list[Hit]]:
        """`search` for many queries at once (batched scoring and encoding): one list per query."""
        from .retrieve import Options, search_many

        return search_many(self, queries, k, where, Options(mode=mode, **options), fetch=fetch)

    def encoder(self) -> Encoder:
        """The KB's own encoder (loaded once); a model whose dimension differs is refused."""
        if self._encoder is None:
            dense = self.manifest.get("dense")
            if dense is None:
                raise PicoragError(f"{self.path} has no vectors; add them with: picorag add {self.path} --dense auto")
            self._encoder = check_encoder(load_encoder(dense["model"]), dense)
        return self._encoder


def _dense_config(dense: str | None, index: str, sample: list[str]) -> dict[str, Any] | None:
    """The manifest's "dense" entry: which encoder, its dimension, which index kind."""
    if dense is None:
        return None
    if index not in KINDS:
        raise PicoragError(f"unknown index {index!r}; choose one of {', '.join(KINDS)}")
    name = auto_encoder_name(sample) if dense == "auto" else dense
    if Path(name).expanduser().is_dir():
        name = str(Path(name).expanduser().resolve())  # a KB must find its model from any directory
    encoder = load_encoder(name)
    return {"model": name, "dim": encoder.dim, "index": index}


def _dir_size(path: Path) -> int:
    """Bytes under `path`; 0 for what a newer commit removed meanwhile (an old snapshot's segments)."""
    total = 0
    for root, _, files in os.walk(path):  # os.walk skips directories that vanish mid-walk
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, f)).st_size
    return total


def _collect_garbage(path: Path, manifest: dict[str, Any]) -> None:
    """Remove segment dirs and tombstone files the committed manifest no longer references."""
    seg_root = path / "segments"
    shutil.rmtree(path / ADD_STAGING, ignore_errors=True)  # an `add` that died (writers hold the lock)
    keep = {e["name"]: e.get("deleted") for e in manifest["segments"]}
    for d in seg_root.iterdir():
        if d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)
        else:
            for f in d.glob("del-*.npy"):
                if f.name != keep[d.name]:
                    f.unlink(missing_ok=True)
