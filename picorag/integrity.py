"""Damaged-KB detection: a torn copy, a truncated array or an edited manifest becomes one clear
PicoragError ("knowledge base at KB is damaged …"), never a traceback from numpy or SQLite.

Checks are cheap (types and array shapes, no scan of the data), so opening stays fast:
- `check_manifest`: every field the code reads has the right type and range; segment and tombstone
  names are plain file names (a manifest cannot point outside the KB);
- `check_segment`: the arrays of an opened segment agree with each other and with the manifest;
- `damage_as_error`: what slips past both (a bit flip inside a data region that sends a row number
  out of range, a corrupt SQLite page) surfaces at query time and is reported the same way.

>>> check_manifest({"format": "picorag-kb"}, "kb")
Traceback (most recent call last):
...
picorag.records.PicoragError: knowledge base at kb is damaged (manifest.json: 'version' is missing)
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .records import PicoragError

SEGMENT_NAME = re.compile(r"seg-\d{1,12}")
TOMBSTONE_NAME = re.compile(r"del-\d{1,12}\.npy")
# what numpy, SQLite and our own indexing raise when the bytes on disk are not what was written
# (numpy parses an .npy header with tokenize and ast: a damaged header raises TokenError or SyntaxError)
DAMAGE = (sqlite3.DatabaseError, EOFError, ValueError, IndexError, TypeError, KeyError, AttributeError,
          OverflowError, UnicodeDecodeError, tokenize.TokenError, SyntaxError)


_NPY_HEADER = threading.Lock()


def load_array(path: str | Path, mmap_mode: str | None = None, allow_pickle: bool = False) -> np.ndarray:
    """np.load, one thread at a time: numpy parses the header with ast.literal_eval, and CPython 3.11's
    AST builder is not safe in two threads at once ("SystemError: AST constructor recursion depth
    mismatch", seen when the server reopened a KB while a write in another thread reloaded it)."""
    with _NPY_HEADER:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=allow_pickle)


def damaged(path: str | Path, what: str) -> PicoragError:
    return PicoragError(f"knowledge base at {path} is damaged ({what})")


def check_manifest(m: Any, path: str | Path) -> None:
    """Raise PicoragError when a field the code relies on is missing or of the wrong type."""

    def need(obj: Any, key: str, kind: type | tuple[type, ...], where: str = "", minimum: float | None = None) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise damaged(path, f"manifest.json: {where}{key!r} is missing")
        v = obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):  # True is an int to Python
            raise damaged(path, f"manifest.json: {where}{key!r} has the wrong type ({type(v).__name__})")
        if minimum is not None and v < minimum:
            raise damaged(path, f"manifest.json: {where}{key!r} is {v}, below {minimum}")
        return v

    if not isinstance(m, dict):
        raise damaged(path, "manifest.json is not a JSON object")
    need(m, "version", int, minimum=1)
    need(m, "generation", int, minimum=0)
    need(m, "next_segment", int, minimum=1)
    for key in ("created", "updated"):
        need(m, key, str)
    analyzer = need(m, "analyzer", dict)
    for key, kind in (("stemmer", str), ("stopwords", bool), ("cjk_bigrams", bool), ("version", int)):
        if key in analyzer:
            need(analyzer, key, kind, "analyzer.")
    bm25 = need(m, "bm25", dict)
    need(bm25, "k1", (int, float), "bm25.", 0)
    need(bm25, "b", (int, float), "bm25.", 0)
    need(bm25, "method", str, "bm25.")
    chunking = need(m, "chunking", dict)
    size = need(chunking, "size", int, "chunking.", 1)
    if not 0 <= need(chunking, "overlap", int, "chunking.") < size:
        raise damaged(path, "manifest.json: chunking.overlap is not below chunking.size")
    dense = need(m, "dense", (dict, type(None)))
    if dense is not None:
        need(dense, "model", str, "dense.")
        need(dense, "dim", int, "dense.", 1)
        need(dense, "index", str, "dense.")
    counts = need(m, "counts", dict)
    need(counts, "docs", int, "counts.", 0)
    need(counts, "chunks", int, "counts.", 0)
    names = set()
    for i, e in enumerate(need(m, "segments", list)):
        where = f"segments[{i}]."
        name = need(e, "name", str, where)
        if not SEGMENT_NAME.fullmatch(name) or name in names:
            raise damaged(path, f"manifest.json: {where}name {name!r} is not a segment name")
        names.add(name)
        chunks = need(e, "chunks", int, where, 0)
        for key in ("docs", "live_docs", "total_len", "n_deleted"):
            need(e, key, int, where, 0)
        if e["n_deleted"] > chunks or e["live_docs"] > e["docs"]:
            raise damaged(path, f"manifest.json: {where} counts do not add up")
        deleted = need(e, "deleted", (str, type(None)), where)
        if deleted is not None and not TOMBSTONE_NAME.fullmatch(deleted):
            raise damaged(path, f"manifest.json: {where}deleted {deleted!r} is not a tombstone file name")
        if need(e, "dense", (dict, type(None)), where) is not None:
            need(e["dense"], "kind", str, where + "dense.")


def check_segment(seg: Any, entry: dict[str, Any], dim: int | None, path: str | Path) -> None:
    """The arrays of one opened segment agree with each other and with its manifest entry."""
    p, n = seg.postings, entry["chunks"]
    problems = []
    if p.indptr.ndim != 1 or len(p.indptr) != len(p.terms) + 1 or not isinstance(p.terms, list):
        problems.append("bm25.indptr and bm25.terms.json disagree")
    elif len(p.indptr) and (p.indptr[0] != 0 or p.indptr[-1] != len(p.rows) or np.any(np.diff(p.indptr) < 0)):
        problems.append("bm25.indptr is not a valid offset array")
    if not (len(p.rows) == len(p.tf) == len(seg.weights)):
        problems.append("bm25.rows, bm25.tf and bm25.weights differ in length")
    for name, arr in (("bm25.doclen", p.doclen), ("docs", seg.doc_of_row), ("tombstones", seg.live)):
        if arr.ndim != 1 or len(arr) != n:
            problems.append(f"{name} has {arr.shape} entries for {n} chunks")
    for name, arr in (("indptr", p.indptr), ("rows", p.rows), ("tf", p.tf), ("doclen", p.doclen),
                      ("docs", seg.doc_of_row)):
        if arr.dtype.kind not in "iu":
            problems.append(f"{name} holds {arr.dtype}, not integers")
    if seg.weights.dtype.kind != "f":
        problems.append(f"bm25.weights holds {seg.weights.dtype}, not floats")
    if seg.vectors is not None and dim is not None and tuple(np.shape(seg.vectors.vectors)) != (n, dim):
        problems.append(f"vectors have shape {np.shape(seg.vectors.vectors)}, expected ({n}, {dim})")
    if problems:
        raise damaged(path, f"segment {entry['name']}: {problems[0]}")


@contextlib.contextmanager
def damage_as_error(path: str | Path) -> Iterator[None]:
    """Turn a low-level error raised while reading the KB's files into a PicoragError naming the KB."""
    try:
        yield
    except PicoragError:
        raise
    except DAMAGE as e:
        raise damaged(path, f"{type(e).__name__}: {e}; restore it or rebuild it") from None


def verify_segment(seg: Any, path: str | Path) -> None:
    """A full check (every posting, SQLite integrity_check): run before a rewrite, so `compact` never
    copies damage into the new segment; opening a KB only runs the cheap `check_segment`."""
    n, problem = seg.n, None
    if len(seg.postings.rows) and (int(seg.postings.rows.min()) < 0 or int(seg.postings.rows.max()) >= n):
        problem = "bm25.rows points past the last chunk"
    elif n and (int(seg.doc_of_row.min()) < 0 or int(seg.doc_of_row.max()) >= n):
        problem = "docs.npy holds an impossible document number"
    else:
        try:
            ok = "; ".join(r[0] for r in seg.store.con.execute("PRAGMA integrity_check(3)")).replace("\n", " ")
            rows = seg.store.con.execute("SELECT count(*) FROM chunks").fetchone()[0]
        except sqlite3.DatabaseError as e:
            ok, rows = str(e), n
        if ok != "ok":
            problem = f"chunks.sqlite: {ok}"
        elif rows != n:
            problem = f"chunks.sqlite has {rows} chunks, the arrays {n}"
    if problem:
        raise damaged(path, f"segment {seg.name}: {problem}")
