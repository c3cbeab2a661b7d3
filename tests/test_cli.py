"""The command line as a user meets it: JSON-only stdout, one-line errors, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "picorag", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=120)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    sources = [*sorted((ROOT / "examples" / "law").glob("*.txt")), ROOT / "examples" / "wiki" / "passages.jsonl"]
    rc, out, err = run("build", d / "kb", "--from", *sources, "--json")
    assert rc == 0, err
    info = json.loads(out)  # stdout is JSON only
    assert info["docs"] == 286 and info["chunks"] > 2000
    return d / "kb"


def test_search_json_and_filters(kb):
    rc, out, err = run("search", kb, "盗窃公私财物数额较大", "-k", "3", "--where", "short_name=刑法", "--json")
    assert rc == 0, err
    hits = json.loads(out)
    assert len(hits) == 3 and all(set(h) == {"id", "score", "text", "meta", "citation"} for h in hits)
    assert all(h["meta"]["short_name"] == "刑法" for h in hits)
    assert hits[0]["meta"]["article"] == "第二百六十四条"
    assert hits[0]["citation"] == "中华人民共和国刑法 · 第二编 分则 · 第二百六十四条"
    rc, out, _ = run("search", kb, "pelvic fins", "-k", "2")
    assert rc == 0 and "Pelvic fin" in out and out.startswith("1. [")


def test_info_add_delete_compact(kb, tmp_path):
    rc, out, _ = run("info", kb, "--json")
    assert rc == 0 and {"docs", "chunks", "segments"} <= set(json.loads(out))
    doc = tmp_path / "note.md"
    doc.write_text("# Zebras\n\nZebras have black and white stripes.\n")
    rc, out, err = run("add", kb, doc, "--json", cwd=tmp_path)
    assert rc == 0, err
    assert json.loads(out)["added"] == 1
    rc, out, _ = run("search", kb, "zebra stripes", "--json")
    assert json.loads(out)[0]["id"] == "note.md-0"
    rc, out, err = run("delete", kb, "--doc-id", "note.md", "--json")
    assert rc == 0, err
    rc, out, _ = run("search", kb, "zebra stripes", "--json")
    assert all(h["id"] != "note.md-0" for h in json.loads(out))
    rc, out, err = run("compact", kb, "--json")
    assert rc == 0 and json.loads(out)["segments_after"] == 1, err


@pytest.mark.parametrize("args, message", [
    (["search", "{missing}", "x"], "knowledge base not found at"),
    (["search", "{kb}", "  "], "empty query"),
    (["search", "{kb}", "x", "--where", "nokey"], "--where expects key=value"),
    (["build", "{tmp}/new", "--from", "{tmp}/absent"], "input not found"),
    (["delete", "{kb}", "--doc-id", "no-such-doc"], "not in the knowledge base"),
    (["delete", "{kb}"], "say what to delete"),
    (["eval", "{kb}", "--dataset", "{tmp}"], "not a BEIR dataset"),
])
def test_errors_are_one_line(kb, tmp_path, args, message):
    args = [a.format(kb=kb, tmp=tmp_path, missing=tmp_path / "nokb") for a in args]
    rc, out, err = run(*args)
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_bad_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n')
    rc, _, err = run("build", tmp_path / "kb", "--from", bad)
    assert rc == 1 and "bad.jsonl:2: malformed JSON" in err and "Traceback" not in err
    assert not (tmp_path / "kb" / "manifest.json").exists()


def test_unsupported_files_warned_not_fatal(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("Plain text about otters.")
    (tmp_path / "in" / "b.xyz").write_text("?")
    rc, out, err = run("build", tmp_path / "kb", "--from", tmp_path / "in", "--json")
    assert rc == 0 and json.loads(out)["docs"] == 1
    assert "warning: skipped 1 file(s) of unsupported type" in err and "b.xyz" in err
