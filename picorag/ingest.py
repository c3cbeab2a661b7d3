"""Files -> Records. One reader per input kind; `read_paths` walks paths and dispatches.

Kinds: JSONL (nanochat `{"id","title","content","source"}` or BEIR `{"_id","title","text"}`,
optionally gzipped), .txt and .md (Chinese statutes detected and parsed by article), .pdf (court-case
PDFs split by heading, others by page), .pptx (by slide). A record's own id is its doc_id verbatim;
a file's doc_id is its path relative to the working directory, so the same input gives the same ids.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"
>>> _ = p.write_text('{"_id": "d1", "title": "T", "text": "Hello."}\\n')
>>> [(r.doc_id, r.title, r.sections[0].text) for r in read_paths([p])]
[('d1', 'T', 'Hello.')]
"""

from __future__ import annotations

import contextvars
import gzip
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import law
from .records import PicoragError, Record, Section

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".jsonl.gz", ".pdf", ".pptx"}
Warn = Callable[[str], None]


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".jsonl.gz" if name.endswith(".jsonl.gz") else path.suffix.lower()


ID_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("ID_ROOT", default=None)


def max_document_bytes() -> int:
    """The largest text file or JSONL line read as one document (PICORAG_MAX_DOCUMENT_MB, default 32):
    a bigger one is refused up front instead of taking gigabytes to chunk (about 17x its size)."""
    try:
        return int(float(os.environ.get("PICORAG_MAX_DOCUMENT_MB", "32")) * 1024 * 1024)
    except ValueError:
        raise PicoragError("PICORAG_MAX_DOCUMENT_MB must be a number of megabytes") from None


def _too_big(where: str, size: int | None, limit: int) -> PicoragError:
    what = f"a document of {size / 2**20:.0f} MB" if size else "a line"
    return PicoragError(f"{where}: {what} over the {limit / 2**20:.0f} MB limit per document; split it "
                        "(e.g. one JSONL record per section) or raise PICORAG_MAX_DOCUMENT_MB")


def path_id(path: Path) -> str:
    """Stable id for a file: its path relative to the working directory (absolute when outside), or
    relative to ID_ROOT when a caller sets it (the server names uploads after the file alone)."""
    p = Path(os.path.abspath(path))
    try:
        return p.relative_to(ID_ROOT.get() or Path.cwd()).as_posix()
    except ValueError:
        return p.as_posix()


def list_files(paths: Iterable[str | Path], warn: Warn) -> list[Path]:
    """Expand directories (recursively, sorted for stable order); warn about what will be skipped."""
    files: list[Path] = []
    skipped: list[str] = []
    links: list[str] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            if p.is_symlink():
                raise PicoragError(f"input {p} is a broken symbolic link (its target is missing, or it loops)")
            raise PicoragError(f"input not found: {p}")
        if p.is_dir():  # hidden files and everything under hidden folders (.git, .venv) are skipped
            root = p.resolve()
            found = []
            # rglob does not descend into linked directories (no loops); a linked file is read only when
            # it stays inside the directory given, so a link cannot pull in files from elsewhere unseen
            for q in sorted(p.rglob("*")):
                if any(x.startswith(".") for x in q.relative_to(p).parts):
                    continue
                if q.is_symlink():
                    try:
                        target = q.resolve(strict=True)
                    except (OSError, RuntimeError):
                        links.append(f"{q} (broken or a loop)")
                        continue
                    if not target.is_relative_to(root):
                        links.append(f"{q} -> {target}")
                        continue
                if q.is_file():
                    found.append(q)
        else:
            found = [p]
        for q in found:
            if suffix_of(q) in SUFFIXES:
                files.append(q)
            else:
                skipped.append(str(q))
    if links:
        warn(f"skipped {len(links)} symbolic link(s) leading outside the input directory or broken: "
             + ", ".join(links[:5]) + (f" and {len(links) - 5} more" if len(links) > 5 else ""))
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warn(f"skipped {len(skipped)} file(s) of unsupported type: {shown}")
    return files


def read_paths(paths: Iterable[str | Path], warn: Warn | None = None) -> Iterator[Record]:
    """Every record found under `paths`, in a stable order."""
    warn = warn or (lambda msg: None)
    for f in list_files(paths, warn):
        yield from read_file(f, warn)


def read_file(path: Path, warn: Warn) -> Iterator[Record]:
    kind = suffix_of(path)
    if kind in (".jsonl", ".jsonl.gz"):
        yield from read_jsonl(path)
    elif kind == ".pdf":
        yield from read_pdf(path, warn)
    elif kind == ".pptx":
        yield from read_pptx(path, warn)
    else:
        yield from read_text(path, warn)


# -- JSONL ---------------------------------------------------------------------------------------

_RESERVED = {"id", "_id", "title", "content", "text"}


def read_jsonl(path: Path) -> Iterator[Record]:
    opener = gzip.open if suffix_of(path) == ".jsonl.gz" else open
    pid = path_id(path)
    try:
        limit = max_document_bytes()
        with opener(path, "rb") as f:  # bytes, decoded per line, so a bad byte is reported with its line
            # readline(limit + 1): a giant line is refused after reading `limit` bytes, not all of it
            for lineno, raw in enumerate(iter(lambda: f.readline(limit + 1), b""), 1):
                if len(raw) > limit:
                    raise _too_big(f"{path}:{lineno}", None, limit)
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a leading BOM is fine
                except UnicodeDecodeError as e:
                    raise PicoragError(
                        f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start} of the line); JSONL must be UTF-8"
                    ) from None
                if line.strip():
                    yield _jsonl_record(line, f"{path}:{lineno}", pid, lineno)
    except (OSError, EOFError, zlib.error) as e:  # gzip: BadGzipFile is an OSError; corrupt data is a zlib.error
        raise PicoragError(f"{path}: cannot read ({e})") from None


def json_object(line: str, where: str) -> dict[str, Any]:
    """One JSONL line as a dict, or a PicoragError naming `where` (file:line)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise PicoragError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise PicoragError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _jsonl_record(line: str, where: str, pid: str, lineno: int) -> Record:
    obj = json_object(line, where)
    text = obj.get("content", obj.get("text"))
    if not isinstance(text, str):
        raise PicoragError(f"{where}: record needs a string 'content' or 'text' field")
    raw_id = obj.get("id", obj.get("_id"))
    if raw_id is None:
        doc_id = f"{pid}:{lineno}"
    elif isinstance(raw_id, str | int) and not isinstance(raw_id, bool) and str(raw_id).strip():
        doc_id = str(raw_id)
    else:
        raise PicoragError(f"{where}: 'id' must be a non-empty string or integer")
    title = obj.get("title")
    title = "" if title is None else title
    if not isinstance(title, str):
        raise PicoragError(f"{where}: 'title' must be a string")
    meta: dict[str, Any] = {k: v for k, v in obj.items() if k not in _RESERVED}
    if isinstance(meta.get("metadata"), dict):  # BEIR keeps extra fields under "metadata"; other values stay as-is
        nested = meta.pop("metadata")
        meta = {**nested, **meta}
    meta["source_path"] = pid
    meta["line"] = lineno
    prefix = f"{title}\n" if title else ""
    return Record(doc_id, title, [Section(text, {}, prefix)], meta)


# -- text and markdown ---------------------------------------------------------------------------


def decode_text(data: bytes, path: Path) -> str:
    """UTF-8 (with or without BOM) first; otherwise the encoding charset-normalizer finds."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    from charset_normalizer import from_bytes

    matches = None if b"\x00" in data else from_bytes(data)  # NUL bytes: binary, not text
    best = matches.best() if matches else None
    if best is None:
        raise PicoragError(f"{path}: not UTF-8 and no other text encoding fits; convert it to UTF-8")
    # Short GBK text scores as well under cp949 or big5 as under GB18030 (a tie, decided arbitrarily):
    # a tie goes to GB18030 (a superset of GBK) when that reading is common simplified Chinese.
    gb = next((m for m in matches if m.encoding == "gb18030" and m.chaos <= best.chaos), None)
    return str(gb) if gb is not None and _mostly_gb2312(str(gb)) else str(best)


def _mostly_gb2312(text: str) -> bool:
    """True when at least 90% of the non-ASCII characters are in GB2312 (2 bytes each there)."""
    wide = "".join(c for c in text if c > "\x7f")
    return len(wide.encode("gb2312", "ignore")) // 2 >= 0.9 * len(wide)


_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)  # [ \t]: never across a line break
_MD_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.M)


def _md_headings(text: str) -> list[re.Match[str]]:
    """ATX headings outside fenced code blocks (a `# comment` in a ``` block is code, not a heading)."""
    fenced: list[tuple[int, int]] = []
    opened: re.Match[str] | None = None
    for m in _MD_FENCE.finditer(text):
        if opened is None:
            opened = m
        elif m.group(1)[0] == opened.group(1)[0] and len(m.group(1)) >= len(opened.group(1)):
            fenced.append((opened.start(), m.end()))
            opened = None
    if opened is not None:  # an unclosed fence runs to the end of the document
        fenced.append((opened.start(), len(text)))
    return [h for h in _MD_HEADING.finditer(text) if not any(s <= h.start() < e for s, e in fenced)]


def read_text(path: Path, warn: Warn) -> Iterator[Record]:
    try:
        if (size := path.stat().st_size) > (limit := max_document_bytes()):
            raise _too_big(str(path), size, limit)
        text = decode_text(path.read_bytes(), path).replace("\r\n", "\n").replace("\r", "\n")
    except OSError as e:
        raise PicoragError(f"{path}: cannot read ({e.strerror})") from None
    pid = path_id(path)
    if law.is_statute(text):
        yield law.parse_statute(text, pid, pid)
        return
    if not text.strip():
        warn(f"{path}: empty, skipped")
        return
    meta = {"source_path": pid}
    if suffix_of(path) == ".txt":
        title = path.stem
        yield Record(pid, title, [Section(text, {"line": 1}, f"{title}\n")], meta)
        return
    # Markdown: one section per heading, so chunks carry the heading they sit under.
    heads = _md_headings(text)
    title = next((m.group(2) for m in heads if len(m.group(1)) == 1), path.stem)
    bounds = [0] + [m.start() for m in heads] + [len(text)]
    heading_at = {m.start(): m.group(2) for m in heads}
    sections = []
    for s, e in zip(bounds, bounds[1:], strict=False):
        if not text[s:e].strip():
            continue
        heading = heading_at.get(s, "")
        sec_meta = {"line": text.count("\n", 0, s) + 1, **({"heading": heading} if heading else {})}
        prefix = f"{title}\n" + (f"{heading}\n" if heading and heading != title else "")
        sections.append(Section(text[s:e], sec_meta, prefix))
    yield Record(pid, title, sections, meta)


# -- PDF and PPTX --------------------------------------------------------------------------------


def pdf_pages(path: Path) -> list[str]:
    """Text of each page; encrypted or broken PDFs raise a one-line PicoragError."""
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise PicoragError(f"{path}: PDF is encrypted (password protected); decrypt it first")
        return [page.extract_text() or "" for page in reader.pages]
    except PicoragError:
        raise
    except (PdfReadError, OSError, ValueError, KeyError, TypeError) as e:
        raise PicoragError(f"{path}: unreadable PDF ({type(e).__name__}: {e})") from None
    except Exception as e:  # pypdf raises many internal types on corrupt files
        if type(e).__module__.startswith("pypdf") or "crypt" in str(e).lower():
            raise PicoragError(f"{path}: unreadable PDF ({type(e).__name__}: {e})") from None
        raise


def read_pdf(path: Path, warn: Warn) -> Iterator[Record]:
    pages = pdf_pages(path)
    pid = path_id(path)
    if not any(p.strip() for p in pages):
        warn(f"{path}: no text layer (scanned PDF?), skipped")
        return
    if law.is_case_pdf(pages):
        yield law.parse_case(pages, pid, pid)
        return
    title = path.stem
    sections = [Section(t, {"page": i}, f"{title}\n") for i, t in enumerate(pages, 1) if t.strip()]
    yield Record(pid, title, sections, {"source_path": pid})


def read_pptx(path: Path, warn: Warn) -> Iterator[Record]:
    from pptx import Presentation

    try:
        deck = Presentation(str(path))
    except Exception as e:  # python-pptx raises zipfile/KeyError/lxml errors on bad files
        raise PicoragError(f"{path}: unreadable PPTX ({type(e).__name__})") from None
    pid = path_id(path)
    title = path.stem
    sections = []
    for i, slide in enumerate(deck.slides, 1):
        texts = [sh.text_frame.text for sh in slide.shapes if sh.has_text_frame and sh.text_frame.text.strip()]
        if texts:
            sections.append(Section("\n".join(texts), {"slide": i}, f"{title}\n"))
    if not sections:
        warn(f"{path}: no text on any slide, skipped")
        return
    yield Record(pid, title, sections, {"source_path": pid})
