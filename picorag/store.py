"""The chunk store of one segment: an SQLite file written once, then opened read-only.

Rows are numbered 0..n-1 in the order the segment's index arrays use, so a BM25 or vector hit
(a row number) turns into text and metadata with one primary-key lookup.

>>> import tempfile, os
>>> from picorag.records import Chunk
>>> path = os.path.join(tempfile.mkdtemp(), "chunks.sqlite")
>>> write_store(path, [Chunk("d-0", "d", "hi", "", {"lang": "en"})], {"d": "hash"})
>>> Store(path).get([0])[0]["meta"]
{'lang': 'en'}
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .records import Chunk

_SCHEMA = """
CREATE TABLE chunks (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL,
                     text TEXT NOT NULL, index_prefix TEXT NOT NULL, meta TEXT NOT NULL);
CREATE TABLE docs (doc_id TEXT PRIMARY KEY, hash TEXT NOT NULL, first_row INTEGER NOT NULL,
                   n_chunks INTEGER NOT NULL);
"""

_COLUMNS = "row, id, doc_id, text, index_prefix, meta"


def _as_dict(r: tuple) -> dict[str, Any]:
    return {"row": r[0], "id": r[1], "doc_id": r[2], "text": r[3], "index_prefix": r[4], "meta": json.loads(r[5])}


def write_store(path: str, chunks: Iterable[Chunk], doc_hashes: dict[str, str]) -> None:
    """Write a new store file (the caller writes into a fresh segment directory)."""
    con = sqlite3.connect(path)
    try:
        con.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        first: dict[str, list[int]] = {}
        rows = []
        for row, c in enumerate(chunks):
            first.setdefault(c.doc_id, [row, 0])[1] += 1
            rows.append((row, c.id, c.doc_id, c.text, c.index_prefix, json.dumps(c.meta, ensure_ascii=False)))
            if len(rows) >= 10_000:
                con.executemany("INSERT INTO chunks VALUES (?,?,?,?,?,?)", rows)
                rows.clear()
        con.executemany("INSERT INTO chunks VALUES (?,?,?,?,?,?)", rows)
        con.executemany(
            "INSERT INTO docs VALUES (?,?,?,?)", [(d, doc_hashes[d], r, n) for d, (r, n) in first.items()]
        )
        con.execute("CREATE INDEX chunks_doc ON chunks(doc_id)")
        con.commit()
    finally:
        con.close()
    with open(path, "rb+") as f:  # SQLite ran with synchronous=OFF: make the file durable ourselves
        os.fsync(f.fileno())


def merge_stores(path: str, parts: Sequence[str]) -> None:
    """Write one store from several (a build's shards) with SQLite doing the copying, rows and
    first rows renumbered consecutively in part order; memory stays flat whatever the sizes."""
    con = sqlite3.connect(path)
    try:
        con.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-65536;" + _SCHEMA)
        offset = 0
        for part in parts:
            con.execute("ATTACH DATABASE ? AS part", (part,))
            con.execute("INSERT INTO chunks SELECT row + ?, id, doc_id, text, index_prefix, meta FROM part.chunks "
                        "ORDER BY row", (offset,))
            con.execute("INSERT INTO docs SELECT doc_id, hash, first_row + ?, n_chunks FROM part.docs "
                        "ORDER BY first_row", (offset,))
            offset += con.execute("SELECT count(*) FROM part.chunks").fetchone()[0]
            con.commit()
            con.execute("DETACH DATABASE part")
        con.execute("CREATE INDEX chunks_doc ON chunks(doc_id)")
        con.commit()
    finally:
        con.close()
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class Store:
    """Read-only access to one segment's chunks."""

    def __init__(self, path: str):
        self.con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._filters: dict[tuple[str, str], np.ndarray] = {}

    def close(self) -> None:
        self.con.close()

    def get(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """Chunks at these row numbers, in the same order."""
        if not rows:
            return []
        marks = ",".join("?" * len(rows))
        got = {r[0]: _as_dict(r) for r in self.con.execute(
            f"SELECT {_COLUMNS} FROM chunks WHERE row IN ({marks})", [int(r) for r in rows])}
        return [got[int(r)] for r in rows]

    def rows_of_ids(self, ids: Sequence[str]) -> dict[str, int]:
        return dict(self._query_in("SELECT id, row FROM chunks WHERE id IN ({})", ids))

    def rows_of_docs(self, doc_ids: Sequence[str]) -> list[int]:
        return [r for (r,) in self._query_in("SELECT row FROM chunks WHERE doc_id IN ({})", doc_ids)]

    def docs_info(self, doc_ids: Sequence[str]) -> dict[str, tuple[str, int, int]]:
        """doc_id -> (content hash, first row, number of chunks) for the ids stored here."""
        sql = "SELECT doc_id, hash, first_row, n_chunks FROM docs WHERE doc_id IN ({})"
        return {d: (h, f, n) for d, h, f, n in self._query_in(sql, doc_ids)}

    def _query_in(self, sql: str, keys: Sequence[str]) -> list[tuple]:
        out: list[tuple] = []
        for i in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
            part = list(keys[i : i + 500])
            out += self.con.execute(sql.format(",".join("?" * len(part))), part).fetchall()
        return out

    def iter_chunks(self, batch: int = 5000) -> Iterable[dict[str, Any]]:
        """Every chunk in row order (used by compaction), without loading the table at once."""
        cur = self.con.execute(f"SELECT {_COLUMNS} FROM chunks ORDER BY row")
        while rows := cur.fetchmany(batch):
            yield from map(_as_dict, rows)

    def doc_ids(self, nums: Sequence[int]) -> list[str]:
        """doc_ids by document number (0-based, the order of first rows), one indexed lookup each."""
        uniq = sorted(set(nums))
        got: dict[int, str] = {}
        for i in range(0, len(uniq), 500):
            part = uniq[i : i + 500]
            sql = f"SELECT rowid - 1, doc_id FROM docs WHERE rowid IN ({','.join('?' * len(part))})"
            got.update(self.con.execute(sql, [n + 1 for n in part]))
        return [got[n] for n in nums]

    def doc_rows(self) -> Iterable[tuple[str, str, int, int]]:
        return self.con.execute("SELECT doc_id, hash, first_row, n_chunks FROM docs ORDER BY first_row")

    def filter_rows(self, key: str, value: str, n: int) -> np.ndarray:
        """Boolean mask over rows whose metadata `key` equals `value` (compared as text). Cached."""
        cache_key = (key, value)
        if cache_key not in self._filters:
            path = '$."' + key.replace('"', '""') + '"'
            mask = np.zeros(n, dtype=bool)
            rows = [r for (r,) in self.con.execute(
                "SELECT row FROM chunks WHERE CAST(json_extract(meta, ?) AS TEXT) = ?", (path, value))]
            mask[rows] = True
            self._filters[cache_key] = mask
        return self._filters[cache_key]
