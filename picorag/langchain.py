"""LangChain adapters: a picorag KB as a `BaseRetriever`, and as a tool that answers with citations.

Needs the optional dependency langchain-core (`pip install langchain-core`).

>>> import pathlib, tempfile
>>> from picorag.kb import KnowledgeBase
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "d.jsonl").write_text('{"id": "p1", "title": "Returns", "content": "Items can be returned in 30 days."}')
>>> _ = KnowledgeBase.build(d / "kb", [d / "d.jsonl"])
>>> [doc] = PicoragRetriever(kb_path=str(d / "kb"), k=1).invoke("return items")
>>> doc.page_content, doc.metadata["id"], doc.metadata["title"]
('Items can be returned in 30 days.', 'p1-0', 'Returns')
>>> print(picorag_tool(d / "kb").invoke("How long can items be returned?"))  # doctest: +ELLIPSIS
Items can be returned in 30 days. [1]
<BLANKLINE>
Sources:
[1] Returns · ...d.jsonl · line 1
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.tools import StructuredTool, ToolException
    from pydantic import Field, PrivateAttr
except ImportError as e:  # an optional extra: say how to get it rather than show a bare ModuleNotFoundError
    raise ImportError("picorag.langchain needs langchain-core: pip install langchain-core "
                      f"(or pip install 'picorag[langchain]'); import failed: {e}") from e

from .kb import KnowledgeBase
from .records import Hit, PicoragError
from .retrieval import search_mode

if TYPE_CHECKING:
    from .generate import Generator

__all__ = ["PicoragRetriever", "picorag_tool", "to_langchain"]


def to_langchain(hit: Hit) -> Document:
    """A hit as a LangChain Document: the chunk text, and id/score/citation/meta in metadata."""
    meta = {"id": hit.id, "doc_id": hit.doc_id, "title": hit.meta.get("title", ""),
            "source": hit.meta.get("source_path", hit.meta.get("source", "")), "score": hit.score,
            "citation": hit.citation, "meta": hit.meta}
    return Document(page_content=hit.text, metadata=meta, id=hit.id)


def _open(kb_path: str | Path, mode: str | None) -> tuple[KnowledgeBase, str | None]:
    """Open the KB once and check the mode now, so a bad path or a KB without vectors fails at setup."""
    from .retrieve import resolve_mode

    mode = search_mode(mode) if mode else None  # nanochat's "simple" is accepted too
    kb = KnowledgeBase.open(kb_path)
    if mode:
        resolve_mode(kb, mode)
    return kb, mode


class PicoragRetriever(BaseRetriever):
    """The k best chunks of a picorag KB. `mode`: bm25, dense or hybrid (default: hybrid when the KB
    has vectors); `where` filters metadata; `search_options` go to KnowledgeBase.search (fusion, cut…)."""

    kb_path: str | Path
    k: int = 5
    mode: str | None = None
    where: dict[str, str | list[str]] | None = None
    search_options: dict[str, Any] = Field(default_factory=dict)
    _kb: KnowledgeBase = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._kb, self.mode = _open(self.kb_path, self.mode)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self._kb.search(query, k=self.k, where=self.where, mode=self.mode, **self.search_options)
        return [to_langchain(h) for h in hits]


def picorag_tool(kb_path: str | Path, *, name: str = "picorag_ask", description: str | None = None,
                 k: int = 5, mode: str | None = None, where: dict[str, str | list[str]] | None = None,
                 generator: Generator | None = None, max_tokens: int = 256) -> StructuredTool:
    """A tool that answers a question from the KB with `picorag.answer.ask` (extractive by default:
    quoted sentences, no model) and returns the answer with its numbered sources. Invoked with a
    tool call, the tool message's artifact is `Answer.to_dict()` (citations, retrieved chunks)."""
    from .answer import ask

    kb, mode = _open(kb_path, mode)

    def answer(question: str) -> tuple[str, dict[str, Any]]:
        try:
            a = ask(kb, question, generator, k=k, max_tokens=max_tokens, mode=mode, where=where)
        except PicoragError as e:  # the agent gets the message as the tool's result, not a crash
            raise ToolException(str(e)) from None
        sources = "\n".join(f"[{c['n']}] {c['citation'] or c['id']}" for c in a.citations)
        return (f"{a.text}\n\nSources:\n{sources}" if sources else a.text), a.to_dict()

    return StructuredTool.from_function(
        func=answer, name=name, response_format="content_and_artifact", handle_tool_error=True,
        description=description or ("Answer a question from the local knowledge base. Input: the question. "
                                    "Returns an answer citing numbered sources [1], [2] … listed after it."))
