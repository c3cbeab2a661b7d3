"""picorag: local, offline-first retrieval-augmented generation.

>>> from picorag import KnowledgeBase          # doctest: +SKIP
>>> kb = KnowledgeBase.open("my-kb")           # doctest: +SKIP
>>> kb.search("违约责任", k=3, where={"short_name": "民法典"})  # doctest: +SKIP

Names are imported lazily so `picorag.micro` (standard library only) loads without numpy.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["KnowledgeBase", "Hit", "Chunk", "Record", "Section", "PicoragError"]


def __getattr__(name: str) -> Any:
    if name == "KnowledgeBase":
        from .kb import KnowledgeBase

        return KnowledgeBase
    if name in ("Hit", "Chunk", "Record", "Section", "PicoragError"):
        from . import records

        return getattr(records, name)
    raise AttributeError(f"module 'picorag' has no attribute {name!r}")
