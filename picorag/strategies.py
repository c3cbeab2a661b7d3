"""Query strategies: how a question becomes retrieved documents and the conversation's retrieval message.

    plain      search the question as asked
    hyde       the generator writes a hypothetical answer; question + answer are embedded for the dense
               side only, BM25 keeps the raw question (tiny-rag-advanced found that a hypothetical text
               drags BM25 off topic); the two lists are fused as in hybrid search. Needs vectors.
    step-back  the generator writes a more general question; both are searched and fused with RRF
    multi-hop  up to `max_hops` rounds of `top_k_per_hop` new passages each (REFRAG-style); the next
               query names what the question still needs: the generator's query when it can write,
               else bridge terms taken from the passages just found (see `bridge_terms`)

hyde and step-back need a generator that writes (local, openai); with extractive they refuse with a
message saying so. multi-hop works with any generator. The retrieval message is nanochat's:
{"role": "retrieval", "documents": [...]} (plus the strategy and its generated text), or for multi-hop
{"role": "retrieval", "multi_hop": true, "hops": [{"hop", "query", "documents"}]}.

>>> import tempfile, pathlib
>>> from picorag import KnowledgeBase
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "docs.jsonl").write_text(
...     '{"id": "a", "title": "Ann Lee", "text": "Ann Lee was coached by Bo Tran at Kent."}\\n'
...     '{"id": "b", "title": "Bo Tran", "text": "Bo Tran was born in Oslo in 1950."}\\n')
>>> kb = KnowledgeBase.build(d / "kb", [d / "docs.jsonl"])
>>> hits, msg = retrieve(kb, "Where was the coach of Ann Lee born?", "multi-hop", None, top_k_per_hop=1)
>>> [(h["hop"], h["query"], [x["id"] for x in h["documents"]]) for h in msg["hops"]]
[(1, 'Where was the coach of Ann Lee born?', ['a-0']), (2, 'Bo Tran Where was the coach of Ann Lee born?', ['b-0'])]
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from .analyze import detect_language
from .fusion import dynamic_cut, rrf, weighted
from .generate import QUESTION_WORDS, complete
from .prompt import Message, context_block, document, fit_documents
from .records import Hit, PicoragError

if TYPE_CHECKING:
    from .generate import Generator
    from .kb import KnowledgeBase

STRATEGIES = ("plain", "hyde", "step-back", "multi-hop")

HYDE = {"en": "Write a short passage (two or three sentences) that answers the question, in the style of the "
              "documents being searched (an encyclopedia article, a statute, a paper abstract), using the terms "
              "such a passage would use. Reply with the passage only.",
        "zh": "请写一段能回答这个问题的简短文字（两三句），写法像被检索的文档（法律条文、百科、论文摘要），"
              "使用这类文字会用的术语。只输出这段文字。"}
STEP_BACK = {"en": "Rewrite the question as a more general step-back question about the concept, rule or principle "
                   "behind it. Reply with the general question only.",
             "zh": "把这个问题改写成一个更一般的问题，问它背后的概念、规则或原则。只输出改写后的问题。"}
NEXT_HOP = {"en": "You search for passages that answer a question, in several steps. If the passages found so far "
                  "contain everything needed to answer it, reply DONE. Otherwise reply with one short search query "
                  "for the missing fact (for example the person, place, work or rule that the passages mention and "
                  "the question depends on). Reply with DONE or the query only.",
            "zh": "你在分几步检索能回答问题的资料。如果已找到的资料足以回答问题，只回复 DONE；否则只回复一个简短的"
                  "检索词，用来查找还缺少的事实（例如资料中提到、问题又依赖的人物、地点、作品或法条）。"}
# a capitalised run of words (inner connectors allowed) or an ordinal label such as 第一百四十四条
_PHRASE = re.compile(r"[A-Z0-9][\w'’.-]*(?:\s+(?:(?:of|the|de|da|von|van|and|&|for|in)\s+)*[A-Z0-9][\w'’.-]*)*"
                     r"|第[零一二三四五六七八九十百千万两〇0-9]+[编章节条款项](?:之[一二三四五六七八九十]+)?")


def retrieve(kb: KnowledgeBase, question: str, strategy: str, generator: Generator | None, k: int = 5,
             max_hops: int = 3, top_k_per_hop: int = 3, **search: Any) -> tuple[list[Hit], Message]:
    """Hits for `question` and the conversation's retrieval message. `search` takes KnowledgeBase.search's
    options (where, mode, fusion, reranker, ...). multi-hop returns up to max_hops x top_k_per_hop hits
    (hop by hop) and ignores k."""
    if not question or not question.strip():
        raise PicoragError("empty query")
    if strategy == "plain":
        hits = kb.search(question, k=k, **search)
        return hits, {"role": "retrieval", "documents": [document(h) for h in hits]}
    if strategy in ("hyde", "step-back"):
        if generator is None or not generator.can_write:
            name = generator.name if generator is not None else "no"
            raise PicoragError(f"--strategy {strategy} needs a generator that writes text and the {name} generator "
                               "only quotes; use --generator local or --generator openai (multi-hop works with any)")
        if strategy == "hyde":
            return hyde(kb, question, generator, k, **search)
        return step_back(kb, question, generator, k, **search)
    if strategy == "multi-hop":
        return multi_hop(kb, question, generator, max_hops, top_k_per_hop, **search)
    raise PicoragError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def _write(gen: Generator, instruction: dict[str, str], text: str, max_tokens: int, purpose: str) -> str:
    lang = "zh" if detect_language(text) == "zh" else "en"
    out = complete(gen, [{"role": "system", "content": instruction[lang]}, {"role": "user", "content": text}],
                   max_tokens, purpose)
    return out.strip().strip('"“”').strip()


def hyde(kb: KnowledgeBase, question: str, gen: Generator, k: int = 5, where: Any = None, mode: str | None = None,
         fetch: bool = True, **options: Any) -> tuple[list[Hit], Message]:
    """HyDE on the dense side only: embed question + hypothetical answer; BM25 searches the question."""
    from .retrieve import FUSIONS, Options, _rerank, bm25_ranked, dense_ranked, resolve_mode, to_hits

    o = Options(mode=mode, **options)
    mode = resolve_mode(kb, o.mode)
    if mode == "bm25":  # nothing to change: the hypothetical text is only ever used for the dense side
        raise PicoragError(f"--strategy hyde changes the dense query only, and this search is BM25-only "
                           f"({'--mode bm25' if o.mode == 'bm25' else f'{kb.path} has no vectors'}); use "
                           f"--strategy plain or step-back, or add vectors: picorag add {kb.path} --dense auto")
    if k < 1 or o.fusion not in FUSIONS:
        raise PicoragError(f"k must be at least 1 and fusion one of {', '.join(FUSIONS)}")
    hypothesis = _write(gen, HYDE, question, 128, "write a hypothetical answer for --strategy hyde")
    pool = k * max(o.recall_factor, 1) if (mode == "hybrid" or o.reranker) else k
    dense = dense_ranked(kb, [f"{question}\n{hypothesis}"], pool, where, o.nprobe, o.tuned)[0]
    if mode == "dense":
        ranked = dense
    else:
        lists = [dynamic_cut(bm25_ranked(kb, [question], pool, where)[0], o.cut), dynamic_cut(dense, o.cut)]
        ranked = rrf(lists, o.rrf_k) if o.fusion == "rrf" else weighted(lists, [1 - o.dense_weight, o.dense_weight])
    hits = _rerank(to_hits(kb, ranked[:pool]), question, o.reranker)[:k]
    return hits, {"role": "retrieval", "documents": [document(h) for h in hits], "strategy": "hyde",
                  "hypothesis": hypothesis}


def step_back(kb: KnowledgeBase, question: str, gen: Generator, k: int = 5, **search: Any) -> tuple[list[Hit], Message]:
    """Search the question and a more general version of it; fuse the two lists with RRF."""
    general = _write(gen, STEP_BACK, question, 64, "write a step-back question").splitlines()[0].strip()
    queries = [question] + ([general] if general and general != question else [])
    lists = kb.search_many(queries, k=2 * k, **search)
    by_id = {h.id: h for hits in reversed(lists) for h in hits}
    fused = rrf([[(h.id, h.score) for h in hits] for hits in lists])[:k]
    hits = [by_id[key] for key, _ in fused]
    for h, (_, score) in zip(hits, fused, strict=True):
        h.score = score
    return hits, {"role": "retrieval", "documents": [document(h) for h in hits], "strategy": "step-back",
                  "step_back": general}


def multi_hop(kb: KnowledgeBase, question: str, gen: Generator | None, max_hops: int = 3, top_k_per_hop: int = 3,
              **search: Any) -> tuple[list[Hit], Message]:
    """REFRAG-style rounds. Each round retrieves `top_k_per_hop` passages not seen before; the next query
    is the writing generator's (it may also answer DONE: the evidence suffices) or, without one, the
    question led by the best bridge terms of the passages just found. Stops early when a round finds
    nothing new or no bridge term is left."""
    if max_hops < 1 or top_k_per_hop < 1:
        raise PicoragError(f"--max-hops and --top-k-per-hop must be at least 1 (got {max_hops}, {top_k_per_hop})")
    seen: set[str] = set()
    used: set[str] = set(kb.analyzer.tokenize(question))  # terms already searched for
    hops: list[dict[str, Any]] = []
    found: list[Hit] = []
    query, via = question, "question"
    stop = "max hops"
    for n in range(1, max_hops + 1):
        new = [h for h in kb.search(query, k=top_k_per_hop + len(seen), **search) if h.id not in seen][:top_k_per_hop]
        hops.append({"hop": n, "query": query, "via": via, "documents": [document(h) for h in new]})
        seen.update(h.id for h in new)
        found += new
        if not new:
            stop = "nothing new"
            break
        if n == max_hops:
            break
        query, via = _next_query(kb, question, found, new, used, gen)
        if not query:
            stop = via
            break
    return found, {"role": "retrieval", "multi_hop": True, "hops": hops, "stop": stop}


def _next_query(kb: KnowledgeBase, question: str, found: list[Hit], new: list[Hit], used: set[str],
                gen: Generator | None) -> tuple[str, str]:
    """The next hop's query and how it was formed; ("", why) means stop."""
    if gen is not None and gen.can_write:
        lang = "zh" if detect_language(question) == "zh" else "en"
        budget = max(gen.context_window - 256 - gen.count_tokens(NEXT_HOP[lang] + question), 64)
        docs = fit_documents([document(h) for h in found], budget, gen.count_tokens)
        reply = complete(gen, [{"role": "system", "content": NEXT_HOP[lang]},
                               {"role": "user", "content": f"{context_block(docs)}\n\nQuestion: {question}"}],
                         48, "form the next multi-hop query")
        line = next((x.strip() for x in reply.splitlines() if x.strip()), "")
        line = re.sub(r"^(query|search|检索词)\s*[:：]\s*", "", line, flags=re.I).strip('"“”` ')[:200]
        if line.upper().startswith("DONE"):
            return "", "done"
        terms = set(kb.analyzer.tokenize(line))
        if terms and not terms <= used:  # a query that adds nothing would only find the same passages
            used |= terms
            return line, "generator"
    bridge = bridge_terms(kb, question, new, used)
    if not bridge:
        return "", "no bridge"
    for phrase in bridge:
        used |= set(kb.analyzer.tokenize(phrase))
    return f"{' '.join(bridge)} {question}", "bridge"


def bridge_terms(kb: KnowledgeBase, question: str, hits: list[Hit], used: set[str], n: int = 2) -> list[str]:
    """The `n` phrases of `hits` most likely to lead to the missing passage: names (capitalised runs of
    words, ordinal labels like 第十条) or, in CJK text, words, whose terms are not in the question. A
    phrase scores the mean idf of its new terms, weighted by the rank of the passage it came from; terms
    found in only one chunk of the KB are skipped (they cannot lead anywhere else), and so are terms
    in a quarter or more of the chunks (they are not names)."""
    n_rows = sum(s.n for s in kb.segments)
    scores: dict[str, float] = {}
    for rank, h in enumerate(hits, 1):
        for phrase in _phrases(h.text):
            terms = [t for t in dict.fromkeys(kb.analyzer.tokenize(phrase)) if t not in used | QUESTION_WORDS]
            if not terms:
                continue
            dfs = [sum(s.postings.df(t) for s in kb.segments) for t in terms]
            if min(dfs) < 2 or max(dfs) > max(n_rows / 4, 2):
                continue
            idf = sum(math.log(1 + n_rows / df) for df in dfs) / len(terms)
            score = idf * (1 + 0.15 * (len(terms) - 1)) / rank  # multi-word names are likelier entities
            scores[phrase] = max(scores.get(phrase, 0.0), score)
    best = sorted(scores, key=lambda p: -scores[p])
    out: list[str] = []
    for p in best:  # skip a phrase contained in one already chosen ("Tran" after "Bo Tran")
        if not any(p in q for q in out):
            out.append(p)
        if len(out) == n:
            break
    return out


def _phrases(text: str) -> list[str]:
    phrases = [m.group(0).strip(" .-") for m in _PHRASE.finditer(text)]
    if detect_language(text) == "zh":  # no capitals in CJK: candidate words come from the analyzer
        import jieba

        phrases += [w for w in jieba.cut(text) if len(w) >= 2 and re.match(r"[\u3400-\u9fff]", w)]
    # a run of numbers alone ("102nd 103rd", "2019") names nothing; a name has a capitalised word or is a label
    return [p for p in phrases if p and (re.search(r"(?:^|\s)[A-Z]", p) or not p.isascii())]
