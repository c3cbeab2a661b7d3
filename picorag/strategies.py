"""Query strategies: how a question becomes retrieved documents.

    plain      search the question as asked
    (hyde, step-back and multi-hop are added here; each returns hits plus the retrieval message)

>>> from picorag import KnowledgeBase                                   # doctest: +SKIP
>>> hits, message = retrieve(KnowledgeBase.open("kb"), "违约责任", "plain", None, k=3)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .prompt import Message, document
from .records import Hit, PicoragError

if TYPE_CHECKING:
    from .generate import Generator
    from .kb import KnowledgeBase

STRATEGIES = ("plain",)


def retrieve(kb: KnowledgeBase, question: str, strategy: str, generator: Generator | None, k: int = 5,
             **search: Any) -> tuple[list[Hit], Message]:
    """Hits for `question` and the conversation's retrieval message."""
    if strategy == "plain":
        hits = kb.search(question, k=k, **search)
        return hits, {"role": "retrieval", "documents": [document(h) for h in hits]}
    raise PicoragError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
