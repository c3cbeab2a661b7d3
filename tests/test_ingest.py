"""picorag.ingest: every input kind, stable ids, and one clear PicoragError line for every kind of bad input."""

from __future__ import annotations

import gzip
import io
import json
import random
from itertools import islice
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from picorag import ingest
from picorag.chunk import chunk_record
from picorag.ingest import read_paths
from picorag.records import PicoragError, Record

# -- helpers -------------------------------------------------------------------------------------


def read(*paths: str | Path) -> tuple[list[Record], list[str]]:
    warnings: list[str] = []
    return list(read_paths(paths, warnings.append)), warnings


def error_of(*paths: str | Path) -> str:
    """The PicoragError message reading `paths` raises; it must be one line, never a traceback."""
    with pytest.raises(PicoragError) as info:
        read(*paths)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF: one Helvetica text line per string, one page per list (an empty list: blank page)."""
    n = len(pages)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(n))}] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, lines in enumerate(pages):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        ops = ("BT /F1 12 Tf 14 TL 72 720 Td " + " ".join(f"({line}) Tj T*" for line in lines) + " ET").encode()
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(ops), ops))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def encrypt_pdf(data: bytes, user: str, owner: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user, owner_password=owner)  # pypdf's default algorithm (RC4) needs no extra package
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_pptx(path: Path, slides: list[list[str]]) -> Path:
    """One slide per list: the first string is the title, the rest go into a text box (an empty list: blank slide)."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    for texts in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[5 if texts else 6])  # 5: title only, 6: blank
        if texts:
            slide.shapes.title.text = texts[0]
        if texts[1:]:
            box = slide.shapes.add_textbox(Inches(1), Inches(2), Inches(6), Inches(3))
            box.text_frame.text = "\n".join(texts[1:])
    deck.save(str(path))
    return path


STATUTE = (
    "中华人民共和国示例法\n"
    "\n"
    "第一章　总　　则\n"
    "第一条　为了示例，制定本法。\n"
    "第二条　本法适用于示例。\n"
    "　　（一）第一项；\n"
    "第三条　本法自公布之日起施行。\n"
)


# -- JSONL ---------------------------------------------------------------------------------------


def test_nanochat_jsonl_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"id": "doc-1", "title": "First", "content": "Hello world.", "source": "web", "lang": "en"},
            {"id": "doc-2", "title": "Second", "content": "Another text.", "source": "book"},
        ],
    )
    (r1, r2), warnings = read("docs.jsonl")
    assert warnings == []
    assert (r1.doc_id, r1.title, [s.text for s in r1.sections]) == ("doc-1", "First", ["Hello world."])
    assert r1.meta == {"source": "web", "lang": "en", "source_path": "docs.jsonl", "line": 1}
    assert r1.sections[0].index_prefix == "First\n"  # the title is indexed with every chunk
    assert (r2.doc_id, r2.meta["source"], r2.meta["line"]) == ("doc-2", "book", 2)


def test_beir_jsonl_record_merges_nested_metadata(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    row = {"_id": "4983", "title": "T", "text": "Body.", "metadata": {"year": 2020, "venue": "x"}, "venue": "top"}
    write_jsonl(tmp_path / "corpus.jsonl", [row, {"_id": 17, "title": "", "text": "No title."}])
    (rec, untitled), _ = read("corpus.jsonl")
    assert (rec.doc_id, rec.title, rec.sections[0].text) == ("4983", "T", "Body.")
    # nested BEIR metadata is merged in; a top-level key of the same name wins; "metadata" itself is gone
    assert rec.meta == {"year": 2020, "venue": "top", "source_path": "corpus.jsonl", "line": 1}
    assert (untitled.doc_id, untitled.title, untitled.sections[0].index_prefix) == ("17", "", "")


def test_jsonl_metadata_that_is_not_a_dict_is_kept_as_an_extra_key(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": "a", "text": "x", "metadata": "free text"}])
    (rec,), _ = read(tmp_path / "a.jsonl")
    assert rec.meta["metadata"] == "free text"


@pytest.mark.parametrize(
    ("raw_id", "doc_id"),
    [("007", "007"), (" spaced ", " spaced "), ("a/b:c-1", "a/b:c-1"), ("中文编号", "中文编号"), (7, "7"), (0, "0"),
     (-3, "-3"), (12345678901234567890, "12345678901234567890")],
)
def test_jsonl_id_is_the_doc_id_verbatim(tmp_path, raw_id, doc_id):
    write_jsonl(tmp_path / "a.jsonl", [{"id": raw_id, "content": "Some text."}])
    (rec,), _ = read(tmp_path / "a.jsonl")
    assert rec.doc_id == doc_id
    assert [c.id for c in chunk_record(rec)] == [f"{doc_id}-0"]


def test_jsonl_without_id_gets_a_stable_id_from_path_and_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    first = [r.doc_id for r in read("sub/a.jsonl")[0]]
    again = [r.doc_id for r in read(tmp_path / "sub" / "a.jsonl")[0]]  # absolute path: the same ids
    assert first == again == ["sub/a.jsonl:1", "sub/a.jsonl:2"]


def test_jsonl_gz_reads_like_plain_jsonl(tmp_path):
    rows = [{"_id": f"d{i}", "title": f"T{i}", "text": f"Text number {i}."} for i in range(5)]
    plain = write_jsonl(tmp_path / "c.jsonl", rows)
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    a, _ = read(plain)
    b, _ = read(tmp_path / "c.jsonl.gz")
    assert [(r.doc_id, r.title, r.sections[0].text) for r in a] == [(r.doc_id, r.title, r.sections[0].text) for r in b]
    assert b[0].meta["source_path"].endswith("c.jsonl.gz")


def test_jsonl_blank_lines_bom_and_crlf(tmp_path):
    body = '{"id": "a", "text": "first"}\r\n\r\n   \r\n{"id": "b", "text": "second"}\r\n'
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode())
    recs, _ = read(tmp_path / "a.jsonl")
    assert [(r.doc_id, r.sections[0].text, r.meta["line"]) for r in recs] == [("a", "first", 1), ("b", "second", 4)]


def test_empty_jsonl_gives_no_records(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    assert read(tmp_path / "e.jsonl") == ([], [])


def test_real_beir_corpus_first_records(shared_data):
    recs = list(islice(read_paths([shared_data / "beir" / "scifact" / "corpus.jsonl.gz"]), 3))
    assert [r.doc_id for r in recs] == ["4983", "5836", "7912"]
    assert recs[0].title.startswith("Microstructural development of human newborn cerebral white matter")
    assert recs[0].sections[0].text.startswith("Alterations of the architecture of cerebral white matter")
    assert "metadata" not in recs[0].meta and recs[0].meta["line"] == 1


def test_real_wiki_passages_first_records(shared_data):
    recs = list(islice(read_paths([shared_data / "wiki" / "passages.jsonl.gz"]), 2))
    assert [(r.doc_id, r.title) for r in recs] == [("1", "Jarred Shaw"), ("2", "Harrow International School Shanghai")]
    assert recs[0].sections[0].text.startswith("Jarred Shaw (born September 28, 1990)")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "x", "text": "unterminated', "malformed JSON"),
        ("{'id': 'x', 'text': 'single quotes'}", "malformed JSON"),
        ('["a", "list"]', "expected a JSON object, got list"),
        ('"just a string"', "expected a JSON object, got str"),
        ("42", "expected a JSON object, got int"),
        ("null", "expected a JSON object, got NoneType"),
        ('{"id": "x", "title": "no text"}', "needs a string 'content' or 'text' field"),
        ('{"id": "x", "text": 5}', "needs a string 'content' or 'text' field"),
        ('{"id": "x", "content": null}', "needs a string 'content' or 'text' field"),
        ('{"id": 1.5, "text": "t"}', "'id' must be a non-empty string or integer"),
        ('{"id": true, "text": "t"}', "'id' must be a non-empty string or integer"),
        ('{"id": ["a"], "text": "t"}', "'id' must be a non-empty string or integer"),
        ('{"_id": {"a": 1}, "text": "t"}', "'id' must be a non-empty string or integer"),
        ('{"id": "", "text": "t"}', "'id' must be a non-empty string or integer"),
        ('{"id": "   ", "text": "t"}', "'id' must be a non-empty string or integer"),
        ('{"id": "x", "title": 5, "text": "t"}', "'title' must be a string"),
        ('{"id": "x", "title": [], "text": "t"}', "'title' must be a string"),
        ('{"id": "x", "title": false, "text": "t"}', "'title' must be a string"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "ok", "text": "fine"}\n\n' + line + "\n", encoding="utf-8")
    message = error_of(path)
    assert message.startswith(f"{path}:3: ")
    assert expected in message


def test_bad_line_in_jsonl_gz_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"id": "a", "text": "x"}\n{"id": "b"\n'))
    assert error_of(path).startswith(f"{path}:2: malformed JSON")


def test_non_utf8_jsonl_names_file_and_line(tmp_path):
    good = "".join(json.dumps({"id": str(i), "text": "word " * 50}) + "\n" for i in range(300))  # past any buffer
    bad = '{"id": "gbk", "text": "中文内容"}\n'.encode("gbk")
    (tmp_path / "a.jsonl").write_bytes(good.encode() + bad)
    message = error_of(tmp_path / "a.jsonl")
    assert message.startswith(f"{tmp_path / 'a.jsonl'}:301: not UTF-8")
    assert "JSONL must be UTF-8" in message


@pytest.mark.parametrize(
    "data",
    [
        b'{"id": "a", "text": "not gzipped at all"}\n',  # gzip.BadGzipFile
        gzip.compress(b'{"id": "a", "text": "x"}\n' * 100)[:40],  # truncated stream: EOFError
        bytes.fromhex("1f8b0800000000000003") + b"\x07\x00\x00",  # deflate block type 3 is invalid: zlib.error
    ],
    ids=["not-gzip", "truncated", "corrupt-deflate"],
)
def test_broken_gzip_is_one_clear_error(tmp_path, data):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(data)
    assert error_of(path).startswith(f"{path}: cannot read (")


def test_empty_gzip_file_is_an_empty_stream(tmp_path):
    (tmp_path / "e.jsonl.gz").write_bytes(b"")
    assert read(tmp_path / "e.jsonl.gz") == ([], [])


def test_randomly_corrupted_gzip_never_escapes_as_a_traceback(tmp_path):
    data = gzip.compress(b"".join(b'{"id": "%d", "text": "hello %d"}\n' % (i, i) for i in range(2000)), mtime=0)
    rng = random.Random(1)
    path = tmp_path / "c.jsonl.gz"
    for _ in range(20):
        broken = bytearray(data)
        for _ in range(5):
            broken[rng.randrange(10, len(broken) - 8)] = rng.randrange(256)
        path.write_bytes(bytes(broken))
        try:
            read(path)
        except PicoragError as e:
            assert str(e).startswith(str(path))


# -- text and markdown ---------------------------------------------------------------------------


def test_txt_file_record_and_path_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "plain.txt").write_text("First line.\nSecond line.\n", encoding="utf-8")
    (rec,), warnings = read("notes/plain.txt")
    assert warnings == []
    assert (rec.doc_id, rec.title, rec.meta) == ("notes/plain.txt", "plain", {"source_path": "notes/plain.txt"})
    assert [(s.text, s.meta, s.index_prefix) for s in rec.sections] == [
        ("First line.\nSecond line.\n", {"line": 1}, "plain\n")
    ]
    # the same file named by its absolute path, or via "./", has the same id
    assert read(tmp_path / "notes" / "plain.txt")[0][0].doc_id == "notes/plain.txt"
    assert read("./notes/../notes/plain.txt")[0][0].doc_id == "notes/plain.txt"


def test_file_outside_cwd_gets_its_absolute_path_as_id(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "cwd").mkdir()
    (tmp_path / "elsewhere" / "a.txt").write_text("text")
    monkeypatch.chdir(tmp_path / "cwd")
    (rec,), _ = read("../elsewhere/a.txt")
    assert rec.doc_id == (tmp_path / "elsewhere" / "a.txt").as_posix()


def test_markdown_sections_per_heading(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (
        "Preamble before any heading.\n"  # 1
        "\n"
        "# Guide\n"  # 3
        "Intro.\n"
        "\n"
        "## Install ##\n"  # 6
        "Run it:\n"
        "\n"
        "```bash\n"  # 9
        "# this is a shell comment, not a heading\n"
        "pip install picorag\n"
        "```\n"
        "\n"
        "#\n"  # 14: a lone '#' is not a heading, and must not swallow the next line as one
        "Still install text.\n"
        "\n"
        "### Usage\n"  # 17
        "Search.\n"
    )
    (tmp_path / "guide.md").write_text(text, encoding="utf-8")
    (rec,), _ = read("guide.md")
    assert (rec.doc_id, rec.title) == ("guide.md", "Guide")
    got = [(s.meta, s.index_prefix, s.text.split("\n")[0]) for s in rec.sections]
    assert got == [
        ({"line": 1}, "Guide\n", "Preamble before any heading."),
        ({"line": 3, "heading": "Guide"}, "Guide\n", "# Guide"),
        ({"line": 6, "heading": "Install"}, "Guide\nInstall\n", "## Install ##"),
        ({"line": 17, "heading": "Usage"}, "Guide\nUsage\n", "### Usage"),
    ]
    assert "".join(s.text for s in rec.sections) == text  # sections are slices covering the whole file
    chunks = chunk_record(rec, size=6, overlap=0)
    lines = text.split("\n")
    for c in chunks:  # every chunk's line is where its text starts (a long sentence may be cut mid-line)
        assert c.text.split("\n")[0] in lines[c.meta["line"] - 1]
    assert [c.meta["line"] for c in chunks] == [1, 3, 6, 10, 10, 12, 17]
    assert {c.meta.get("heading") for c in chunks} == {None, "Guide", "Install", "Usage"}


def test_markdown_title_falls_back_to_stem_and_ignores_fenced_h1(tmp_path):
    text = "~~~\n# not a title\n~~~\n## Section\nBody.\n"
    (tmp_path / "readme.markdown").write_text(text)
    (rec,), _ = read(tmp_path / "readme.markdown")
    assert rec.title == "readme"
    assert [s.meta for s in rec.sections] == [{"line": 1}, {"line": 4, "heading": "Section"}]


def test_markdown_crlf_line_numbers(tmp_path):
    (tmp_path / "w.md").write_bytes(b"# T\r\n\r\ntext\r\n## S\r\nmore\r\n")
    (rec,), _ = read(tmp_path / "w.md")
    assert [s.meta["line"] for s in rec.sections] == [1, 4]
    assert "\r" not in "".join(s.text for s in rec.sections)


@pytest.mark.parametrize("content", [b"", b"  \n\n\t \n", b"\xef\xbb\xbf\n"])
def test_empty_text_file_is_skipped_with_a_warning(tmp_path, content):
    (tmp_path / "empty.txt").write_bytes(content)
    recs, warnings = read(tmp_path / "empty.txt")
    assert recs == []
    assert len(warnings) == 1 and "empty.txt" in warnings[0] and "empty" in warnings[0]


CHINESE = "中华人民共和国是工人阶级领导的、以工农联盟为基础的人民民主专政的社会主义国家。社会主义制度是根本制度。"


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "gb2312"])
@pytest.mark.parametrize(
    "text",
    [CHINESE, "你好，世界", "中华人民共和国刑法", "合同", "人", "盗窃罪的构成要件是什么？\n第二行。\n",
     "第一条 为了保护人民，制定本法。"],
    ids=["paragraph", "greeting", "law-title", "two-chars", "one-char", "two-lines", "article"],
)
def test_gbk_chinese_txt_is_detected_and_decoded(tmp_path, encoding, text):
    (tmp_path / "zh.txt").write_bytes(text.encode(encoding))
    (rec,), _ = read(tmp_path / "zh.txt")
    assert rec.sections[0].text == text


def test_gbk_statute_is_parsed_by_article(tmp_path):
    (tmp_path / "law.txt").write_bytes(STATUTE.encode("gb18030"))
    (rec,), _ = read(tmp_path / "law.txt")
    assert rec.title == "中华人民共和国示例法"
    assert [s.meta["article"] for s in rec.sections] == ["第一条", "第二条", "第三条"]


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"\xef\xbb\xbfBOM then text", "BOM then text"),
        ("UTF-16 文本".encode("utf-16"), "UTF-16 文本"),
        ("UTF-16 BE 文本".encode("utf-16-be").join([b"\xfe\xff", b""]), "UTF-16 BE 文本"),
        ("Plain UTF-8 — “quotes” 中文".encode(), "Plain UTF-8 — “quotes” 中文"),
    ],
)
def test_utf_variants_decode(tmp_path, data, text):
    (tmp_path / "u.txt").write_bytes(data)
    assert read(tmp_path / "u.txt")[0][0].sections[0].text == text


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("nul", [True, False], ids=["with-nul", "no-nul"])
def test_random_binary_named_txt_is_a_clear_error(tmp_path, seed, nul):
    rng = random.Random(seed)
    data = bytes(rng.randrange(0 if nul else 1, 256) for _ in range(4096))
    (tmp_path / "blob.txt").write_bytes(data)
    message = error_of(tmp_path / "blob.txt")
    assert message.startswith(f"{tmp_path / 'blob.txt'}: not UTF-8")


def test_statute_txt_becomes_atomic_articles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "law.txt").write_text(STATUTE, encoding="utf-8")
    (rec,), _ = read("law.txt")
    assert (rec.doc_id, rec.meta["kind"]) == ("law.txt", "statute")
    assert all(s.atomic for s in rec.sections)
    chunks = chunk_record(rec, size=3, overlap=0)  # atomic: one chunk per article whatever the size
    assert [(c.id, c.meta["article"], c.meta["line"]) for c in chunks] == [
        ("law.txt-0", "第一条", 4),
        ("law.txt-1", "第二条", 5),
        ("law.txt-2", "第三条", 7),
    ]


def test_real_statute_file(shared_data, monkeypatch):
    monkeypatch.chdir(shared_data / "law")
    (rec,), _ = read("corpus/xianfa.txt")
    assert (rec.doc_id, rec.title) == ("corpus/xianfa.txt", "中华人民共和国宪法")
    articles = [s for s in rec.sections if s.atomic]
    assert len(articles) == 143
    lines = (shared_data / "law" / "corpus" / "xianfa.txt").read_text(encoding="utf-8").split("\n")
    for s in articles:  # each article's line is the line that starts with its label
        assert lines[s.meta["line"] - 1].strip().startswith(s.meta["article"])


# -- PDF -----------------------------------------------------------------------------------------


def test_pdf_sections_per_page(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pages = [["Hello from page one.", "A second line."], [], ["Page three has text too."]]
    (tmp_path / "report.pdf").write_bytes(make_pdf(pages))
    (rec,), warnings = read("report.pdf")
    assert warnings == []
    assert (rec.doc_id, rec.title, rec.meta) == ("report.pdf", "report", {"source_path": "report.pdf"})
    assert [s.meta for s in rec.sections] == [{"page": 1}, {"page": 3}]  # the blank page 2 is skipped
    assert [s.text.split() for s in rec.sections] == [
        "Hello from page one. A second line.".split(),
        "Page three has text too.".split(),
    ]
    chunks = chunk_record(rec)
    assert [(c.id, c.meta["page"], c.meta["title"], c.meta["source_path"]) for c in chunks] == [
        ("report.pdf-0", 1, "report", "report.pdf"),
        ("report.pdf-1", 3, "report", "report.pdf"),
    ]


def test_pdf_without_text_is_skipped_with_a_warning(tmp_path):
    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.write(tmp_path / "scan.pdf")
    recs, warnings = read(tmp_path / "scan.pdf")
    assert recs == []
    assert len(warnings) == 1 and "scan.pdf" in warnings[0] and "no text layer" in warnings[0]


@pytest.mark.parametrize("kind", ["random", "random-after-header", "empty", "truncated"])
def test_corrupt_pdf_is_a_clear_error(tmp_path, kind):
    rng = random.Random(7)
    junk = bytes(rng.randrange(256) for _ in range(3000))
    data = {
        "random": junk,
        "random-after-header": b"%PDF-1.4\n" + junk,
        "empty": b"",
        "truncated": make_pdf([["Some text."]])[:60],
    }[kind]
    (tmp_path / "bad.pdf").write_bytes(data)
    assert error_of(tmp_path / "bad.pdf").startswith(f"{tmp_path / 'bad.pdf'}: unreadable PDF (")


def test_encrypted_pdf_is_a_clear_error(tmp_path):
    (tmp_path / "locked.pdf").write_bytes(encrypt_pdf(make_pdf([["Secret text."]]), "user-pw", "owner-pw"))
    message = error_of(tmp_path / "locked.pdf")
    assert message.startswith(f"{tmp_path / 'locked.pdf'}: PDF is encrypted")


def test_pdf_with_only_an_owner_password_is_read(tmp_path):
    (tmp_path / "owner.pdf").write_bytes(encrypt_pdf(make_pdf([["Readable text."]]), "", "owner-pw"))
    (rec,), _ = read(tmp_path / "owner.pdf")
    assert rec.sections[0].text.strip() == "Readable text."


def test_real_case_pdfs(shared_data, monkeypatch):
    monkeypatch.chdir(shared_data / "law")
    recs, warnings = read("cases")
    assert warnings == []
    assert [r.doc_id for r in recs] == sorted(f"cases/{p.name}" for p in (shared_data / "law" / "cases").glob("*.pdf"))
    for rec in recs:
        assert rec.meta["kind"] == "case" and rec.title == Path(rec.doc_id).stem
        headings = [s.meta["heading"] for s in rec.sections]
        assert headings == ["标题", "关键词", "基本案情", "裁判理由", "裁判要旨", "关联索引"]
        assert all(1 <= s.meta["page_start"] <= s.meta["page_end"] for s in rec.sections)
        assert all("人民法院案例库" not in s.text.split("\n") for s in rec.sections)  # watermark lines removed


# -- PPTX ----------------------------------------------------------------------------------------


def test_pptx_sections_per_slide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_pptx(tmp_path / "deck.pptx", [["Intro", "First point.", "Second point."], [], ["第三页", "中文内容。"]])
    (rec,), warnings = read("deck.pptx")
    assert warnings == []
    assert (rec.doc_id, rec.title, rec.meta) == ("deck.pptx", "deck", {"source_path": "deck.pptx"})
    assert [(s.meta, s.text) for s in rec.sections] == [
        ({"slide": 1}, "Intro\nFirst point.\nSecond point."),
        ({"slide": 3}, "第三页\n中文内容。"),  # the blank slide 2 is skipped, numbering is kept
    ]
    chunks = chunk_record(rec)
    assert [(c.id, c.meta["slide"], c.meta["language"]) for c in chunks] == [("deck.pptx-0", 1, "en"),
                                                                               ("deck.pptx-1", 3, "zh")]


def test_pptx_without_text_is_skipped_with_a_warning(tmp_path):
    make_pptx(tmp_path / "blank.pptx", [[], []])
    recs, warnings = read(tmp_path / "blank.pptx")
    assert recs == [] and len(warnings) == 1 and "blank.pptx" in warnings[0]


@pytest.mark.parametrize("data", [b"not a zip file", b"", b"PK\x03\x04" + bytes(200)])
def test_corrupt_pptx_is_a_clear_error(tmp_path, data):
    (tmp_path / "bad.pptx").write_bytes(data)
    assert error_of(tmp_path / "bad.pptx").startswith(f"{tmp_path / 'bad.pptx'}: unreadable PPTX")


# -- directories and paths -----------------------------------------------------------------------


def _tree(root: Path) -> None:
    files = {
        "b.txt": "bee",
        "a.md": "# A\nalpha",
        "sub/c.jsonl": '{"id": "c1", "text": "sea"}\n',
        "sub/deeper/d.txt": "dee",
        "sub/z.docx": "unsupported",
        ".hidden.txt": "hidden file",
        ".git/HEAD": "ref: refs/heads/main",
        ".git/notes.txt": "inside a hidden folder",
        "sub/.cache/e.md": "# inside a nested hidden folder",
        "image.png": "unsupported",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_directory_is_walked_recursively_sorted_and_hidden_skipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _tree(tmp_path / "kb")
    recs, warnings = read("kb")
    assert [r.doc_id for r in recs] == ["kb/a.md", "kb/b.txt", "c1", "kb/sub/deeper/d.txt"]
    assert warnings == ["skipped 2 file(s) of unsupported type: kb/image.png, kb/sub/z.docx"]
    # the directory itself may be hidden, or be the working directory
    assert [r.doc_id for r in read(".")[0]] == ["kb/a.md", "kb/b.txt", "c1", "kb/sub/deeper/d.txt"]


def test_same_input_same_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _tree(tmp_path / "kb")
    runs = [[c.id for r in read("kb")[0] for c in chunk_record(r)] for _ in range(2)]
    assert runs[0] == runs[1] == ["kb/a.md-0", "kb/b.txt-0", "c1-0", "kb/sub/deeper/d.txt-0"]


def test_many_unsupported_files_give_one_short_warning(tmp_path):
    for i in range(8):
        (tmp_path / f"f{i}.docx").write_text("x")
    (tmp_path / "ok.txt").write_text("fine")
    recs, warnings = read(tmp_path)
    assert [r.title for r in recs] == ["ok"]
    assert len(warnings) == 1
    assert warnings[0].startswith("skipped 8 file(s) of unsupported type: ")
    assert str(tmp_path / "f0.docx") in warnings[0] and warnings[0].endswith("and 3 more")


@pytest.mark.parametrize("name", ["A.TXT", "b.Md", "c.JSONL", "d.JSONL.GZ"])
def test_suffixes_are_case_insensitive(tmp_path, name):
    data = b'{"id": "x", "text": "t"}\n'
    (tmp_path / name).write_bytes(gzip.compress(data) if name.lower().endswith(".gz") else data)
    recs, warnings = read(tmp_path / name)
    assert len(recs) == 1 and warnings == []


def test_missing_input_path_is_a_clear_error(tmp_path):
    assert error_of(tmp_path / "nope") == f"input not found: {tmp_path / 'nope'}"


def test_warn_defaults_to_silence(tmp_path):
    (tmp_path / "x.docx").write_text("x")
    assert list(read_paths([tmp_path])) == []


def test_module_example_runs():
    import doctest

    assert doctest.testmod(ingest).failed == 0
