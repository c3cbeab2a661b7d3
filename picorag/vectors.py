"""Dense vectors of one segment: a float16 matrix on disk plus an optional FAISS index.

    vectors.f16.npy   (n, dim) float16, unit-length rows (memory-mapped on open)
    vectors.faiss     HNSW or IVF-PQ index in FAISS's own binary format (never pickle); absent for flat

Inner product of unit vectors is cosine similarity. `flat` is exact search with numpy on float32
copies of the segments' vectors kept in memory while they fit in F32_CACHE_VALUES (converting float16
costs ten times the product itself: 5 of 6 ms per query on 10k x 384); past that budget rows are
converted a block at a time, so memory stays bounded. `hnsw`, `ivfflat` and `ivfpq` are approximate
and meant for large KBs (IVF indexes are trained on a sample and filled a block at a time). Filters are
applied before top-k everywhere: through FAISS ID selectors for the approximate indexes, and by
exact search over the allowed rows when they are few (a selective filter would starve an ANN
search of candidates).

>>> v = np.eye(3, dtype=np.float32)
>>> ix = VectorIndex(v.astype(np.float16), None)
>>> ix.search(np.array([0, 1, 0], np.float32), k=1)[0].tolist()
[1]
"""

from __future__ import annotations

import math
import os
import weakref
from typing import Any

import numpy as np

from .integrity import load_array
from .records import PicoragError

KINDS = ("flat", "hnsw", "ivfpq", "ivfflat")
EXACT_BELOW = 20_000  # allowed rows under which filtered search is exact brute force
BLOCK = 65_536  # rows converted to float32 at a time by exact search
F32_CACHE_VALUES = 64_000_000  # float32 copies for exact search, all open segments together (256 MB)
_cached = [0]  # values now held in float32 copies
REFINE = 10  # IVF-PQ candidates fetched per result, then re-scored exactly


def _faiss():
    try:
        import faiss
    except ImportError:
        raise PicoragError("this index needs the 'faiss-cpu' package: pip install faiss-cpu") from None
    return faiss


def index_params(kind: str, n: int, dim: int, nlist: int | None = None, m: int | None = None,
                 nprobe: int | None = None) -> dict[str, Any]:
    """Sensible parameters from the corpus size: nlist ≈ 4·√n with ≥ 39 training points per list.

    >>> index_params("ivfpq", 1_000_000, 384)
    {'kind': 'ivfpq', 'nlist': 4000, 'nprobe': 500, 'pq_m': 48, 'nbits': 8}
    """
    if kind not in KINDS:
        raise PicoragError(f"unknown index {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "hnsw":
        return {"kind": "hnsw", "m": m or 32, "ef_construction": 80, "ef_search": 64}
    if kind in ("ivfpq", "ivfflat"):
        nlist = max(1, min(nlist or int(4 * math.sqrt(n)), n // 39))
        out: dict[str, Any] = {"kind": kind, "nlist": nlist,
                               "nprobe": max(1, min(nlist, nprobe or int(math.ceil(nlist / 8))))}
        if kind == "ivfpq":
            out["pq_m"] = next(d for d in (dim // 8, dim // 4, dim // 2, dim) if d and dim % d == 0)
            out["nbits"] = 8 if n >= 256 * 39 else max(4, min(8, int(math.log2(max(n // 39, 16)))))
        return out
    return {"kind": "flat"}


def default_train_sample(params: dict[str, Any], n: int) -> int:
    """Rows to train an IVF index on: 40 per list (FAISS warns under 39), at least 50,000, at most n."""
    return min(n, max(50_000, 40 * params.get("nlist", 1)))


def build_faiss(vectors: np.ndarray, params: dict[str, Any], train_sample: int | None = None,
                seed: int = 0) -> Any | None:
    """Train on a sample, then add the rows a block at a time; None for flat. `vectors` may be a
    memory-mapped float16 file: only the sample and one block are ever float32 in memory."""
    kind = params["kind"]
    if kind == "flat":
        return None
    faiss = _faiss()
    n, dim = vectors.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivfflat":
            index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        else:  # PQ on unit vectors: residuals against an inner-product quantizer train fine with the default
            index = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["pq_m"], params["nbits"],
                                     faiss.METRIC_INNER_PRODUCT)
        size = min(n, train_sample or n)
        rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False)) if size < n else slice(None)
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
    for s in range(0, n, BLOCK):
        index.add(np.ascontiguousarray(vectors[s : s + BLOCK], dtype=np.float32))
    return index


class VectorIndex:
    """Search one segment's vectors; `faiss_index` None means exact (flat) search."""

    def __init__(self, vectors: np.ndarray, faiss_index: Any | None, params: dict[str, Any] | None = None):
        self.vectors = vectors
        self.index = faiss_index
        self.params = params or {"kind": "flat"}
        self._f32: np.ndarray | None = None

    @classmethod
    def load(cls, directory: str, params: dict[str, Any]) -> VectorIndex:
        vectors = load_array(os.path.join(directory, "vectors.f16.npy"), mmap_mode="r")
        path = os.path.join(directory, "vectors.faiss")
        faiss = _faiss() if os.path.exists(path) else None
        # IVF lists stay in the file (mapped, paged in as probed): opening a big KB costs no RAM for them
        ivf = faiss is not None and params.get("kind", "").startswith("ivf")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if ivf else 0
        index = faiss.read_index(path, flags) if faiss else None
        return cls(vectors, index, params)

    def save(self, directory: str) -> None:
        np.save(os.path.join(directory, "vectors.f16.npy"), np.asarray(self.vectors, dtype=np.float16))
        self.save_index(directory)

    def save_index(self, directory: str) -> None:
        """Write the FAISS index alone (a build writes the float16 file itself, part by part)."""
        if self.index is not None:
            _faiss().write_index(self.index, os.path.join(directory, "vectors.faiss"))

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and cosine scores of the k nearest allowed rows, best first."""
        n = len(self.vectors)
        if k <= 0 or n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if allowed is not None and not allowed.all():
            rows = np.flatnonzero(allowed)
            if len(rows) == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            if self.index is None or len(rows) < EXACT_BELOW:
                return self._exact(q[0], k, rows)
            return self._approx(q, k, allowed, nprobe)
        if self.index is None:
            return self._exact(q[0], k, None)
        return self._approx(q, k, None, nprobe)

    def _exact(self, q: np.ndarray, k: int, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.vectors) if rows is None else len(rows)
        if self._f32 is None and _cached[0] + self.vectors.size <= F32_CACHE_VALUES:
            self._f32 = np.asarray(self.vectors, dtype=np.float32)
            _cached[0] += self._f32.size
            weakref.finalize(self, _release, self._f32.size)
        if self._f32 is not None:
            scores = (self._f32 if rows is None else self._f32[rows]) @ q
        else:
            scores = np.empty(n, dtype=np.float32)
            for s in range(0, n, BLOCK):  # float16 -> float32 a block at a time: bounded memory
                block = self.vectors[s : s + BLOCK] if rows is None else self.vectors[rows[s : s + BLOCK]]
                scores[s : s + BLOCK] = np.asarray(block, dtype=np.float32) @ q
        top = np.argpartition(-scores, k - 1)[:k] if n > k else np.arange(n)
        top = top[np.lexsort((top, -scores[top]))]
        found = top if rows is None else rows[top]
        return found.astype(np.int64), scores[top]

    def _approx(self, q: np.ndarray, k: int, allowed: np.ndarray | None,
                nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        sel, bits = None, None
        if allowed is not None:  # `bits` must outlive the search: the selector only keeps a pointer
            bits = np.packbits(allowed, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        if self.params["kind"] == "hnsw":
            sp = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.params.get("ef_search", 64), k))
        else:
            sp = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe or self.params.get("nprobe", 8))
        # PQ codes only approximate the vectors: fetch more candidates and re-score them exactly
        # with the stored float16 vectors (what FAISS's IndexRefineFlat does, without a 2nd copy)
        fetch = max(k * REFINE, 100) if self.params["kind"] == "ivfpq" else k
        scores, ids = self.index.search(q, fetch, params=sp)
        del bits
        rows = ids[0][ids[0] >= 0].astype(np.int64)
        if self.params["kind"] != "ivfpq" or len(rows) == 0:  # HNSW and IVF-Flat scores are exact
            return rows[:k], scores[0][: len(rows)][:k]
        return self._exact(q[0], k, np.sort(rows))


def _release(values: int) -> None:
    _cached[0] -= values


def make_index(vectors: np.ndarray, config: dict[str, Any]) -> VectorIndex:
    """A segment's VectorIndex for the KB's dense config; tiny segments fall back to exact search
    (an IVF-PQ or HNSW index over a few hundred rows is slower and less accurate than flat)."""
    kind = config.get("index", "flat")
    if len(vectors) < config.get("min_ann_rows", 1000):
        kind = "flat"
    params = index_params(kind, len(vectors), vectors.shape[1], config.get("nlist"), nprobe=config.get("nprobe"))
    sample = config.get("train_sample") or default_train_sample(params, len(vectors))
    return VectorIndex(vectors, build_faiss(vectors, params, sample), params)
