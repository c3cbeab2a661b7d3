"""One immutable segment of a KB: a directory with the chunk store and the index arrays.

    segments/seg-000001/
        chunks.sqlite          chunk id, doc_id, text, index prefix, metadata JSON (row = array index)
        docs.npy               int32 doc number of each row (doc numbers follow the docs table's first_row order)
        chunkno.npy            int32 chunk number i of each row (its id is f"{doc_id}-{i}")
        bm25.*.npy, .json      term-major postings, tf, doc lengths, eager weights, vocabulary
        del-000007.npy         tombstones: sorted rows deleted as of KB generation 7 (optional)

A segment is written under a temporary name and renamed into place; nothing in it changes
afterwards except that newer tombstone files may appear beside the old ones. The manifest says
which tombstone file is current, so a reader never sees a half-applied delete.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bm25 import Postings
from .integrity import load_array
from .records import Chunk
from .store import Store, write_store
from .vectors import VectorIndex

IDS_IN_MEMORY = 200_000  # documents of a segment whose ids `Segment.ids` keeps in a Python list


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_segment(seg_root: str, name: str, chunks: Sequence[Chunk], doc_hashes: dict[str, str],
                  postings: Postings, weights: np.ndarray, vectors: VectorIndex | None = None) -> dict[str, Any]:
    """Write a complete segment atomically (temp dir + rename) and return its manifest entry."""
    tmp = os.path.join(seg_root, f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_store(os.path.join(tmp, "chunks.sqlite"), chunks, doc_hashes)
    doc_num: dict[str, int] = {}
    np.save(os.path.join(tmp, "docs.npy"),
            np.array([doc_num.setdefault(c.doc_id, len(doc_num)) for c in chunks], dtype=np.int32))
    np.save(os.path.join(tmp, "chunkno.npy"), np.array([int(c.id.rsplit("-", 1)[1]) for c in chunks], dtype=np.int32))
    postings.save(tmp, weights)
    if vectors is not None:
        vectors.save(tmp)
    publish(tmp, os.path.join(seg_root, name))
    return {"name": name, "chunks": len(chunks), "docs": len(doc_num), "deleted": None,
            "n_deleted": 0, "live_docs": len(doc_num), "total_len": postings.total_len,
            "dense": None if vectors is None else vectors.params}


def publish(tmp: str, final: str) -> None:
    """fsync every file of the finished directory `tmp`, then rename it to `final` (atomic)."""
    for f in os.listdir(tmp):
        with open(os.path.join(tmp, f), "rb+") as fh:
            os.fsync(fh.fileno())
    fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)  # left by a write that died before committing
    os.rename(tmp, final)
    fsync_dir(os.path.dirname(final))


@dataclass
class Segment:
    """An open segment: its store, postings and the current live-row mask."""

    name: str
    directory: str
    store: Store
    postings: Postings
    weights: np.ndarray
    live: np.ndarray  # bool per row: False when tombstoned
    doc_of_row: np.ndarray
    vectors: VectorIndex | None = None

    def __post_init__(self):
        self.all_live = bool(self.live.all())
        self._doc_ids: list[str] | None = None
        self._chunk_no: np.ndarray | None = None

    def ids(self, rows: Sequence[int]) -> list[tuple[str, str]]:
        """(chunk id, doc_id) of rows: chunk numbers from the mapped chunkno.npy, doc ids from a list
        kept in memory for segments up to IDS_IN_MEMORY documents, else from SQLite by doc number
        (docs.rowid = doc number + 1), so a large segment never loads all its ids."""
        if self._chunk_no is None:
            self._chunk_no = np.asarray(load_array(os.path.join(self.directory, "chunkno.npy"), mmap_mode="r"))
        nums = self.doc_of_row[rows].tolist()
        if self._doc_ids is None and (self.n == 0 or int(self.doc_of_row[-1]) < IDS_IN_MEMORY):
            self._doc_ids = [d for d, _, _, _ in self.store.doc_rows()]
        if self._doc_ids is not None:
            docs = [self._doc_ids[d] for d in nums]
        else:
            docs = self.store.doc_ids(nums)
        return [(f"{d}-{c}", d) for d, c in zip(docs, self._chunk_no[rows].tolist(), strict=True)]

    @classmethod
    def open(cls, seg_root: str, entry: dict[str, Any]) -> Segment:
        d = os.path.join(seg_root, entry["name"])
        postings, weights = Postings.load(d)
        live = np.ones(entry["chunks"], dtype=bool)
        if entry.get("deleted"):
            live[load_array(os.path.join(d, entry["deleted"]))] = False
        vectors = VectorIndex.load(d, entry["dense"]) if entry.get("dense") else None
        store = Store(os.path.join(d, "chunks.sqlite"))
        doc_of_row = np.asarray(load_array(os.path.join(d, "docs.npy"), mmap_mode="r"))
        seg = cls(entry["name"], d, store, postings, weights, live, doc_of_row, vectors)
        # mapped now, not on first use: a commit may remove this directory while a reader still holds it
        seg._chunk_no = np.asarray(load_array(os.path.join(d, "chunkno.npy"), mmap_mode="r"))
        return seg

    @property
    def n(self) -> int:
        return len(self.live)

    def close(self) -> None:
        self.store.close()

    def write_vectors(self, vectors: VectorIndex) -> dict[str, Any]:
        """Give an existing segment vectors (new files beside the old ones); return entry updates."""
        tmp = os.path.join(self.directory, ".tmp-vectors")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        vectors.save(tmp)
        for f in os.listdir(tmp):
            with open(os.path.join(tmp, f), "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(os.path.join(tmp, f), os.path.join(self.directory, f))
        os.rmdir(tmp)
        fsync_dir(self.directory)
        return {"dense": vectors.params}

    def write_tombstones(self, dead: np.ndarray, generation: int) -> dict[str, Any]:
        """Persist a new tombstone file for the rows in `dead` (a bool mask); return entry updates."""
        name = f"del-{generation:06d}.npy"
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            np.save(f, np.flatnonzero(dead).astype(np.int32))
            f.flush()
            os.fsync(f.fileno())
        return {"deleted": name, "n_deleted": int(dead.sum()), **self.live_counts(~dead)}

    def live_counts(self, live: np.ndarray | None = None) -> dict[str, int]:
        live = self.live if live is None else live
        return {"live_docs": int(np.unique(self.doc_of_row[live]).size)}
