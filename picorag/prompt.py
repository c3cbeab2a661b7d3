"""Conversations with retrieved documents, rendered one way for every model.

A conversation is a list of messages in nanochat's RAG format:

    {"role": "system", "content": "..."}
    {"role": "retrieval", "documents": [doc, ...]}                   # or, after several hops:
    {"role": "retrieval", "multi_hop": True, "hops": [{"hop": 1, "query": "...", "documents": [...]}]}
    {"role": "user", "content": "..."}
    {"role": "assistant", "content": "..."}

A document is `document(hit)`: {"id", "title", "content", "source", "score", "citation"}. Documents
are numbered [1]..[n] in the order they appear (across hops), and answers cite them by number.
`to_chat` turns a conversation into plain system/user/assistant messages for chat models (the
retrieval message becomes a numbered context block in the user turn it precedes); `render`
flattens it to one string with role markers for picorag's own models. Both inference and training
use these two functions, so a model is trained on exactly the prompts it will see.

>>> from picorag.records import Hit
>>> h = Hit("d-0", "d", 1.0, "Cats purr.", {"title": "Cats"}, "Cats · line 1")
>>> msgs = conversation("Do cats purr?", [h])
>>> print(to_chat(msgs)[1]["content"])
Context:
[1] Cats · line 1
Cats purr.
<BLANKLINE>
Question: Do cats purr?
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from .records import Hit

SYSTEM = ("Answer the question using only the numbered context passages. Cite the passages you use "
          "with their numbers in square brackets, like [1] or [2][3]. If the context does not contain "
          "the answer, say that you don't know.")
SYSTEM_ZH = ("只根据给出的编号资料回答问题，并用方括号标注所依据资料的编号，例如 [1] 或 [2][3]。"
             "资料中没有答案时，请直接说不知道。")
Message = dict[str, Any]


def document(hit: Hit) -> dict[str, Any]:
    """A retrieved chunk as a conversation document (nanochat's doc.to_dict() shape, plus citation)."""
    return {"id": hit.id, "title": hit.meta.get("title", ""), "content": hit.text,
            "source": hit.meta.get("source") or hit.meta.get("source_path", ""), "score": hit.score,
            "citation": hit.citation}


def system_prompt(question: str) -> str:
    from .analyze import detect_language

    return SYSTEM_ZH if detect_language(question) == "zh" else SYSTEM


def conversation(question: str, hits: Sequence[Hit], history: Sequence[Message] = (),
                 system: str | None = None) -> list[Message]:
    """system, earlier turns, the retrieval message, then the question."""
    return [{"role": "system", "content": system or system_prompt(question)}, *history,
            {"role": "retrieval", "documents": [document(h) for h in hits]},
            {"role": "user", "content": question}]


def documents_of(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """All documents of the last retrieval message, in citation order [1]..[n] (hops flattened)."""
    for m in reversed(messages):
        if m["role"] == "retrieval":
            if m.get("multi_hop"):
                return [d for hop in m["hops"] for d in hop["documents"]]
            return list(m["documents"])
    return []


def context_block(docs: Sequence[dict[str, Any]]) -> str:
    parts = []
    for i, d in enumerate(docs, 1):
        head = d.get("citation") or d.get("title") or d.get("id", "")
        parts.append(f"[{i}] {head}\n{d['content']}")
    return "Context:\n" + "\n\n".join(parts)


def fit_documents(docs: list[dict[str, Any]], budget: int, count: Callable[[str], int]) -> list[dict[str, Any]]:
    """Keep documents in order while the context fits `budget` tokens; the last one that does not
    fit is truncated rather than dropped when at least a quarter of it fits."""
    kept: list[dict[str, Any]] = []
    used = count("Context:\n")
    for i, d in enumerate(docs, 1):
        head = f"[{i}] {d.get('citation') or d.get('title') or d.get('id', '')}\n"
        need = count(head + d["content"]) + 2
        if used + need <= budget:
            kept.append(d)
            used += need
            continue
        room = budget - used - count(head) - 2
        if room > need // 4:
            text = d["content"]
            while text and count(text) > room:  # cut from the end, keeping whole characters
                text = text[: int(len(text) * room / max(count(text), 1)) - 1]
            if text:
                kept.append({**d, "content": text + " …"})
        break
    return kept


def to_chat(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Plain chat messages: the retrieval context is put in front of the user turn that follows it."""
    out: list[dict[str, str]] = []
    pending = ""
    for m in messages:
        if m["role"] == "retrieval":
            pending = context_block(documents_of([m]))
        elif m["role"] == "user" and pending:
            out.append({"role": "user", "content": f"{pending}\n\nQuestion: {m['content']}"})
            pending = ""
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


ROLE_MARK = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "retrieval": "<|retrieval|>"}


def render(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """One string with role markers, for picorag's own models (training and inference alike)."""
    parts = []
    for m in messages:
        body = context_block(documents_of([m])) if m["role"] == "retrieval" else m["content"]
        parts.append(f"{ROLE_MARK[m['role']]}{body}<|end|>")
    return "".join(parts) + (ROLE_MARK["assistant"] if add_generation_prompt else "")


_MARKER = re.compile(r"\[(\d+(?:\s*[,，、]\s*\d+)*)\]")


def strip_markers(answer: str) -> str:
    """The answer without its [i] citation markers (for scoring against reference answers)."""
    return re.sub(r"\s+", " ", _MARKER.sub("", answer)).strip()


def resolve_citations(answer: str, docs: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Map [i] markers to documents; markers that cite nothing are dropped from the text.

    Returns the cleaned answer and the cited documents as {"n", "id", "citation"} in order of first use.
    """
    cited: dict[int, dict[str, Any]] = {}

    def keep(m: re.Match) -> str:
        nums = [int(x) for x in re.split(r"\s*[,，、]\s*", m.group(1))]
        good = [n for n in nums if 1 <= n <= len(docs)]
        for n in good:
            cited.setdefault(n, {"n": n, "id": docs[n - 1]["id"], "citation": docs[n - 1].get("citation", "")})
        return "".join(f"[{n}]" for n in good)

    text = _MARKER.sub(keep, answer)
    return re.sub(r"[ \t]+([。，.,;；])", r"\1", text).strip(), list(cited.values())
