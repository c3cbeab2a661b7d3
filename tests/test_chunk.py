"""picorag.chunk: token counting, sentence- and CJK-aware splitting with overlap, chunk ids and metadata."""

from __future__ import annotations

import doctest
import re

import pytest

from picorag import chunk
from picorag.chunk import chunk_record, count_tokens, split_text
from picorag.records import Record, Section

ENGLISH = (
    "Retrieval-augmented generation combines search with a language model. The retriever finds passages! "
    "Does the reader cite them? It should; citations build trust.\n\n"
    "A second paragraph starts here. It has three sentences. This is the third one.\n"
    "- a list item without a full stop\n"
    "- another item\n"
    "1. a numbered item\n"
    "Version 3.14 is not a sentence end, and neither is e.g.this."
)
CHINESE = (
    "中华人民共和国是工人阶级领导的、以工农联盟为基础的人民民主专政的社会主义国家。"
    "社会主义制度是中华人民共和国的根本制度！禁止任何组织或者个人破坏社会主义制度？"
    "他说：“这是引号里的句子。”然后继续；"
    "全国人民代表大会是最高国家权力机关\n\n"
    "第二段没有句号但是很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长"
)
MIXED = "用Python写RAG系统很简单。BM25 is a ranking function; 它在搜索引擎里很常见。Dense retrieval uses embeddings."
TEXTS = {"english": ENGLISH, "chinese": CHINESE, "mixed": MIXED}
SENTENCE_END = re.compile(r"[.!?;。！？；”]$")


def test_module_example_runs():
    assert doctest.testmod(chunk).failed == 0


# -- counting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("", 0),
        ("   \n\t ", 0),
        ("one", 1),
        ("one two  three\nfour", 4),
        ("don't stop-words count once.", 4),
        ("中华人民共和国", 7),
        ("用Python写RAG系统", 6),  # 用 Python 写 RAG 系 统
        ("第133条", 3),  # 第 133 条
        ("你好，世界。", 6),  # full-width punctuation is not CJK: a token of its own
    ],
)
def test_count_tokens(text, n):
    assert count_tokens(text) == n


# -- split_text ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEXTS)
@pytest.mark.parametrize(("size", "overlap"), [(1, 0), (3, 1), (5, 0), (8, 4), (12, 3), (40, 10), (500, 32)])
def test_split_text_invariants(name, size, overlap):
    text = TEXTS[name]
    spans = split_text(text, size, overlap)
    assert spans, "non-empty text gives at least one chunk"
    for s, e in spans:
        piece = text[s:e]
        assert 0 <= s < e <= len(text)
        assert piece == piece.strip(), "chunks start and end on text, not whitespace"
        assert count_tokens(piece) <= size
    # chunks move forward, and none lies wholly inside the one before it
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert s1 < s2 and e1 < e2
    # every token of the text is in some chunk, in order: the chunks cover the text
    covered = [False] * len(text)
    for s, e in spans:
        covered[s:e] = [True] * (e - s)
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())
    if overlap == 0:  # without overlap the chunks are disjoint
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))


def test_split_text_is_deterministic():
    assert split_text(CHINESE, 10, 3) == split_text(CHINESE, 10, 3)


def test_english_chunks_end_at_sentence_ends():
    text = "One two three. Four five six. Seven eight nine. Ten eleven twelve."
    assert [text[s:e] for s, e in split_text(text, 7, 0)] == [
        "One two three. Four five six.",
        "Seven eight nine. Ten eleven twelve.",
    ]


def test_decimal_points_and_abbreviations_without_space_do_not_end_sentences():
    text = "Pi is 3.14159 roughly. Next sentence here."
    assert [text[s:e] for s, e in split_text(text, 4, 0)] == ["Pi is 3.14159 roughly.", "Next sentence here."]


def test_chinese_chunks_end_at_chinese_sentence_ends():
    text = "第一句话很短。第二句话也不长！第三句话呢？第四句话；"
    pieces = [text[s:e] for s, e in split_text(text, 15, 0)]
    assert pieces == ["第一句话很短。第二句话也不长！", "第三句话呢？第四句话；"]
    assert "".join(pieces) == text  # no spaces in Chinese, so nothing is lost between chunks


def test_closing_quote_stays_with_its_sentence():
    text = "他说：“这是引号里的句子。”然后继续说。"
    assert [text[s:e] for s, e in split_text(text, 16, 0)] == ["他说：“这是引号里的句子。”", "然后继续说。"]


def test_blank_lines_and_list_items_are_boundaries():
    text = "Heading without stop\n\nparagraph text follows\n- item one\n- item two"
    assert [text[s:e] for s, e in split_text(text, 3, 0)] == [
        "Heading without stop",
        "paragraph text follows",
        "- item one",
        "- item two",
    ]


def test_over_long_sentence_is_cut_at_token_boundaries():
    words = [f"w{i}" for i in range(23)]
    text = " ".join(words) + "."
    pieces = [text[s:e] for s, e in split_text(text, 10, 0)]
    assert [p.split() for p in pieces] == [words[:10], words[10:20], words[20:22] + [words[22] + "."]]


def test_over_long_chinese_run_is_cut_every_size_characters():
    text = "很" * 25
    assert [e - s for s, e in split_text(text, 10, 2)] == [10, 10, 5]


def test_overlap_repeats_trailing_sentences():
    sentences = [f"s{i} a b." for i in range(6)]  # three tokens each
    text = " ".join(sentences)
    pieces = [text[s:e] for s, e in split_text(text, 9, 3)]
    assert pieces == [
        " ".join(sentences[0:3]),
        " ".join(sentences[2:5]),  # starts with the last sentence of the chunk before
        " ".join(sentences[4:6]),
    ]
    # an overlap smaller than the last sentence repeats nothing
    assert [text[s:e] for s, e in split_text(text, 9, 2)] == [" ".join(sentences[i : i + 3]) for i in (0, 3)]


def test_overlap_never_makes_a_chunk_that_only_repeats_the_previous_one():
    # size 10, overlap 5: after "A B" (5 + 5 tokens) the overlap would be B, but B + C (8) do not fit in 10;
    # the next chunk must then be C alone, not B alone (a chunk wholly inside the first one).
    text = "a b c d e. f g h i j. k l m n o p q r."
    assert [text[s:e] for s, e in split_text(text, 10, 5)] == ["a b c d e. f g h i j.", "k l m n o p q r."]
    zh = "一二三四五。六七八九十。甲乙丙丁戊己庚辛。"
    assert [zh[s:e] for s, e in split_text(zh, 12, 6)] == ["一二三四五。六七八九十。", "甲乙丙丁戊己庚辛。"]
    # the overlap shrinks to what leaves room: B C (4 tokens) + D (6) exceed 8, so only C is repeated
    text = "a b. c d. e f. g h i j k l."
    assert [text[s:e] for s, e in split_text(text, 8, 4)] == ["a b. c d. e f.", "e f. g h i j k l."]


@pytest.mark.parametrize("text", ["", " ", "\n\n\t"])
def test_empty_text_gives_no_chunks(text):
    assert split_text(text) == []


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (-1, 0), (10, 10), (10, 11), (10, -1)])
def test_invalid_size_or_overlap(size, overlap):
    with pytest.raises(ValueError, match="size"):
        split_text("some text", size, overlap)


# -- chunk_record --------------------------------------------------------------------------------


def test_chunk_ids_count_from_zero_across_sections():
    rec = Record(
        "doc",
        "Title",
        [Section("One two. Three four.", {"page": 1}), Section("   ", {"page": 2}), Section("Five six.", {"page": 3})],
        {"source_path": "doc.pdf"},
    )
    chunks = chunk_record(rec, size=2, overlap=0)
    assert [(c.id, c.doc_id, c.text, c.meta["page"]) for c in chunks] == [
        ("doc-0", "doc", "One two.", 1),
        ("doc-1", "doc", "Three four.", 1),
        ("doc-2", "doc", "Five six.", 3),
    ]
    assert [c.id for c in chunk_record(rec, size=2, overlap=0)] == [c.id for c in chunks]  # stable


def test_chunks_are_exact_slices_of_section_text():
    section = Section(ENGLISH, {"line": 1})
    chunks = chunk_record(Record("e", "", [section]), size=6, overlap=2)
    for c, (s, e) in zip(chunks, split_text(ENGLISH, 6, 2), strict=True):
        assert c.text == ENGLISH[s:e]


def test_chunk_meta_merges_record_and_section_meta():
    rec = Record("r", "Doc title", [Section("Hello there.", {"page": 4, "heading": "Intro"}, "Doc title\n")],
                 {"source_path": "a/b.pdf", "kind": "report"})
    (c,) = chunk_record(rec)
    assert c.meta == {"source_path": "a/b.pdf", "kind": "report", "page": 4, "heading": "Intro",
                      "title": "Doc title", "language": "en"}
    assert (c.index_prefix, c.index_text) == ("Doc title\n", "Doc title\nHello there.")
    c.meta["page"] = 99  # each chunk has its own meta dict
    assert rec.sections[0].meta["page"] == 4 and "page" not in rec.meta


def test_section_meta_wins_and_explicit_language_is_kept():
    rec = Record("r", "", [Section("English words only.", {"language": "zh", "source_path": "inner"})],
                 {"source_path": "outer"})
    (c,) = chunk_record(rec)
    assert (c.meta["language"], c.meta["source_path"]) == ("zh", "inner")
    assert "title" not in c.meta  # no title, no empty title key


def test_language_is_detected_per_chunk():
    text = "This paragraph is written in plain English words.\n\n这一段完全是中文写成的内容。"
    chunks = chunk_record(Record("m", "", [Section(text)]), size=14, overlap=0)
    assert [(c.text[:4], c.meta["language"]) for c in chunks] == [("This", "en"), ("这一段完", "zh")]


def test_line_is_where_each_chunk_starts():
    lines = [f"Line {i} has its own sentence." for i in range(1, 41)]
    text = "\n".join(lines)
    chunks = chunk_record(Record("t", "", [Section(text, {"line": 1})]), size=12, overlap=6)
    assert len(chunks) > 10
    for c in chunks:
        first = c.text.split("\n")[0]
        assert lines[c.meta["line"] - 1] == first
    assert chunks[0].meta["line"] == 1 and chunks[-1].meta["line"] > 30
    # a section that starts on line 10 of its file shifts every chunk by 9
    shifted = chunk_record(Record("t", "", [Section(text, {"line": 10})]), size=12, overlap=6)
    assert [c.meta["line"] for c in shifted] == [c.meta["line"] + 9 for c in chunks]


def test_line_of_a_chunk_inside_a_long_line():
    text = "First line.\n" + " ".join(f"w{i}" for i in range(30)) + ".\nlast line."
    chunks = chunk_record(Record("t", "", [Section(text, {"line": 1})]), size=10, overlap=0)
    assert [(c.meta["line"], c.text.split()[0]) for c in chunks] == [
        (1, "First"), (2, "w0"), (2, "w10"), (2, "w20"), (3, "last")
    ]


def test_atomic_section_is_one_chunk_whatever_its_size():
    article = "第一条 " + "很长的条文内容。" * 100
    rec = Record("law", "中华人民共和国示例法",
                 [Section(article, {"line": 3, "article": "第一条"}, "《示例法》第一条\n", atomic=True),
                  Section("短的非条文部分。", {"line": 9}, "《示例法》\n")])
    chunks = chunk_record(rec, size=8, overlap=2)
    assert [(c.id, c.text == article, c.meta["line"]) for c in chunks] == [("law-0", True, 3), ("law-1", False, 9)]
    assert chunks[0].index_prefix == "《示例法》第一条\n"


def test_atomic_section_line_skips_leading_blank_lines():
    rec = Record("a", "", [Section("\n\n  第二条 内容。\n续行。\n", {"line": 5}, atomic=True)])
    (c,) = chunk_record(rec)
    assert (c.text, c.meta["line"]) == ("第二条 内容。\n续行。", 7)


def test_no_meta_line_when_the_section_has_none():
    (c,) = chunk_record(Record("p", "", [Section("Page text.\nMore.", {"page": 2})]))
    assert "line" not in c.meta


def test_record_line_is_kept_for_jsonl_records():
    # JSONL records carry their JSONL line in record meta; chunks keep it (it is not a line in the text)
    rec = Record("j", "", [Section("One two. Three four.", {})], {"line": 7, "source_path": "a.jsonl"})
    assert [c.meta["line"] for c in chunk_record(rec, size=2, overlap=0)] == [7, 7]


def test_empty_record_gives_no_chunks():
    assert chunk_record(Record("x", "T", [])) == []
    assert chunk_record(Record("x", "T", [Section(" \n ")])) == []


def test_real_statute_chunks(shared_data, monkeypatch):
    from picorag.ingest import read_paths

    monkeypatch.chdir(shared_data / "law")
    (rec,) = list(read_paths(["corpus/xingfa.txt"]))
    chunks = chunk_record(rec, size=64, overlap=8)
    lines = (shared_data / "law" / "corpus" / "xingfa.txt").read_text(encoding="utf-8").split("\n")
    articles = [c for c in chunks if c.meta.get("kind") == "statute" and c.meta["article"].startswith("第")]
    assert len(articles) == 505
    assert [c.id for c in chunks] == [f"corpus/xingfa.txt-{i}" for i in range(len(chunks))]
    by_label = {c.meta["article"]: c for c in articles}
    c = by_label["第一百三十三条之一"]
    assert c.text.startswith("第一百三十三条之一 ")
    assert c.index_prefix.startswith("《中华人民共和国刑法》（刑法）")
    assert c.index_prefix.endswith(" 第一百三十三条之一\n")
    for c in articles:  # one chunk per article, each starting on its own line of the file
        assert lines[c.meta["line"] - 1].strip().startswith(c.meta["article"])
        assert c.meta["language"] == "zh"


def test_real_case_pdf_chunks(shared_data):
    from picorag.ingest import read_paths

    recs = list(read_paths([shared_data / "law" / "cases"]))
    for rec in recs:
        chunks = chunk_record(rec, size=128, overlap=16)
        assert all(count_tokens(c.text) <= 128 for c in chunks)
        assert all(c.meta["language"] == "zh" and c.meta["page_start"] <= c.meta["page_end"] for c in chunks)
        text = {s.meta["heading"]: s.text for s in rec.sections}
        assert all(c.text in text[c.meta["heading"]] for c in chunks)
        # chunks of a long section end at a Chinese sentence end, unless a sentence longer than a chunk was cut
        body = [c for c in chunks if c.meta["heading"] == "裁判理由"]
        assert len(body) > 3
        assert all(SENTENCE_END.search(c.text) or count_tokens(c.text) == 128 for c in body[:-1])
