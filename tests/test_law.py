"""picorag.law against the real statutes and case PDFs in shared/data/law, plus synthetic edge cases."""

from __future__ import annotations

import doctest
import json
import re
from functools import cache
from pathlib import Path

import pytest

from picorag import law
from picorag.records import PicoragError, Record

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "law"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared/data/law is not beside the repo")

FILES = {"minfadian": "中华人民共和国民法典", "xianfa": "中华人民共和国宪法", "xingfa": "中华人民共和国刑法"}
# Body line numbers (1-based) where each file's 目录 starts and where the body's first heading repeats its
# first entry, read off the files by hand.
TOC = {"minfadian": (7, 146), "xianfa": (11, 41), "xingfa": (5, 62)}
ARTICLE_LINE = re.compile(r"^\s*第[一二三四五六七八九十百千零〇两0-9]+条")
STRUCTURE_LINE = re.compile(r"^(第[一二三四五六七八九十百0-9]+(分编|编|章|节).{0,30}|附则)$")


@cache
def _text(name: str) -> str:
    return (DATA / "corpus" / f"{name}.txt").read_text(encoding="utf-8")


@cache
def _statute(name: str) -> Record:
    return law.parse_statute(_text(name), name, f"corpus/{name}.txt")


@cache
def _articles(name: str) -> dict[str, law.Section]:
    sections = [s for s in _statute(name).sections if s.atomic]
    labels = [s.meta["article"] for s in sections]
    assert len(labels) == len(set(labels)), "article labels must be unique within a law"
    return dict(zip(labels, sections, strict=True))


def _flat(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_module_example_runs():
    assert doctest.testmod(law).failed == 0


# ---------------------------------------------------------------- real statutes


@needs_data
@pytest.mark.parametrize(
    ("name", "count", "inserted"), [("minfadian", 1260, 0), ("xianfa", 143, 0), ("xingfa", 505, 53)]
)
def test_article_counts(name, count, inserted):
    assert law.is_statute(_text(name))
    record = _statute(name)
    assert record.title == FILES[name]
    articles = _articles(name)
    assert len(articles) == count
    assert sum("之" in label for label in articles) == inserted
    assert all(s.meta["law"] == FILES[name] and s.meta["kind"] == "statute" for s in record.sections)


@needs_data
def test_inserted_article_is_distinct():
    articles = _articles("xingfa")
    base, inserted = articles["第一百三十三条"], articles["第一百三十三条之一"]
    assert base.text.startswith("第一百三十三条 违反交通运输管理法规")
    assert inserted.text.startswith("第一百三十三条之一 在道路上驾驶机动车")
    assert "之一" not in base.text and "醉酒驾驶" in inserted.text
    assert inserted.index_prefix.endswith(" 第一百三十三条之一\n")


@needs_data
def test_continuation_lines_merge_into_their_article():
    article = _articles("xingfa")["第一百三十三条之一"]
    lines = article.text.split("\n")
    assert lines[0].endswith("并处罚金：")
    assert [line[:3] for line in lines[1:5]] == ["（一）", "（二）", "（三）", "（四）"]
    assert "\u3000" not in article.text
    # The xianfa paragraphs are indented with U+3000 and separated by blank lines.
    second = _articles("xianfa")["第二条"]
    assert second.text == (
        "第二条 中华人民共和国的一切权力属于人民。\n"
        "人民行使国家权力的机关是全国人民代表大会和地方各级人民代表大会。\n"
        "人民依照法律规定，通过各种途径和形式，管理国家事务，管理经济和文化事业，管理社会事务。"
    )


@needs_data
@pytest.mark.parametrize(
    ("name", "article", "book", "subbook", "chapter", "section"),
    [
        (
            "xingfa",
            "第一百四十条",
            "第二编 分则",
            "",
            "第三章 破坏社会主义市场经济秩序罪",
            "第一节 生产、销售伪劣商品罪",
        ),
        ("xingfa", "第三百八十二条", "第二编 分则", "", "第八章 贪污贿赂罪", ""),  # new 章 reset the 节
        ("xingfa", "第四百五十二条", "附则", "", "", ""),
        ("minfadian", "第二十条", "第一编 总则", "", "第二章 自然人", "第一节 民事权利能力和民事行为能力"),
        ("minfadian", "第四百六十三条", "第三编 合同", "第一分编 通则", "第一章 一般规定", ""),
        ("minfadian", "第七百零三条", "第三编 合同", "第二分编 典型合同", "第十四章 租赁合同", ""),
        ("minfadian", "第一千一百五十九条", "第六编 继承", "", "第四章 遗产的处理", ""),  # new 编 reset 分编
        ("minfadian", "第一千二百六十条", "附则", "", "", ""),
        ("xianfa", "第一百二十条", "", "", "第三章 国家机构", "第六节 民族自治地方的自治机关"),
        ("xianfa", "第一百四十一条", "", "", "第四章 国旗、国歌、国徽、首都", ""),
    ],
)
def test_hierarchy_meta(name, article, book, subbook, chapter, section):
    meta = _articles(name)[article].meta
    assert (meta["book"], meta["subbook"], meta["chapter"], meta["section"]) == (
        book,
        subbook,
        chapter,
        section,
    )


@needs_data
def test_index_prefix_carries_hierarchy():
    assert _articles("xingfa")["第一百四十条"].index_prefix == (
        "《中华人民共和国刑法》（刑法）第二编 分则 第三章 破坏社会主义市场经济秩序罪 "
        "第一节 生产、销售伪劣商品罪 第一百四十条\n"
    )
    assert _articles("xianfa")["第一条"].index_prefix == "《中华人民共和国宪法》（宪法）第一章 总纲 第一条\n"
    assert {s.meta["short_name"] for name in FILES for s in _statute(name).sections} == {
        "民法典",
        "宪法",
        "刑法",
    }


@needs_data
@pytest.mark.parametrize("name", sorted(FILES))
def test_line_numbers_point_at_the_article_line(name):
    lines = _text(name).split("\n")
    for label, section in _articles(name).items():
        assert lines[section.meta["line"] - 1].strip().startswith(label + "\u3000")


@needs_data
@pytest.mark.parametrize("name", sorted(FILES))
def test_toc_produces_nothing_and_no_text_is_lost(name):
    lines = _text(name).split("\n")
    toc_start, body_start = TOC[name]
    assert _flat(lines[toc_start - 1]) == "目录"
    first_entry = next(_flat(line) for line in lines[toc_start:] if line.strip())
    assert _flat(lines[body_start - 1]) == first_entry  # the body repeats the TOC's first entry
    sections = _statute(name).sections
    assert all(not toc_start <= s.meta["line"] < body_start for s in sections)
    # Everything but the title, the TOC and the 编/分编/章/节/附则 headings ends up in some section, in order.
    title_at = next(i for i, line in enumerate(lines) if line.strip())
    kept = [
        _flat(line)
        for i, line in enumerate(lines)
        if i != title_at and not toc_start - 1 <= i < body_start - 1 and not STRUCTURE_LINE.match(_flat(line))
    ]
    assert "".join(kept) == "".join(_flat(s.text) for s in sections)


@needs_data
def test_blocks_that_are_not_articles_are_kept():
    by_label = {s.meta["article"]: s for name in FILES for s in _statute(name).sections if not s.atomic}
    assert sorted(by_label) == ["序言", "附件一", "附件二", "题注"]  # 题注 twice (民法典, 宪法)
    preamble = by_label["序言"]
    assert preamble.meta["law"] == "中华人民共和国宪法" and preamble.meta["line"] == 41
    assert preamble.text.startswith("序言\n中国是世界上历史最悠久的国家之一。")
    assert preamble.text.endswith("维护宪法尊严、保证宪法实施的职责。")
    assert preamble.index_prefix == "《中华人民共和国宪法》（宪法）序言\n"
    notes = [s for s in _statute("minfadian").sections if s.meta["article"] == "题注"]
    assert [s.text for s in notes] == ["（2020年5月28日第十三届全国人民代表大会第三次会议通过）"]
    # The appendix list follows the last article but is not part of it.
    assert "1.中华人民共和国惩治军人违反职责罪暂行条例" in by_label["附件一"].text
    last = _articles("xingfa")["第四百五十二条"].text.split("\n")
    assert len(last) == 3 and last[-1].endswith("适用本法规定。")


@needs_data
@pytest.mark.parametrize("eval_file", ["law_eval_set.jsonl", "law_eval_set_example.jsonl"])
def test_every_gold_article_exists_exactly_once(eval_file):
    by_law = {FILES[name]: name for name in FILES}
    rows = [json.loads(line) for line in (DATA / "eval" / eval_file).read_text(encoding="utf-8").splitlines()]
    assert rows
    for row in rows:
        gold = row["gold"]
        sections = _statute(by_law[gold["law"]]).sections
        hits = [s for s in sections if s.meta["law"] == gold["law"] and s.meta["article"] == gold["article"]]
        assert len(hits) == 1, row["sample_id"]


# ---------------------------------------------------------------- synthetic statutes

SYNTHETIC = """\ufeff中华人民共和国 示例法\r
\r
目\u3000\u3000录\r
第一编\u3000总\u3000\u3000则\r
第一章\u3000一般规定\r
\u3000\u3000第一节\u3000定\u3000\u3000义\r
第二编\u3000分\u3000\u3000则\r
附\u3000\u3000则\r
\r
第一编\u3000总\u3000\u3000则\r
第一章\u3000一般规定\r
第一节\u3000定\u3000\u3000义\r
第一条\u3000为了示例，制定本法。\r
\u3000\u3000有下列情形之一的，适用本法：\r
\u3000\u3000（一）第一项；\r
\u3000\u3000（二）第二项。\r
第二条规定的情形，不受第一条限制。\r
第二章\u3000效\u3000\u3000力\r
第二条\u3000本法第一条\u3000所称示例，是指……\r
第二条之一\u3000插入的条文。\r
第二编\u3000分\u3000\u3000则\r
第三条\r
分则的条文另起一行。\r
附\u3000\u3000则\r
第四条\u3000本法自公布之日起施行。\r
"""


def test_synthetic_statute_structure():
    assert law.is_statute(SYNTHETIC)
    record = law.parse_statute(SYNTHETIC, "demo", "demo.txt")
    assert record.title == "中华人民共和国示例法" and record.meta["short_name"] == "示例法"
    by_label = {s.meta["article"]: s for s in record.sections}
    assert list(by_label) == ["第一条", "第二条", "第二条之一", "第三条", "第四条"]  # TOC made nothing
    first = by_label["第一条"]
    # "第二条规定的…" has no separator after the label: a paragraph of 第一条, not a second 第二条.
    assert first.text.split("\n") == [
        "第一条 为了示例，制定本法。",
        "有下列情形之一的，适用本法：",
        "（一）第一项；",
        "（二）第二项。",
        "第二条规定的情形，不受第一条限制。",
    ]
    assert (first.meta["book"], first.meta["chapter"], first.meta["section"]) == (
        "第一编 总则",
        "第一章 一般规定",
        "第一节 定义",
    )
    assert first.meta["line"] == 13 and first.atomic
    assert by_label["第二条"].meta["section"] == ""  # a new 章 resets the 节
    assert by_label["第二条"].text == "第二条 本法第一条 所称示例，是指……"
    assert by_label["第二条之一"].meta["chapter"] == "第二章 效力"
    assert by_label["第三条"].text == "第三条\n分则的条文另起一行。"
    assert (by_label["第三条"].meta["book"], by_label["第三条"].meta["chapter"]) == ("第二编 分则", "")
    assert by_label["第四条"].meta["book"] == "附则"
    assert by_label["第四条"].index_prefix == "《中华人民共和国示例法》（示例法）附则 第四条\n"


def test_synthetic_without_books_preamble_and_toc_fallback():
    text = (
        "中华人民共和国示例法\n目录\n序　言\n第一章　总纲\n\n序　　言\n\n　　序言的第一段。\n\n第一章　总纲\n"
        "　　第一条　第一条的正文。\n附　　则\n第二条　附则的条文。\n"
    )
    sections = law.parse_statute(text, "d", "d.txt").sections
    assert [(s.meta["article"], s.atomic) for s in sections] == [
        ("序言", False),
        ("第一条", True),
        ("第二条", True),
    ]
    assert sections[0].text == "序言\n序言的第一段。" and sections[0].meta["line"] == 6
    assert (
        sections[2].meta["chapter"] == "附则" and sections[2].meta["book"] == ""
    )  # 附则 at the top level used
    # A TOC whose first entry never repeats: its headings only set state the body overwrites; its 序言 entry,
    # holding no text, is dropped.
    text = "中华人民共和国示例法\n目录\n序言\n第一章　总纲\n第二章　杂项\n第一章　总纲\n第一条　正文。\n"
    sections = law.parse_statute(text, "d", "d.txt").sections
    assert [(s.meta["article"], s.meta["chapter"]) for s in sections] == [("第一条", "第一章 总纲")]


@pytest.mark.parametrize(
    "text",
    [
        "今天天气很好，我们去公园散步。\n第一条小路通向湖边。\n",
        "The quick brown fox.\nArticle 1 Everyone has the right to life.\n",
        "中华人民共和国刑法\n\n这是一篇介绍刑法的文章，没有条文。\n",  # a title but no article line
        "关于中华人民共和国刑法的学习笔记\n第一条　记笔记。\n",  # not a law title
        "",
    ],
)
def test_is_statute_rejects_other_text(text):
    assert not law.is_statute(text)


def test_parse_statute_rejects_text_without_articles():
    with pytest.raises(PicoragError):
        law.parse_statute("中华人民共和国刑法\n没有条文。\n", "d", "d.txt")


# ---------------------------------------------------------------- case PDFs


def _pages(path: Path) -> list[str]:
    from pypdf import PdfReader

    return [page.extract_text() for page in PdfReader(path).pages]


CASES = sorted((DATA / "cases").glob("*.pdf")) if DATA.is_dir() else []


@needs_data
@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_case_pdf_sections(path):
    pages = _pages(path)
    assert law.is_case_pdf(pages)
    record = law.parse_case(pages, "case", str(path))
    assert record.title == path.stem
    assert re.fullmatch(r"\d{4}-\d{2}-\d-\d{3}-\d{3}", record.meta["case_no"])
    headings = [s.meta["heading"] for s in record.sections]
    assert headings == ["标题", *law.CASE_HEADINGS]
    for section in record.sections:
        assert law.WATERMARK not in section.text and "页" not in section.text[:4]
        assert section.meta["case"] == record.title and section.meta["kind"] == "case" and not section.atomic
        assert 1 <= section.meta["page_start"] <= section.meta["page_end"] <= len(pages)
        assert section.index_prefix == f"《{record.title}》{section.meta['heading']}\n"
    starts = [s.meta["page_start"] for s in record.sections]
    assert starts == sorted(starts) and record.sections[-1].meta["page_end"] == len(pages)
    by_heading = {s.meta["heading"]: s for s in record.sections}
    assert by_heading["标题"].text.split("\n")[1] == record.title
    assert by_heading["关联索引"].text.startswith("《中华人民共和国")
    # No text lost: every non-watermark character of every page is in some heading or section, in order.
    expected = "".join(
        _flat(line)
        for page in pages
        for line in page.split("\n")
        if line.strip() != law.WATERMARK and not re.match(r"^第 \d+ 页", line)
    )
    got = "".join(
        _flat(("" if s.meta["heading"] == "标题" else s.meta["heading"]) + s.text) for s in record.sections
    )
    assert got == expected


@needs_data
def test_case_page_ranges_and_line_joining():
    pages = _pages(DATA / "cases" / "沈某帅盗窃、王某抢劫案.pdf")
    by_heading = {s.meta["heading"]: s for s in law.parse_case(pages, "c", "c.pdf").sections}
    spans = {h: (s.meta["page_start"], s.meta["page_end"]) for h, s in by_heading.items()}
    assert spans == {
        "标题": (1, 1),
        "关键词": (1, 1),
        "基本案情": (1, 2),
        "裁判理由": (2, 3),
        "裁判要旨": (3, 3),
        "关联索引": (3, 3),
    }
    # Lines wrapped by the layout are joined; "共同\n犯罪故意" is one keyword.
    assert by_heading["关键词"].text == "刑事 盗窃罪 抢劫罪 入户盗窃 转化型抢劫 实行过限 共同犯罪故意"
    # Short lines end paragraphs.
    assert "沈某帅被抓获。\n被告人沈某帅还有其他盗窃行为。\n考虑到" in by_heading["基本案情"].text


def test_synthetic_case_pages():
    pages = [
        "第 1 页人民法院案例库\n人民法院案例库\n某某诉某某合同纠纷案\n关键词 民事 合同\n基本案情\n事实。",
        "第 2 页人民法院案例库\n人民法院案例库\n裁判理由\n理由。\n裁判要旨\n要旨。\n"
        "关联索引\n《中华人民共和国民法典》第1条",
    ]
    assert law.is_case_pdf(pages)
    record = law.parse_case(pages, "c", "cases/fallback-name.pdf")
    assert record.title == "某某诉某某合同纠纷案" and record.meta["case_no"] == ""
    assert [(s.meta["heading"], s.text) for s in record.sections] == [
        ("标题", "某某诉某某合同纠纷案"),
        ("关键词", "民事 合同"),
        ("基本案情", "事实。"),
        ("裁判理由", "理由。"),
        ("裁判要旨", "要旨。"),
        ("关联索引", "《中华人民共和国民法典》第1条"),
    ]
    # No title line before the first heading: the file name stands in.
    assert law.parse_case(["人民法院案例库\n基本案情\n事实。"], "c", "cases/名称案.pdf").title == "名称案"


def test_is_case_pdf_needs_the_watermark_on_most_pages():
    assert not law.is_case_pdf([])
    assert not law.is_case_pdf(["普通文档第一页", "第二页", "人民法院案例库"])
    assert law.is_case_pdf(["人民法院案例库\n正文", "人民法院案例库\n正文", "附录"])
    with pytest.raises(PicoragError):
        law.parse_case(["人民法院案例库\n人民法院案例库", "第 2 页人民法院案例库"], "c", "c.pdf")
