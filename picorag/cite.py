"""Chunk metadata -> a citation a person can check: source plus position in its hierarchy.

>>> citation({"law": "中华人民共和国民法典", "book": "第三编 合同", "chapter": "第八章 违约责任",
...           "article": "第五百九十条"})
'中华人民共和国民法典 · 第三编 合同 · 第五百九十条'
>>> citation({"title": "Guide", "source_path": "docs/guide.pdf", "page": 3})
'Guide · docs/guide.pdf · p. 3'
"""

from __future__ import annotations

from typing import Any


def citation(meta: dict[str, Any]) -> str:
    if meta.get("article"):  # statute: law, its top-level division (book, else chapter), article
        top = meta.get("book") or meta.get("chapter") or ""
        return " · ".join(p for p in (meta.get("law", ""), top, meta["article"]) if p)
    if meta.get("case"):  # court case: title, section heading, pages
        a, b = meta.get("page_start"), meta.get("page_end")
        pages = "" if a is None else f"p. {a}" if a == b or b is None else f"pp. {a}–{b}"
        return " · ".join(p for p in (meta["case"], meta.get("heading", ""), pages) if p)
    where = ""
    for key, label in (("page", "p. "), ("slide", "slide "), ("line", "line ")):
        if meta.get(key) is not None:
            where = f"{label}{meta[key]}"
            break
    source = meta.get("source_path") or meta.get("source") or ""
    title = meta.get("title") or ""
    heading = meta.get("heading") or ""
    parts = [title, heading if heading != title else "", source if source != title else "", where]
    return " · ".join(p for p in parts if p)
