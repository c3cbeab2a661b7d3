"""Record -> chunks: sentence-aware, CJK-aware splitting with stable ids.

Sizes are counted in "tokens" the way a reader would count them: one per CJK character (Chinese
has no spaces, and one character is roughly one subword token) and one per whitespace-separated
word elsewhere. Chunks are exact slices of the section text, so line numbers stay true.

>>> from picorag.records import Record, Section
>>> rec = Record("a", "", [Section("One two. Three four. Five six.", {})])
>>> [c.text for c in chunk_record(rec, size=4, overlap=0)]
['One two. Three four.', 'Five six.']
>>> [c.id for c in chunk_record(rec, size=4, overlap=0)]
['a-0', 'a-1']
"""

from __future__ import annotations

import re

from .analyze import detect_language
from .records import Chunk, Record, Section

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
# A sentence ends after ./!/? followed by space, after CJK end punctuation, or at a blank line.
_SENTENCE_END = re.compile(r"[.!?;](?=\s)|[。！？；]+[”’」』）)]*|\n\s*\n|\n(?=\s*[-*#>|]|\s*\d+[.)]\s)")

DEFAULT_SIZE = 256
DEFAULT_OVERLAP = 32


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def _sentences(text: str) -> list[tuple[int, int]]:
    """Spans (start, end) of sentences covering the text (whitespace between them excluded)."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:  # trim whitespace so chunk boundaries fall on text
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s < e:
            out.append((s, e))
    return out


def _split_long(text: str, s: int, e: int, size: int) -> list[tuple[int, int]]:
    """Cut one over-long sentence at token boundaries into pieces of at most `size` tokens."""
    toks = [(m.start(), m.end()) for m in _TOKEN.finditer(text, s, e)]
    return [(toks[i][0], toks[min(i + size, len(toks)) - 1][1]) for i in range(0, len(toks), size)]


def split_text(text: str, size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP) -> list[tuple[int, int]]:
    """Pack whole sentences into spans of at most `size` tokens; each span after the first starts
    with the trailing sentences of the previous one that fit in `overlap` tokens."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size (got size={size}, overlap={overlap})")
    units: list[tuple[int, int, int]] = []  # (start, end, tokens)
    for s, e in _sentences(text):
        n = count_tokens(text[s:e])
        if n <= size:
            units.append((s, e, n))
        else:
            units.extend((a, b, count_tokens(text[a:b])) for a, b in _split_long(text, s, e, size))
    chunks: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        j, total = i, 0
        while j < len(units) and total + units[j][2] <= size:
            total += units[j][2]
            j += 1
        j = max(j, i + 1)
        chunks.append((units[i][0], units[j - 1][1]))
        if j >= len(units):
            break
        # step back over sentences worth at most `overlap` tokens, but always move forward
        back, k = 0, j
        while k - 1 > i and back + units[k - 1][2] <= overlap:
            back += units[k - 1][2]
            k -= 1
        # ...and keep only as much overlap as leaves room for the next new sentence: otherwise the next
        # chunk would be nothing but the overlap, a chunk lying wholly inside this one
        while k < j and back + units[j][2] > size:
            back -= units[k][2]
            k += 1
        i = k
    return chunks


def chunk_record(record: Record, size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP) -> list[Chunk]:
    """All chunks of a record, ids f"{doc_id}-{i}" from 0. Atomic sections stay whole."""
    chunks: list[Chunk] = []
    for section in record.sections:
        spans = [(0, len(section.text))] if section.atomic else split_text(section.text, size, overlap)
        for s, e in spans:
            raw = section.text[s:e]
            text = raw.strip()
            if text:  # the chunk starts where its text does (an atomic section may open with blank lines)
                chunks.append(_make_chunk(record, section, text, s + len(raw) - len(raw.lstrip()), len(chunks)))
    return chunks


def _make_chunk(record: Record, section: Section, text: str, start: int, i: int) -> Chunk:
    meta = {**record.meta, **section.meta}
    if record.title:
        meta.setdefault("title", record.title)
    if "line" in section.meta:  # the line the chunk starts on, not the section's
        meta["line"] = section.meta["line"] + section.text.count("\n", 0, start)
    meta.setdefault("language", detect_language(text))
    return Chunk(f"{record.doc_id}-{i}", record.doc_id, text, section.index_prefix, meta)
