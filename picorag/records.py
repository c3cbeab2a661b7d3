"""The plain records that flow between stages: ingest -> Record -> chunk -> Chunk -> search -> Hit.

Every stage speaks these dataclasses and nothing else, so a reader can follow the data path
without knowing any stage's internals.

>>> r = Record("notes.md", "Notes", [Section("Hello world.", {"line": 1})], {"source_path": "notes.md"})
>>> r.sections[0].text
'Hello world.'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class PicoragError(Exception):
    """An error the user caused or can fix; the CLI prints it as one line, never a traceback."""


@dataclass
class Section:
    """A piece of a document as its reader found it (a page, an article, the whole text).

    `atomic` sections become exactly one chunk (a statute article); others are split by size.
    `index_prefix` is prepended to every chunk's index_text (hierarchy, title) but never displayed.
    """

    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    index_prefix: str = ""
    atomic: bool = False


@dataclass
class Record:
    """One document: its id (verbatim from the input, or stable from the path), title, sections."""

    doc_id: str
    title: str
    sections: list[Section]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    """The unit that is indexed and retrieved. `id` is f"{doc_id}-{i}", i counting from 0.

    BM25 indexes `index_text` = `index_prefix` + `text`; only `text` is ever displayed.
    """

    id: str
    doc_id: str
    text: str
    index_prefix: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def index_text(self) -> str:
        return self.index_prefix + self.text


@dataclass
class Hit:
    """A retrieved chunk with its score and a human-readable citation."""

    id: str
    doc_id: str
    score: float
    text: str
    meta: dict[str, Any]
    citation: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
