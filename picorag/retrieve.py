"""Query -> ranked hits: BM25, dense, or both fused, with metadata filters applied before top-k.

    bm25    sparse term matching (bm25.py), exact
    dense   cosine similarity of encoder vectors (vectors.py)
    hybrid  each retriever recalls k x recall_factor candidates, drops its weak tail (dynamic cut),
            then RRF or weighted fusion (fusion.py); optionally a reranker reorders the fused list

>>> from picorag import KnowledgeBase                                  # doctest: +SKIP
>>> search(KnowledgeBase.open("kb"), "违约责任", k=3, mode="hybrid")      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .bm25 import query_weights, top_k, top_k_many
from .cite import citation
from .fusion import Ranked, dynamic_cut, rrf, weighted
from .integrity import damage_as_error
from .records import Hit, PicoragError

if TYPE_CHECKING:
    from .kb import KnowledgeBase
    from .segment import Segment

MODES = ("bm25", "dense", "hybrid")
FUSIONS = ("rrf", "weighted")
Where = dict[str, str | list[str]]


class Reranker(Protocol):
    name: str

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class Options:
    """How a search runs. Defaults follow tiny-rag-advanced's measured settings."""

    mode: str | None = None  # None: hybrid when the KB has vectors, else bm25
    fusion: str = "rrf"
    recall_factor: int = 4
    rrf_k: int = 60
    cut: float = 0.2  # dynamic filter: keep candidates scoring >= cut x the top score
    dense_weight: float = 0.5  # for weighted fusion; BM25 gets 1 - dense_weight
    nprobe: int | None = None  # IVF lists probed (default from the index)
    reranker: Reranker | None = None
    tuned: bool = True  # use the KB's `picorag tune` sentence keys when it has them


def allowed(seg: Segment, where: Where | None) -> np.ndarray | None:
    """Live rows whose metadata matches: same key -> any of the values; different keys -> all.
    None when every row is allowed (the scorers then skip masking)."""
    if not where and seg.all_live:
        return None
    mask = seg.live
    for key, values in (where or {}).items():
        any_of = np.zeros(seg.n, dtype=bool)
        for v in [values] if isinstance(values, str) else values:
            any_of |= seg.store.filter_rows(key, str(v), seg.n)
        mask = mask & any_of
    return mask


def bm25_ranked(kb: KnowledgeBase, queries: Sequence[str], n: int, where: Where | None = None) -> list[Ranked]:
    """BM25 top-n (segment, row) lists, one per query; idf from df summed over all segments."""
    terms = [kb.analyzer.tokenize(q) for q in queries]
    dfs = {t: sum(s.postings.df(t) for s in kb.segments) for t in set().union(*terms)}
    n_rows = sum(s.n for s in kb.segments)
    qws = [query_weights(t, dfs, n_rows, kb.params) for t in terms]
    found: list[Ranked] = [[] for _ in queries]
    for si, seg in enumerate(kb.segments):
        mask = allowed(seg, where)
        if len(qws) == 1:  # one query: the sparse path that never touches every row
            results = [top_k(seg.postings, seg.weights, qws[0], n, mask)]
        else:
            results = top_k_many(seg.postings, seg.weights, qws, n, mask)
        for qi, (rows, scores) in enumerate(results):
            found[qi] += [((si, int(r)), float(s)) for r, s in zip(rows, scores, strict=True)]
    return [_best(f, n) for f in found]


def dense_ranked(kb: KnowledgeBase, queries: Sequence[str], n: int, where: Where | None = None,
                 nprobe: int | None = None, tuned: bool = True) -> list[Ranked]:
    """Dense top-n lists, one per query; queries are encoded in one batch. With the KB's `picorag tune`
    sentence keys (tune.py), unless tuned=False, chunks are scored with their best key too."""
    from .tune import tuned_of

    vecs = kb.encoder().encode(list(queries), kind="query")
    masks = [allowed(seg, where) for seg in kb.segments]
    keys = tuned_of(kb) if tuned else None
    if keys is not None:
        return keys.rank(kb, np.asarray(vecs, dtype=np.float32), n, masks, nprobe)
    out = []
    for q in vecs:
        found: Ranked = []
        for si, seg in enumerate(kb.segments):
            rows, scores = seg.vectors.search(q, n, masks[si], nprobe)
            found += [((si, int(r)), float(s)) for r, s in zip(rows, scores, strict=True)]
        out.append(_best(found, n))
    return out


def _best(found: Ranked, n: int) -> Ranked:
    found.sort(key=lambda t: (-t[1], t[0]))  # ties broken by (segment, row): deterministic
    return found[:n]


def resolve_mode(kb: KnowledgeBase, mode: str | None) -> str:
    has_dense = kb.manifest.get("dense") is not None
    mode = mode or ("hybrid" if has_dense else "bm25")
    if mode not in MODES:
        raise PicoragError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode != "bm25" and not has_dense:
        raise PicoragError(f"{kb.path} has no vectors, so --mode {mode} cannot run; add them with: "
                           f"picorag add {kb.path} --dense auto (or rebuild with --dense auto)")
    return mode


def search(kb: KnowledgeBase, query: str, k: int = 5, where: Where | None = None,
           options: Options | None = None, fetch: bool = True) -> list[Hit]:
    """The k best chunks for `query` under `options` (mode, fusion, reranker). With fetch=False
    hits carry ids and scores only (no text, metadata or citation): the fast path for ranking."""
    return search_many(kb, [query], k, where, options, fetch)[0]


def search_many(kb: KnowledgeBase, queries: Sequence[str], k: int = 5, where: Where | None = None,
                options: Options | None = None, fetch: bool = True) -> list[list[Hit]]:
    """`search` for a batch of queries: BM25 scores them in blocks and the encoder embeds them
    together, which is several times faster per query than one call each."""
    o = options or Options()
    if any(not q or not q.strip() for q in queries):
        raise PicoragError("empty query")
    if k < 1:
        raise PicoragError(f"k must be at least 1 (got {k})")
    if o.fusion not in FUSIONS:
        raise PicoragError(f"unknown fusion {o.fusion!r}; choose one of {', '.join(FUSIONS)}")
    mode = resolve_mode(kb, o.mode)
    pool = k * max(o.recall_factor, 1) if (mode == "hybrid" or o.reranker) else k
    with damage_as_error(kb.path):  # a bit flip past the open-time checks: a clear error, not IndexError
        ranked = _ranked(kb, queries, where, o, mode, pool)
        if not fetch and o.reranker is None:
            return [id_hits(kb, r[:k]) for r in ranked]
        hits = [to_hits(kb, r[:pool]) for r in ranked]
    return [_rerank(h, q, o.reranker)[:k] for q, h in zip(queries, hits, strict=True)]


def _ranked(kb: KnowledgeBase, queries: Sequence[str], where: Where | None, o: Options, mode: str,
            pool: int) -> list[Ranked]:
    if mode == "bm25":
        return bm25_ranked(kb, queries, pool, where)
    if mode == "dense":
        return dense_ranked(kb, queries, pool, where, o.nprobe, o.tuned)
    sparse = bm25_ranked(kb, queries, pool, where)
    dense = dense_ranked(kb, queries, pool, where, o.nprobe, o.tuned)
    ranked = []
    for b, d in zip(sparse, dense, strict=True):
        lists = [dynamic_cut(b, o.cut), dynamic_cut(d, o.cut)]
        ranked.append(rrf(lists, o.rrf_k) if o.fusion == "rrf"
                      else weighted(lists, [1.0 - o.dense_weight, o.dense_weight]))
    return ranked


def _rerank(hits: list[Hit], query: str, reranker: Reranker | None) -> list[Hit]:
    if reranker is None or not hits:
        return hits
    scores = reranker.score(query, [h.text for h in hits])
    order = np.lexsort((np.arange(len(hits)), -np.asarray(scores, dtype=np.float64)))
    for i in order:
        hits[i].score = float(scores[i])
    return [hits[i] for i in order]


def id_hits(kb: KnowledgeBase, ranked: Ranked) -> list[Hit]:
    if len(kb.segments) == 1:
        ids = kb.segments[0].ids([row for (_, row), _ in ranked])
    else:
        ids = [kb.segments[si].ids([row])[0] for (si, row), _ in ranked]
    return [Hit(cid, doc, score, "", {}, "") for (cid, doc), (_, score) in zip(ids, ranked, strict=True)]


def to_hits(kb: KnowledgeBase, ranked: Ranked) -> list[Hit]:
    """Fetch text and metadata for ranked (segment, row) keys, one query per segment."""
    by_seg: dict[int, list[int]] = {}
    for (si, row), _ in ranked:
        by_seg.setdefault(si, []).append(row)
    rows: dict[tuple[int, int], dict[str, Any]] = {
        (si, c["row"]): c for si, rs in by_seg.items() for c in kb.segments[si].store.get(rs)}
    hits = []
    for (si, row), score in ranked:
        c = rows[(si, row)]
        hits.append(Hit(c["id"], c["doc_id"], score, c["text"], c["meta"], citation(c["meta"])))
    return hits
