"""Eager sparse BM25, the way bm25s does it: the per-(term, chunk) part of the score is computed
once at index time, so a query is a weighted sum of a few posting lists plus a top-k partition.

Each segment stores term-major postings as plain .npy arrays (memory-mapped on open) and its
vocabulary as JSON. The tf part uses the collection's average length when the segment was
written; idf is always computed at query time from document frequencies summed over segments,
so adding documents updates idf immediately and `compact` makes length normalisation exact.

Two scoring variants (Kamphuis et al., 2020):
  lucene     idf = ln(1 + (N - df + .5) / (df + .5)),  tf part = tf / (tf + k1 (1 - b + b dl/avgdl))
  robertson  idf = max(0, ln((N - df + .5) / (df + .5))), tf part = tf (k1 + 1) / (tf + k1 (...))

>>> ix = Postings.from_tokens([["cat", "sat"], ["dog"], ["cat", "cat"]])
>>> params = BM25Params()
>>> w = ix.weights(params, avgdl=ix.total_len / ix.n_docs)
>>> rows, scores = top_k(ix, w, {"cat": 1.0}, k=2)
>>> rows.tolist()
[2, 0]
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .integrity import load_array
from .records import PicoragError

METHODS = ("lucene", "robertson")


@dataclass(frozen=True)
class BM25Params:
    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"

    def __post_init__(self):
        if self.method not in METHODS:
            raise PicoragError(f"unknown BM25 method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise PicoragError(f"BM25 needs k1 >= 0 and 0 <= b <= 1 (got k1={self.k1}, b={self.b})")

    def to_dict(self) -> dict:
        return asdict(self)

    def idf(self, df: int, n_docs: int) -> float:
        ratio = (n_docs - df + 0.5) / (df + 0.5)
        return math.log1p(ratio) if self.method == "lucene" else math.log(max(ratio, 1.0))

    def tf_part(self, tf: np.ndarray, dl: np.ndarray, avgdl: float) -> np.ndarray:
        tf = tf.astype(np.float64)
        norm = self.k1 * (1.0 - self.b + self.b * dl / max(avgdl, 1e-9))
        scale = self.k1 + 1.0 if self.method == "robertson" else 1.0
        return (tf * scale / (tf + norm)).astype(np.float32)


@dataclass
class Postings:
    """Term-major postings of one segment: the rows of term t are rows[indptr[t]:indptr[t+1]]."""

    terms: list[str]
    indptr: np.ndarray  # int64, len(terms) + 1
    rows: np.ndarray  # int32, row of each posting
    tf: np.ndarray  # uint16, term frequency of each posting (kept so compaction can re-weight)
    doclen: np.ndarray  # int32, number of terms in each row

    def __post_init__(self):
        self.term_id = {t: i for i, t in enumerate(self.terms)}

    @property
    def n_docs(self) -> int:
        return len(self.doclen)

    @property
    def total_len(self) -> int:
        return int(self.doclen.sum())

    def df(self, term: str) -> int:
        i = self.term_id.get(term)
        return 0 if i is None else int(self.indptr[i + 1] - self.indptr[i])

    @classmethod
    def from_tokens(cls, docs: Iterable[Sequence[str]]) -> Postings:
        """Index tokenised rows; repeated tokens in a row count as term frequency."""
        term_id: dict[str, int] = {}
        t_ids: list[int] = []
        tfs: list[int] = []
        counts: list[int] = []
        doclen: list[int] = []
        for doc in docs:
            c = Counter(doc)
            counts.append(len(c))
            doclen.append(len(doc))
            for term, n in c.items():
                t_ids.append(term_id.setdefault(term, len(term_id)))
                tfs.append(n)
        rows = np.repeat(np.arange(len(doclen), dtype=np.int32), counts)
        return _assemble(list(term_id), np.asarray(t_ids, dtype=np.int64), rows,
                         np.minimum(np.asarray(tfs, dtype=np.int64), 65535), np.asarray(doclen, dtype=np.int32))

    def weights(self, params: BM25Params, avgdl: float) -> np.ndarray:
        return params.tf_part(self.tf, self.doclen[self.rows], avgdl)

    def save(self, directory: str, weights: np.ndarray | None) -> None:
        """Write the arrays (a build's shards keep no weights: the final avgdl is not known yet)."""
        for name, arr in (("indptr", self.indptr), ("rows", self.rows), ("tf", self.tf),
                          ("doclen", self.doclen), ("weights", weights)):
            if arr is not None:
                np.save(os.path.join(directory, f"bm25.{name}.npy"), arr)
        with open(os.path.join(directory, "bm25.terms.json"), "w", encoding="utf-8") as f:
            json.dump(self.terms, f, ensure_ascii=False)

    @classmethod
    def load(cls, directory: str, weights: bool = True) -> tuple[Postings, np.ndarray | None]:
        def arr(name: str) -> np.ndarray:
            # a plain ndarray view of the mapped file: slicing an np.memmap runs Python-level hooks
            return np.asarray(load_array(os.path.join(directory, f"bm25.{name}.npy"), mmap_mode="r"))

        with open(os.path.join(directory, "bm25.terms.json"), encoding="utf-8") as f:
            terms = json.load(f)
        postings = cls(terms, arr("indptr"), arr("rows"), arr("tf"), arr("doclen"))
        return postings, arr("weights") if weights else None


def _assemble(terms: list[str], t_ids: np.ndarray, rows: np.ndarray, tf: np.ndarray,
              doclen: np.ndarray) -> Postings:
    """Sort postings term-major (rows ascending within a term) and build indptr."""
    order = np.lexsort((rows, t_ids))
    indptr = np.zeros(len(terms) + 1, dtype=np.int64)
    np.cumsum(np.bincount(t_ids, minlength=len(terms)), out=indptr[1:])
    return Postings(terms, indptr, rows[order].astype(np.int32), tf[order].astype(np.uint16), doclen)


def merge(parts: Sequence[tuple[Postings, np.ndarray]]) -> Postings:
    """One Postings from several, keeping only rows where each part's `live` mask is True;
    rows are renumbered consecutively in part order. Terms left without postings are dropped."""
    vocab: dict[str, int] = {}
    t_all, r_all, tf_all, dl_all = [], [], [], []
    offset = 0
    for ix, live in parts:
        new_row = np.full(ix.n_docs, -1, dtype=np.int64)
        new_row[live] = np.arange(offset, offset + int(live.sum()))
        to_global = np.array([vocab.setdefault(t, len(vocab)) for t in ix.terms], dtype=np.int64)
        term_of = np.repeat(np.arange(len(ix.terms)), np.diff(ix.indptr))
        keep = new_row[ix.rows] >= 0
        t_all.append(to_global[term_of[keep]])
        r_all.append(new_row[ix.rows[keep]])
        tf_all.append(np.asarray(ix.tf)[keep])
        dl_all.append(np.asarray(ix.doclen)[live])
        offset += int(live.sum())
    t_ids = np.concatenate(t_all) if t_all else np.zeros(0, np.int64)
    used, t_ids = np.unique(t_ids, return_inverse=True)
    terms = list(vocab)
    return _assemble([terms[i] for i in used], t_ids.astype(np.int64), np.concatenate(r_all or [np.zeros(0)]),
                     np.concatenate(tf_all or [np.zeros(0)]), np.concatenate(dl_all or [np.zeros(0, np.int32)]))


def write_merged(directory: str, parts: Sequence[str], params: BM25Params, base_n: int = 0,
                 base_len: int = 0) -> tuple[int, int]:
    """Merge the postings saved in the directories `parts` (rows renumbered consecutively in part
    order) into one segment's arrays under `directory`, on disk: the output is memory-mapped and
    filled part by part, so memory holds one part plus the vocabulary, never the whole index.
    The result equals `Postings.from_tokens` over all rows at once (same term order, same arrays);
    weights use the average length over these rows plus `base_n` rows of `base_len` terms already
    in the KB (as `add` does). Returns (rows, total length)."""
    from numpy.lib.format import open_memmap

    vocab: dict[str, int] = {}
    df = np.zeros(1024, np.int64)
    n_rows = nnz = total = 0
    for d in parts:  # pass 1: vocabulary in first-seen order, document frequencies, sizes
        ix, _ = Postings.load(d, weights=False)
        g = _global_ids(vocab, ix.terms)
        if len(vocab) > len(df):
            df = np.concatenate([df, np.zeros(max(len(vocab), 2 * len(df)) - len(df), np.int64)])
        df[g] += np.diff(ix.indptr)  # a part's term ids are distinct: no repeated indices
        n_rows += ix.n_docs
        nnz += len(ix.rows)
        total += int(np.asarray(ix.doclen).sum())
    avgdl = (base_len + total) / max(base_n + n_rows, 1)
    indptr = np.zeros(len(vocab) + 1, np.int64)
    np.cumsum(df[: len(vocab)], out=indptr[1:])
    del df
    out = {name: open_memmap(os.path.join(directory, f"bm25.{name}.npy"), "w+", dtype, (size,)) if size
           else np.zeros(0, dtype)  # numpy cannot map an empty file
           for name, dtype, size in (("rows", np.int32, nnz), ("tf", np.uint16, nnz),
                                     ("weights", np.float32, nnz), ("doclen", np.int32, n_rows))}
    fill = indptr[:-1].copy()  # next free position of each term
    offset = 0
    for d in parts:  # pass 2: a part's postings of term t go to the next free slots of t
        ix, _ = Postings.load(d, weights=False)
        g = _global_ids(vocab, ix.terms)
        counts = np.diff(ix.indptr)
        dest = np.repeat(fill[g] - ix.indptr[:-1], counts) + np.arange(len(ix.rows))
        out["rows"][dest] = ix.rows + np.int32(offset)
        out["tf"][dest] = ix.tf
        doclen = np.asarray(ix.doclen)
        out["weights"][dest] = params.tf_part(ix.tf, doclen[ix.rows], avgdl)
        out["doclen"][offset : offset + ix.n_docs] = doclen
        fill[g] += counts
        offset += ix.n_docs
    for name, a in out.items():
        if isinstance(a, np.memmap):
            a.flush()
        else:
            np.save(os.path.join(directory, f"bm25.{name}.npy"), a)
    del out
    np.save(os.path.join(directory, "bm25.indptr.npy"), indptr)
    with open(os.path.join(directory, "bm25.terms.json"), "w", encoding="utf-8") as f:
        json.dump(list(vocab), f, ensure_ascii=False)
    return n_rows, total


def _global_ids(vocab: dict[str, int], terms: list[str]) -> np.ndarray:
    return np.fromiter((vocab.setdefault(t, len(vocab)) for t in terms), np.int64, len(terms))


def _gather(ix: Postings, weights: np.ndarray, query: dict[str, float]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Posting rows and weighted scores of the query terms present in this segment."""
    rows, vals = [], []
    for t, w in query.items():
        i = ix.term_id.get(t)
        if i is not None:
            a, b = ix.indptr[i], ix.indptr[i + 1]
            rows.append(ix.rows[a:b])
            vals.append(weights[a:b] * np.float32(w))
    return rows, vals


def _select(cand: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of ascending rows `cand`; rows tied at the k-th score are taken lowest first."""
    if len(cand) > k:
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        above = np.flatnonzero(scores > kth)  # argpartition alone would pick arbitrary rows among ties
        part = np.concatenate([above, np.flatnonzero(scores == kth)[: k - len(above)]])
        cand, scores = cand[part], scores[part]
    order = np.lexsort((cand, -scores))  # score descending, ties by row for determinism
    return cand[order], scores[order]


def top_k(ix: Postings, weights: np.ndarray, query: dict[str, float], k: int,
          allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows and scores of the k best rows matching at least one query term.

    `query` maps term -> weight (idf times how often the term occurs in the query; always > 0,
    so a row matches exactly when its score is > 0). `allowed` is a boolean mask over rows
    (filters, deletions) applied before ranking, so a filtered result list is never short when
    enough rows match.
    """
    rows, vals = _gather(ix, weights, query)
    if not rows or k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    rows, vals = np.concatenate(rows), np.concatenate(vals)
    if len(rows) * 8 < ix.n_docs:  # few postings: accumulate over the matched rows only, not all rows
        cand, inverse = np.unique(rows, return_inverse=True)
        scores = np.bincount(inverse, weights=vals)
    else:  # many postings: select straight from the dense score vector (flatnonzero on it costs more)
        scores = np.bincount(rows, weights=vals, minlength=ix.n_docs)
        if allowed is not None:
            scores *= allowed
        return _select_dense(scores, k)
    if allowed is not None:
        keep = allowed[cand]
        cand, scores = cand[keep], scores[keep]
    return _select(cand, scores, k)


def _select_dense(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """_select over every row's score (0 = no match): the same rows, in the same order."""
    top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
    kth = scores[top].min() if len(top) else 0.0
    if kth > 0 and np.count_nonzero(scores >= kth) > k:  # ties at the k-th score: lowest rows first
        above = np.flatnonzero(scores > kth)
        top = np.concatenate([above, np.flatnonzero(scores == kth)[: k - len(above)]])
    vals = scores[top]
    hit = vals > 0  # fewer than k matches: the zeros argpartition added are not hits
    top, vals = top[hit], vals[hit]
    order = np.lexsort((top, -vals))
    return top[order], vals[order]


def top_k_many(ix: Postings, weights: np.ndarray, queries: Sequence[dict[str, float]], k: int,
               allowed: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """top_k for many queries at once: a block of queries is scored into one (queries x rows)
    matrix with a single bincount, and top-k runs row-wise. Same results as calling top_k.
    A query whose posting lists are short next to the row count (top_k's sparse case) is scored
    alone: on a large segment a dense row of scores per query costs more than it saves."""
    sizes = [sum(int(ix.indptr[i + 1] - ix.indptr[i]) for t in q if (i := ix.term_id.get(t)) is not None)
             for q in queries]
    alone = [j for j, m in enumerate(sizes) if m * 8 < ix.n_docs]
    if not alone:
        return _top_k_block(ix, weights, queries, k, allowed)
    out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64), np.zeros(0, np.float64))] * len(queries)
    for j in alone:
        out[j] = top_k(ix, weights, queries[j], k, allowed)
    rest = [j for j, m in enumerate(sizes) if m * 8 >= ix.n_docs]
    for j, r in zip(rest, _top_k_block(ix, weights, [queries[j] for j in rest], k, allowed), strict=True):
        out[j] = r
    return out


def _top_k_block(ix: Postings, weights: np.ndarray, queries: Sequence[dict[str, float]], k: int,
                 allowed: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    n = ix.n_docs
    block = max(1, min(64, 4_000_000 // max(n, 1)))  # keep the score matrix near 32 MB
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for s in range(0, len(queries), block):
        qs = queries[s : s + block]
        hits = [(i, w, j) for j, q in enumerate(qs) for t, w in q.items() if (i := ix.term_id.get(t)) is not None]
        if not hits or k <= 0:
            out += [(np.zeros(0, np.int64), np.zeros(0, np.float64))] * len(qs)
            continue
        # all posting lists of the block in one gather: positions start[t] .. end[t] for each (term, query)
        tids, w, j = (np.array(x) for x in zip(*hits, strict=True))
        starts, lens = ix.indptr[tids], ix.indptr[tids + 1] - ix.indptr[tids]
        pos = np.arange(lens.sum()) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
        rows = ix.rows[pos] + np.repeat(j * n, lens)
        vals = weights[pos] * np.repeat(w.astype(np.float32), lens)
        scores = np.bincount(rows, weights=vals, minlength=len(qs) * n).reshape(len(qs), n)
        if allowed is not None:
            scores[:, ~allowed] = 0.0
        kk = min(k, n)
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        top = np.take_along_axis(scores, part, axis=1)
        kth = top.min(axis=1)
        spill = np.flatnonzero((kth > 0) & ((scores == kth[:, None]).sum(axis=1) > (top == kth[:, None]).sum(axis=1)))
        for j in spill:  # more rows tie at the k-th score than fit: take the lowest rows, as top_k does
            cand = np.flatnonzero(scores[j] > 0)
            rows, _ = _select(cand, scores[j][cand], kk)
            pad = np.setdiff1d(np.arange(n), rows, assume_unique=True)[: kk - len(rows)]  # zero scores
            part[j] = np.concatenate([rows, pad])
            top[j] = scores[j][part[j]]
        order = np.lexsort((part, -top), axis=1)  # per query: score descending, ties by row
        part, top = np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)
        found = (top > 0).sum(axis=1)  # matched rows sort first: all scores are > 0
        out += [(part[j, : found[j]], top[j, : found[j]]) for j in range(len(qs))]
    return out


def query_weights(terms: Sequence[str], dfs: dict[str, int], n_docs: int, params: BM25Params) -> dict[str, float]:
    """term -> idf x occurrences in the query, for terms present in the collection."""
    out = {}
    for t, c in Counter(t for t in terms if dfs.get(t, 0) > 0).items():
        idf = params.idf(dfs[t], n_docs)
        if idf > 1e-12:  # robertson idf is 0 for terms in over half the rows: they cannot rank anything
            out[t] = idf * c
    return out
