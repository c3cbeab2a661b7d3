"""Retrieval evaluation: datasets (BEIR directories, gold-by-metadata JSONL) and metrics.

Metrics take the relevance of each retrieved item in rank order, so they are plain functions
that tests check on hand-computed cases:

>>> rels = [0, 1, 0, 1]            # relevance of ranks 1..4
>>> hit_at(rels, 1), hit_at(rels, 2), mrr_at(rels, 5)
(0.0, 1.0, 0.5)
>>> round(ndcg_at(rels, [1, 1], 10), 4)   # (1/log2(3) + 1/log2(5)) / (1 + 1/log2(3))
0.6509
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ingest import json_object
from .records import Hit, PicoragError

SearchFn = Callable[[str, int], list[Hit]]
SearchManyFn = Callable[[list[str], int], list[list[Hit]]]


# -- metrics -------------------------------------------------------------------------------------


def hit_at(rels: Sequence[float], k: int) -> float:
    return float(any(r > 0 for r in rels[:k]))


def mrr_at(rels: Sequence[float], k: int) -> float:
    return next((1.0 / (i + 1) for i, r in enumerate(rels[:k]) if r > 0), 0.0)


def ndcg_at(rels: Sequence[float], ideal: Sequence[float], k: int) -> float:
    """nDCG with linear gains (as BEIR/trec_eval); `ideal` are the relevances of all relevant items."""
    dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rels[:k]))
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(sorted(ideal, reverse=True)[:k]))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(rels: Sequence[float], n_relevant: int, k: int) -> float:
    return sum(1 for r in rels[:k] if r > 0) / n_relevant if n_relevant else 0.0


# -- datasets ------------------------------------------------------------------------------------


@dataclass
class Query:
    qid: str
    text: str
    tag: str = ""
    qrels: dict[str, float] = field(default_factory=dict)  # BEIR: doc_id -> relevance
    gold: dict[str, str] = field(default_factory=dict)  # gold-by-metadata


def load_beir(directory: Path, split: str = "test") -> list[Query]:
    qfile, rfile = directory / "queries.jsonl", directory / "qrels" / f"{split}.tsv"
    for f in (qfile, rfile):
        if not f.is_file():
            raise PicoragError(f"{directory} is not a BEIR dataset: {f.relative_to(directory)} is missing")
    qrels: dict[str, dict[str, float]] = {}
    for i, line in enumerate(rfile.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split("\t")
        if i == 1 and parts[0] == "query-id":
            continue
        if len(parts) != 3:
            raise PicoragError(f"{rfile}:{i}: expected 'query-id<TAB>corpus-id<TAB>score'")
        try:
            score = float(parts[2])
        except ValueError:
            raise PicoragError(f"{rfile}:{i}: score {parts[2]!r} is not a number") from None
        if score > 0:
            qrels.setdefault(parts[0], {})[parts[1]] = score
    queries = []
    for i, obj in enumerate(_read_jsonl(qfile), 1):
        qid = str(obj.get("_id", obj.get("id", "")))
        if qid in qrels:
            if not isinstance(obj.get("text"), str):
                raise PicoragError(f"{qfile}:{i}: query needs a string 'text'")
            queries.append(Query(qid, obj["text"], qrels=qrels[qid]))
    if not queries:
        raise PicoragError(f"{directory}: no query in queries.jsonl has judgments in {rfile.name}")
    return queries


def load_gold(path: Path, match: Sequence[str]) -> list[Query]:
    queries = []
    for i, obj in enumerate(_read_jsonl(path), 1):
        text, gold = obj.get("query", obj.get("question")), obj.get("gold")
        if not isinstance(text, str) or not isinstance(gold, dict):
            raise PicoragError(f"{path}:{i}: record needs a string 'query' and a 'gold' object")
        missing = [key for key in match if key not in gold]
        if missing:
            raise PicoragError(f"{path}:{i}: gold has no {', '.join(missing)} (set the keys with --match)")
        queries.append(Query(str(obj.get("sample_id", i)), text, str(obj.get("tag", "")),
                             gold={key: str(gold[key]).strip() for key in match}))
    if not queries:
        raise PicoragError(f"{path}: no questions")
    return queries


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json_object(line, f"{path}:{i}") for i, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError:
        raise PicoragError(f"{path}: not UTF-8") from None


# -- running -------------------------------------------------------------------------------------


def _doc_level(search: SearchFn, text: str, n_docs: int, hits: list[Hit] | None = None) -> list[str]:
    """Top `n_docs` distinct doc_ids (a document counts at the rank of its best chunk)."""
    want = n_docs * 3
    while True:
        hits = search(text, want) if hits is None else hits
        docs = list(dict.fromkeys(h.doc_id for h in hits))
        if len(docs) >= n_docs or len(hits) < want:
            return docs[:n_docs]
        want *= 2
        hits = None


def _with_hits(search_many: SearchManyFn | None, queries: list[Query], n: int,
               progress: Callable) -> Iterable[tuple[Query, list[Hit] | None]]:
    """Each query with its hits ranked in batches of 64, or with None (the caller searches)."""
    if search_many is None:
        yield from progress([(q, None) for q in queries])
        return
    for s in progress(range(0, len(queries), 64)):
        batch = queries[s : s + 64]
        yield from zip(batch, search_many([q.text for q in batch], n), strict=True)


def evaluate(search: SearchFn, dataset: str | Path, k: int = 5, match: Sequence[str] = ("law", "article"),
             progress: Callable = iter, search_many: SearchManyFn | None = None) -> dict[str, Any]:
    """Run every query of a BEIR directory or gold JSONL through `search` and average metrics.
    With `search_many` (e.g. KnowledgeBase.search_many) queries are ranked in batches."""
    dataset = Path(dataset)
    if not dataset.exists():
        raise PicoragError(f"dataset not found: {dataset}")
    beir = dataset.is_dir()
    queries = load_beir(dataset) if beir else load_gold(dataset, match)
    depth = max(100, k, 10)
    rows: list[tuple[str, dict[str, float]]] = []
    t0 = time.perf_counter()
    for q, pre in _with_hits(search_many, queries, depth * 3 if beir else depth, progress):
        if beir:
            docs = _doc_level(search, q.text, depth, pre)
            rels = [q.qrels.get(d, 0.0) for d in docs]
            ideal = list(q.qrels.values())
        else:
            hits = search(q.text, depth) if pre is None else pre
            rels = [float(all(str(h.meta.get(key, "")).strip() == v for key, v in q.gold.items())) for h in hits]
            first = next((i for i, r in enumerate(rels) if r), None)  # one gold unit: count it once
            rels = [1.0 if i == first else 0.0 for i in range(len(rels))]
            ideal = [1.0]
        rows.append((q.tag, {f"hit@{k}": hit_at(rels, k), f"mrr@{k}": mrr_at(rels, k),
                             "ndcg@10": ndcg_at(rels, ideal, 10), "recall@100": recall_at(rels, len(ideal), 100)}))
    seconds = time.perf_counter() - t0
    result = _mean([m for _, m in rows])
    result.update({"n": len(rows), "qps": len(rows) / seconds if seconds else float("inf"), "k": k,
                   "dataset": str(dataset)})
    tags = sorted({t for t, _ in rows if t})
    if tags:
        result["by_tag"] = {t: {**_mean([m for tt, m in rows if tt == t]), "n": sum(tt == t for tt, _ in rows)}
                            for t in tags}
    return result


def _mean(ms: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(m[key] for m in ms) / len(ms) for key in ms[0]} if ms else {}


# -- answers (QA) --------------------------------------------------------------------------------

_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


def normalize_answer(text: str) -> list[str]:
    """SQuAD-style: lowercase, punctuation and English articles removed, whitespace tokens; CJK
    characters count one token each (Chinese has no spaces to split on)."""
    text = _PUNCT.sub(" ", text.lower())
    tokens: list[str] = []
    for word in text.split():
        if word in ("a", "an", "the"):
            continue
        tokens += re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+",
                             word)
    return tokens


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best F1 over the reference answers of the bag-of-tokens overlap."""
    pred = normalize_answer(prediction)
    best = 0.0
    for a in answers:
        gold = normalize_answer(a)
        common = sum((Counter(pred) & Counter(gold)).values())
        if not pred or not gold:
            best = max(best, float(pred == gold))
        elif common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def evaluate_qa(answer: Callable[[str], str], path: str | Path, progress: Callable = iter) -> dict[str, Any]:
    """EM and token F1 of `answer(question)` over a JSONL of {"question", "answers": [...]}."""
    path = Path(path)
    if not path.is_file():
        raise PicoragError(f"QA file not found: {path}")
    rows = _read_jsonl(path)
    for i, r in enumerate(rows, 1):
        if not isinstance(r.get("question"), str) or not isinstance(r.get("answers"), list) or not r["answers"]:
            raise PicoragError(f"{path}:{i}: record needs a string 'question' and a non-empty 'answers' list")
    t0 = time.perf_counter()
    scores = []
    for r in progress(rows):
        pred = answer(r["question"])
        refs = [str(a) for a in r["answers"]]
        scores.append((exact_match(pred, refs), token_f1(pred, refs)))
    seconds = time.perf_counter() - t0
    return {"n": len(rows), "em": sum(e for e, _ in scores) / len(rows), "f1": sum(f for _, f in scores) / len(rows),
            "qps": len(rows) / seconds if seconds else float("inf"), "dataset": str(path)}
