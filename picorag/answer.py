"""Question -> retrieved passages -> generated answer with citations that resolve to chunks.

>>> from picorag import KnowledgeBase                               # doctest: +SKIP
>>> a = ask(KnowledgeBase.open("kb"), "不可抗力能免责吗？")            # doctest: +SKIP
>>> a.text, [c["citation"] for c in a.citations]                    # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .generate import Generator, complete, load_generator
from .prompt import Message, fit_documents, resolve_citations, system_prompt
from .records import Hit, PicoragError
from .strategies import retrieve

if TYPE_CHECKING:
    from .kb import KnowledgeBase


@dataclass
class Answer:
    question: str
    text: str
    citations: list[dict[str, Any]]  # {"n", "id", "citation"}: the passages the answer cites
    hits: list[Hit]
    messages: list[Message]  # the conversation the generator saw (documents after the token budget)
    timings: dict[str, float] = field(default_factory=dict)
    query: str = ""  # what was searched: the question, or its stand-alone rewrite in a chat

    def to_dict(self) -> dict[str, Any]:
        retrieval = next((m for m in self.messages if m["role"] == "retrieval"), {})
        return {"answer": self.text, "query": self.query, "citations": self.citations,
                "retrieval": [h.to_dict() for h in self.hits],
                **({"hops": retrieval["hops"]} if retrieval.get("multi_hop") else {}),
                **{key: retrieval[key] for key in ("strategy", "hypothesis", "step_back") if key in retrieval},
                "timings": self.timings}


def ask(kb: KnowledgeBase, question: str, generator: Generator | None = None, k: int = 5,
        strategy: str = "plain", history: Sequence[Message] = (), max_tokens: int = 256,
        on_token: Callable[[str], None] | None = None, **search: Any) -> Answer:
    """Retrieve with `strategy`, fit the passages into the generator's window, stream the answer
    (each piece also goes to `on_token`), and map its [i] markers back to chunk ids. With a
    `history` (earlier user/assistant turns), the question is first rewritten to stand alone."""
    if not question or not question.strip():
        raise PicoragError("empty question")
    gen = generator or load_generator("extractive")
    t0 = time.perf_counter()
    query = standalone(question, history, gen)
    hits, retrieval = retrieve(kb, query, strategy, gen, k=k, **search)
    t1 = time.perf_counter()
    messages = _fit([{"role": "system", "content": system_prompt(question)}, *history, retrieval,
                     {"role": "user", "content": question}], gen, max_tokens)
    pieces: list[str] = []
    first = None
    for piece in gen.stream(messages, max_tokens):
        first = first or time.perf_counter()
        pieces.append(piece)
        if on_token:
            on_token(piece)
    t2 = time.perf_counter()
    docs = [d for m in messages if m["role"] == "retrieval" for d in _docs(m)]
    text, citations = resolve_citations("".join(pieces), docs)
    timings = {"retrieval_s": t1 - t0, "first_token_s": (first or t2) - t0, "total_s": t2 - t0}
    return Answer(question, text, citations, hits, messages, timings, query)


REWRITE = ("Rewrite the last user question so that it can be understood without the conversation. "
           "Reply with the rewritten question only.")


def standalone(question: str, history: Sequence[Message], gen: Generator) -> str:
    """A follow-up question made to stand alone for retrieval ("and the penalty?" -> a full question).

    A writing generator rewrites it from the conversation; otherwise (extractive) the previous user
    question is added for its topic terms, and the new question is said twice so that it still
    outweighs the context it borrows (BM25 counts repeated query terms).
    """
    previous = [m["content"] for m in history if m["role"] == "user"]
    if not previous:
        return question
    if gen.can_write:
        turns = "\n".join(f"{m['role']}: {m['content']}" for m in history if m["role"] in ("user", "assistant"))
        rewritten = complete(gen, [{"role": "system", "content": REWRITE},
                                   {"role": "user", "content": f"{turns}\nuser: {question}"}], 64)
        return rewritten.splitlines()[0].strip() if rewritten.strip() else question
    return f"{question} {previous[-1]} {question}"


def _docs(m: Message) -> list[dict[str, Any]]:
    return [d for hop in m["hops"] for d in hop["documents"]] if m.get("multi_hop") else list(m["documents"])


def _fit(messages: list[Message], gen: Generator, max_tokens: int) -> list[Message]:
    """Truncate the retrieved context (never the question) so prompt + answer fit the window."""
    fixed = sum(gen.count_tokens(m.get("content", "")) + 4 for m in messages if m["role"] != "retrieval")
    budget = gen.context_window - max_tokens - fixed - 16
    if budget <= 0:
        raise PicoragError(f"the question and conversation need {fixed + max_tokens} tokens but the "
                           f"{gen.name} model's window is {gen.context_window}; shorten them or lower --max-tokens")
    out = []
    for m in messages:
        if m["role"] == "retrieval":
            if m.get("multi_hop"):  # budget shared across hops in order
                hops, left = [], budget
                for hop in m["hops"]:
                    docs = fit_documents(hop["documents"], left, gen.count_tokens)
                    left -= sum(gen.count_tokens(d["content"]) for d in docs)
                    hops.append({**hop, "documents": docs})
                m = {**m, "hops": hops}
            else:
                m = {**m, "documents": fit_documents(m["documents"], budget, gen.count_tokens)}
        out.append(m)
    return out
