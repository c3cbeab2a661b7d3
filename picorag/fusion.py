"""Combine ranked lists from several retrievers into one.

A ranked list is a list of (key, score) pairs, best first; keys identify chunks.

  dynamic_cut  drop candidates scoring below `frac` x the list's top score (tiny-rag-advanced's
               filter: a weak tail only adds noise to fusion)
  rrf          reciprocal-rank fusion: sum of 1 / (k + rank); scale-free, the robust default
  weighted     min-max normalise each list to [0, 1], then a weighted sum of scores

>>> a = [("x", 9.0), ("y", 5.0), ("z", 1.0)]
>>> b = [("y", 0.9), ("x", 0.2)]
>>> [key for key, _ in rrf([a, b])]
['x', 'y', 'z']
>>> [key for key, _ in weighted([a, b], [0.5, 0.5])]
['y', 'x', 'z']
>>> dynamic_cut(a, 0.2)
[('x', 9.0), ('y', 5.0)]
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

Ranked = list[tuple[Hashable, float]]


def dynamic_cut(ranked: Ranked, frac: float) -> Ranked:
    if not ranked or frac <= 0 or ranked[0][1] <= 0:
        return ranked
    floor = frac * ranked[0][1]
    return [(key, s) for key, s in ranked if s >= floor]


def rrf(lists: Sequence[Ranked], k: int = 60) -> Ranked:
    fused: dict[Hashable, float] = {}
    for ranked in lists:
        for rank, (key, _) in enumerate(ranked, 1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda kv: -kv[1])


def weighted(lists: Sequence[Ranked], weights: Sequence[float]) -> Ranked:
    fused: dict[Hashable, float] = {}
    for ranked, w in zip(lists, weights, strict=True):
        if not ranked:
            continue
        hi, lo = ranked[0][1], min(s for _, s in ranked)
        span = hi - lo
        for key, s in ranked:
            fused[key] = fused.get(key, 0.0) + w * ((s - lo) / span if span > 0 else 1.0)
    return sorted(fused.items(), key=lambda kv: -kv[1])
