"""Chinese legal sources: statutes split one section per article, 人民法院案例库 case PDFs split by heading.

Statutes (a `中华人民共和国…法` title line, `第…编/分编/章/节` headings,
`第…条` / `第…条之一` articles) become one atomic Section per article. Its meta carries the
hierarchy and the verbatim article label; its index_prefix (`《law》（short）编 分编 章 节 条`)
is indexed but never displayed. Case PDFs lose the page-number header and the repeated
watermark and are split at 关键词, 基本案情, 裁判理由, 裁判要旨 and 关联索引, keeping page ranges.

>>> text = "中华人民共和国示例法\\n第一章　总　　则\\n第一条　为了示例，制定本法。\\n　　（一）第一项；\\n"
>>> is_statute(text)
True
>>> art = parse_statute(text, "demo", "demo.txt").sections[0]
>>> art.text
'第一条 为了示例，制定本法。\\n（一）第一项；'
>>> art.index_prefix
'《中华人民共和国示例法》（示例法）第一章 总则 第一条\\n'
>>> art.meta["chapter"], art.meta["article"], art.meta["line"]
('第一章 总则', '第一条', 3)
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path
from typing import Any

from .records import PicoragError, Record, Section

__all__ = ["CASE_HEADINGS", "is_case_pdf", "is_statute", "parse_case", "parse_statute"]

_NUM = "[一二三四五六七八九十百千零〇两0-9]+"
# The label must be followed by whitespace (the corpus uses U+3000), a colon or the line end: a paragraph that
# merely starts by citing "第五条规定的…" must not open a new article and duplicate a label.
_ARTICLE = re.compile(rf"^(第{_NUM}条(?:之{_NUM})?)(?:[\s：:]+|$)")
_ARTICLE_ANYWHERE = re.compile(rf"^\s*第{_NUM}条(?:之{_NUM})?(?:[\s：:]|$)", re.MULTILINE)
_HEADING = re.compile(rf"^(第{_NUM}(?:分编|编|章|节))(.*)$")
_LEVEL_OF = {"编": "book", "分编": "subbook", "章": "chapter", "节": "section"}
_LEVELS = ("book", "subbook", "chapter", "section")
_TITLE = re.compile(r"^中华人民共和国[\u4e00-\u9fff、]{0,40}?(?:法典|宪法|法|条例)$")
_CJK_GAP = re.compile(r"(?<=[\u4e00-\u9fff])\s+(?=[\u4e00-\u9fff])")
_APPENDIX = re.compile(rf"^附件{_NUM}?$")


def _flat(line: str) -> str:
    """All whitespace (U+3000 included: str's \\s covers it) removed, for comparing headings."""
    return re.sub(r"\s+", "", line)


def _clean(line: str) -> str:
    """Body text as displayed: indentation gone, any inner run of (full-width) spaces is one normal space."""
    return re.sub(r"\s+", " ", line.strip())


def _title_of(text: str) -> str | None:
    for line in text.lstrip("\ufeff").split("\n"):
        if line.strip():
            return _CJK_GAP.sub("", line.strip())
    return None


def is_statute(text: str) -> bool:
    """True when the first non-blank line is a PRC law title and some line starts with an article label."""
    title = _title_of(text)
    return bool(title and _TITLE.match(title) and _ARTICLE_ANYWHERE.search(text))


def _toc_lines(lines: list[str], start: int, end: int) -> range:
    """Line indexes of the 目录 block: from `目录` up to where its first entry reappears as a real heading.

    The TOC lists 编/章/节 only, so its first entry (第一编…, 第一章… or 序言) is printed again where the body
    starts. Without that repeat only the `目录` line is dropped; TOC headings then merely set state that the
    body's own headings overwrite before any article is reached.
    """
    toc = next((i for i in range(start, end) if _flat(lines[i]) == "目录"), None)
    if toc is None:
        return range(0)
    entries = [i for i in range(toc + 1, end) if _flat(lines[i])]
    for i in entries[1:]:
        if _flat(lines[i]) == _flat(lines[entries[0]]):
            return range(toc, i)
    return range(toc, toc + 1)


def _heading(line: str) -> tuple[str, str] | None:
    """(level, normalised heading) for a structure line, else None. Level is a meta key or a pseudo block."""
    flat = _flat(line)
    # Headings are short labels; a sentence that happens to start with 第X章 is body text.
    if len(flat) > 40 or any(p in flat for p in "。；，"):
        return None
    if m := _HEADING.match(flat):
        label = m.group(1)
        return _LEVEL_OF["分编" if label.endswith("分编") else label[-1]], f"{label} {m.group(2)}".strip()
    if flat == "附则":
        return "附则", flat
    if flat == "序言" or _APPENDIX.match(flat):
        return "block", flat
    return None


def parse_statute(text: str, doc_id: str, source_path: str) -> Record:
    """Split a statute into one atomic Section per article (see module docstring for the meta it carries).

    Text that is not an article is kept too, in non-atomic sections whose `article` names the block:
    `题注` (adoption note between title and 目录), `序言` (preamble), `附件一`… (appendices), or "" for
    stray text under a heading. The 目录 itself produces nothing.
    """
    lines = [line.rstrip("\r") for line in text.lstrip("\ufeff").split("\n")]
    title_at = next((i for i, line in enumerate(lines) if line.strip()), None)
    first_article = next((i for i, line in enumerate(lines) if _ARTICLE.match(line.strip())), None)
    if title_at is None or first_article is None:
        raise PicoragError(f"{source_path}: not a statute (no title line or no 第…条 article line)")
    law = _CJK_GAP.sub("", lines[title_at].strip())
    short = law.removeprefix("中华人民共和国") or law
    head = f"《{law}》" + (f"（{short}）" if short != law else "")
    toc = _toc_lines(lines, title_at + 1, first_article)

    levels = dict.fromkeys(_LEVELS, "")
    sections: list[Section] = []
    cur: dict[str, Any] | None = None  # the open block: label, line, atomic, levels, body lines
    seen_structure = False  # a heading or article has been seen: stray text is no longer the 题注

    def flush() -> None:
        # A pseudo block holding only its own label (e.g. a 序言 entry left in a TOC) is not content.
        if cur is None or (not cur["atomic"] and cur["body"] == [cur["label"]]):
            return
        hierarchy = [cur["levels"][k] for k in _LEVELS if cur["levels"][k]]
        meta = {
            "law": law,
            "short_name": short,
            **cur["levels"],
            "article": cur["label"],
            "source_path": source_path,
            "line": cur["line"],
            "language": "zh",
            "kind": "statute",
        }
        prefix = head + " ".join([*hierarchy, cur["label"]]).rstrip() + "\n"
        sections.append(Section("\n".join(cur["body"]), meta, prefix, atomic=cur["atomic"]))

    for i in range(title_at + 1, len(lines)):
        stripped = lines[i].strip()
        if i in toc or not stripped:
            continue
        if m := _ARTICLE.match(stripped):
            flush()
            label, rest = m.group(1), _clean(stripped[m.end() :])
            body = f"{label} {rest}" if rest else label
            cur = {"label": label, "line": i + 1, "atomic": True, "levels": dict(levels), "body": [body]}
            seen_structure = True
            continue
        if found := _heading(stripped):
            flush()
            cur, seen_structure = None, True
            level, name = found
            if level == "附则":
                # 附则 closes the whole code: a peer of the 编 in codes that have them, else of the 章.
                level = "book" if levels["book"] else "chapter"
            if level == "block":
                levels = dict.fromkeys(_LEVELS, "")
                cur = {"label": name, "line": i + 1, "atomic": False, "levels": dict(levels), "body": [name]}
                continue
            # A heading clears itself and every level below it (a new 编 resets 分编, 章 and 节).
            for k in _LEVELS[_LEVELS.index(level) :]:
                levels[k] = ""
            levels[level] = name
            continue
        if cur is None:
            label = "" if seen_structure else "题注"
            cur = {"label": label, "line": i + 1, "atomic": False, "levels": dict(levels), "body": []}
        cur["body"].append(_clean(stripped))
    flush()
    meta = {"source_path": source_path, "law": law, "short_name": short, "language": "zh", "kind": "statute"}
    return Record(doc_id, law, sections, meta)


# ---------------------------------------------------------------- court cases (人民法院案例库)

WATERMARK = "人民法院案例库"
CASE_HEADINGS = ("关键词", "基本案情", "裁判理由", "裁判要旨", "关联索引")
_PAGE_HEADER = re.compile(rf"^第\s*\d+\s*页\s*(?:{WATERMARK})?$")
_CASE_NO = re.compile(r"^\d{4}-\d{2}-\d+-\d+-\d+$")  # 入库编号, e.g. 2026-05-1-221-001


def is_case_pdf(pages: list[str]) -> bool:
    """True when the 人民法院案例库 watermark is printed on at least half of the pages."""
    marked = sum(WATERMARK in page for page in pages)
    return bool(pages) and marked >= math.ceil(len(pages) / 2)


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _case_lines(pages: list[str]) -> list[tuple[int, str, bool]]:
    """(page, line, ends_paragraph) for every content line, watermark and `第 N 页` header removed.

    The PDF wraps text at a fixed width, so a line that ends well short of the widest line (or that pypdf
    ends with a space) closes a paragraph; other line breaks are layout only and are joined without a space.
    """
    kept: list[tuple[int, str, bool]] = []
    for page_no, page in enumerate(pages, start=1):
        for raw in page.split("\n"):
            line = raw.strip()
            if line and line != WATERMARK and not _PAGE_HEADER.match(line):
                kept.append((page_no, line, raw != raw.rstrip()))
    full = max((_width(line) for _, line, _ in kept), default=0)
    return [(p, line, spaced or _width(line) < 0.8 * full) for p, line, spaced in kept]


def _join(lines: list[tuple[int, str, bool]]) -> str:
    out: list[str] = []
    for k, (_, line, _) in enumerate(lines):
        if k:
            out.append("\n" if lines[k - 1][2] else "")
        out.append(line)
    return "".join(out)


def _case_heading(line: str, seen: set[str]) -> tuple[str, str] | None:
    """(heading, text after it on the same line) when `line` opens a section; each heading counts once."""
    for name in CASE_HEADINGS:
        if name not in seen and (line == name or (line.startswith(name) and line[len(name)].isspace())):
            return name, line[len(name) :].strip()
    return None


def parse_case(pages: list[str], doc_id: str, source_path: str) -> Record:
    """Split a 人民法院案例库 case into sections by heading; the text before 关键词 becomes section `标题`."""
    blocks: list[tuple[str, list[tuple[int, str, bool]]]] = [("标题", [])]
    seen: set[str] = set()
    for page_no, line, ends in _case_lines(pages):
        if found := _case_heading(line, seen):
            heading, line = found  # 关键词 carries its keywords on the heading line itself
            seen.add(heading)
            # An empty marker entry: the heading's own page starts the range even if its body starts later.
            blocks.append((heading, [(page_no, "", False)]))
        if line:
            blocks[-1][1].append((page_no, line, ends))
    if not any(line for _, body in blocks for _, line, _ in body):
        raise PicoragError(f"{source_path}: no text in case PDF (scanned without a text layer?)")

    preamble = [line for _, line, _ in blocks[0][1]]
    case_no = preamble[0] if preamble and _CASE_NO.match(preamble[0]) else ""
    title_lines = []
    for line in preamble[1 if case_no else 0 :]:
        if line.startswith("——"):  # the subtitle (the case's thesis) follows the title
            break
        title_lines.append(line)
    title = "".join(title_lines)
    if not title or len(title) > 80:
        title = Path(source_path).stem

    sections = []
    for heading, body in blocks:
        content = [entry for entry in body if entry[1]]
        if not content:
            continue
        meta = {
            "case": title,
            "heading": heading,
            "page_start": body[0][0],
            "page_end": body[-1][0],
            "source_path": source_path,
            "language": "zh",
            "kind": "case",
        }
        sections.append(Section(_join(content), meta, f"《{title}》{heading}\n", atomic=False))
    meta = {"source_path": source_path, "case": title, "case_no": case_no, "language": "zh", "kind": "case"}
    return Record(doc_id, title, sections, meta)
