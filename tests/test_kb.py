"""The KB format: build, search with filters, incremental add/delete/compact, atomic commits."""

import json
import os
import threading
import time

import numpy as np
import pytest

from picorag import kb as kbmod
from picorag.kb import KnowledgeBase, write_lock
from picorag.records import PicoragError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


DOCS = [
    {"id": "cat", "title": "Cats", "content": "Cats purr and sleep all day.", "lang": "en", "topic": "pets"},
    {"id": "dog", "title": "Dogs", "content": "Dogs bark at the mail carrier.", "topic": "pets"},
    {"id": "fox", "title": "Foxes", "content": "The fox is a wild animal; foxes hunt at night.", "topic": "wild"},
    {"id": "tea", "title": "Tea", "content": "Green tea is brewed at eighty degrees.", "topic": "food"},
    {"id": 7, "title": "Seven", "content": "Seven cats and seven dogs.", "topic": "pets"},
]


@pytest.fixture
def kb(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    return KnowledgeBase.build(tmp_path / "kb", [src])


def ids(hits):
    return [h.id for h in hits]


def test_build_search_and_info(kb):
    info = kb.info()
    assert (info["docs"], info["chunks"]) == (5, 5)
    assert ids(kb.search("cats"))[0] in {"cat-0", "7-0"}
    assert set(ids(kb.search("cats"))) == {"cat-0", "7-0"}
    hit = kb.search("carrier")[0]
    assert (hit.doc_id, hit.meta["topic"], hit.meta["title"]) == ("dog", "pets", "Dogs")
    assert "Dogs" in hit.citation
    with pytest.raises(PicoragError, match="empty query"):
        kb.search("   ")


def test_where_filters_before_top_k(kb):
    # "cats" matches pets docs best; filtering to food must still find nothing but food, and
    # filtering to wild must return the fox even though it scores below the cat docs
    assert ids(kb.search("cats foxes", k=1, where={"topic": "wild"})) == ["fox-0"]
    assert ids(kb.search("cats", k=5, where={"topic": "food"})) == []
    both = kb.search("cats foxes", k=5, where={"topic": ["wild", "pets"]})
    assert set(ids(both)) == {"fox-0", "cat-0", "7-0"}
    assert ids(kb.search("seven", where={"topic": "pets", "title": "Seven"})) == ["7-0"]


def test_reopen_gives_same_results(kb):
    again = KnowledgeBase.open(kb.path)
    assert [(h.id, h.score) for h in again.search("dogs bark")] == [(h.id, h.score) for h in kb.search("dogs bark")]


def test_add_is_incremental_idempotent_and_replaces(kb, tmp_path):
    before = kb.info()
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    assert kb.add([src]) == {"added": 0, "replaced": 0, "unchanged": 5, "chunks": 0, "chunk_ids": []}
    assert kb.info()["generation"] == before["generation"]  # nothing committed

    changed = [dict(d) for d in DOCS]
    changed[1]["content"] = "Dogs howl at the moon."
    changed.append({"id": "owl", "title": "Owls", "content": "Owls hunt mice at night."})
    stats = kb.add([write_jsonl(tmp_path / "docs.jsonl", changed)])  # same file, edited
    assert stats == {"added": 1, "replaced": 1, "unchanged": 4, "chunks": 2, "chunk_ids": ["dog-0", "owl-0"]}
    assert kb.search("carrier") == []  # the old dog chunk is gone
    assert ids(kb.search("howl")) == ["dog-0"]
    assert ids(kb.search("owls mice")) == ["owl-0"]
    info = KnowledgeBase.open(kb.path).info()
    assert (info["docs"], info["chunks"], len(info["segments"])) == (6, 6, 2)


def test_delete_and_compact(kb, tmp_path):
    kb.delete(doc_ids=["cat"])
    assert "cat-0" not in ids(kb.search("cats"))
    kb.delete(chunk_ids=["7-0"])
    assert kb.search("seven") == []
    assert kb.info()["docs"] == 3
    with pytest.raises(PicoragError, match="not in the knowledge base"):
        kb.delete(doc_ids=["cat"])  # already gone: refused, nothing written
    kb.add([write_jsonl(tmp_path / "more.jsonl", [{"id": "owl", "content": "Owls hunt at night."}])])
    scores_before = {h.id: h.score for h in kb.search("night hunt animal", k=10)}
    kb.compact()
    info = kb.info()
    assert (len(info["segments"]), info["docs"], info["chunks"]) == (1, 4, 4)
    # after compaction BM25 is exact: identical to a fresh build of the same live documents
    live = [d for d in DOCS if d["id"] not in ("cat", 7)] + [{"id": "owl", "content": "Owls hunt at night."}]
    fresh = KnowledgeBase.build(tmp_path / "fresh", [write_jsonl(tmp_path / "live.jsonl", live)])
    got = {h.id: h.score for h in kb.search("night hunt animal", k=10)}
    want = {h.id: h.score for h in fresh.search("night hunt animal", k=10)}
    assert got.keys() == want.keys() == scores_before.keys()
    for key in got:
        assert got[key] == pytest.approx(want[key], rel=1e-6)
    # old segment directories were garbage-collected
    assert sorted(os.listdir(kb.path / "segments")) == [info["segments"][0]["name"]]


def test_many_adds_are_merged_into_few_segments(kb, tmp_path, monkeypatch):
    monkeypatch.setattr(kbmod, "MAX_SEGMENTS", 3)
    monkeypatch.setattr(kbmod, "MERGE_FACTOR", 3)
    kb.delete(doc_ids=["tea"])  # a merge drops deleted rows
    words = ["owl", "bat", "elk", "yak", "emu", "gnu"]
    counts = []
    for i, w in enumerate(words):
        stats = kb.add([write_jsonl(tmp_path / f"{w}.jsonl", [{"id": w, "content": f"The {w} number {i} roams."}])])
        counts.append(len(kb.info()["segments"]))
        assert stats["added"] == 1
    assert max(counts) <= 3 and counts.count(3) < len(counts)  # merges happened, never more than 3 segments
    info = kb.info()
    assert (info["docs"], info["chunks"]) == (4 + len(words), 4 + len(words))
    assert sum(e["n_deleted"] for e in kb.manifest["segments"]) <= 1
    for w in words:
        assert ids(kb.search(w))[:1] == [f"{w}-0"]
    assert kb.search("green tea") == []
    reopened = KnowledgeBase.open(kb.path)
    assert sorted(os.listdir(kb.path / "segments")) == sorted(e["name"] for e in reopened.manifest["segments"])


def test_crash_before_manifest_leaves_old_kb(kb, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kbmod, "_write_manifest", boom)
    with pytest.raises(PicoragError, match="disk full"):
        kb.add([write_jsonl(tmp_path / "new.jsonl", [{"id": "owl", "content": "Owls hunt."}])])
    monkeypatch.undo()
    again = KnowledgeBase.open(kb.path)
    assert again.info()["docs"] == 5 and again.search("owls") == []
    again.add([write_jsonl(tmp_path / "new.jsonl", [{"id": "owl", "content": "Owls hunt."}])])  # next write works
    assert ids(KnowledgeBase.open(kb.path).search("owls")) == ["owl-0"]


def test_rebuild_replaces_atomically_and_refuses_foreign_dirs(kb, tmp_path):
    reader = KnowledgeBase.open(kb.path)
    KnowledgeBase.build(kb.path, [write_jsonl(tmp_path / "x.jsonl", [{"id": "z", "content": "zebra"}])])
    assert ids(KnowledgeBase.open(kb.path).search("zebra")) == ["z-0"]
    assert reader.search("zebra") == []  # an open reader keeps its snapshot
    other = tmp_path / "not-a-kb"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(PicoragError, match="not a picorag knowledge base"):
        KnowledgeBase.build(other, [tmp_path / "x.jsonl"])
    assert (other / "precious.txt").read_text() == "keep me"


def test_open_errors(tmp_path, kb):
    with pytest.raises(PicoragError, match="knowledge base not found at .* picorag build"):
        KnowledgeBase.open(tmp_path / "missing")
    m = json.loads((kb.path / "manifest.json").read_text())
    m["version"] = 99
    (kb.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PicoragError, match="newer picorag"):
        KnowledgeBase.open(kb.path)
    (kb.path / "manifest.json").write_text("{not json")
    with pytest.raises(PicoragError, match="not a readable"):
        KnowledgeBase.open(kb.path)


def test_duplicate_ids_and_empty_input(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(PicoragError, match=r"duplicate document id 'a'.*d.jsonl:1 and .*d.jsonl:2"):
        KnowledgeBase.build(tmp_path / "kb", [src])
    assert not (tmp_path / "kb" / "manifest.json").exists()
    empty = write_jsonl(tmp_path / "e.jsonl", [{"id": "a", "text": "   "}])
    with pytest.raises(PicoragError, match="no documents"):
        KnowledgeBase.build(tmp_path / "kb", [empty])


def test_second_writer_waits_for_the_lock(kb):
    order = []

    def hold():
        with write_lock(kb.path):
            order.append("first")
            time.sleep(0.3)
        order.append("released")

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.05)
    with write_lock(kb.path):
        order.append("second")
    t.join()
    assert order == ["first", "released", "second"] or order == ["first", "second", "released"]
    assert order.index("second") > order.index("first")
    with write_lock(kb.path), pytest.raises(PicoragError, match="locked"):
        with write_lock(kb.path, timeout=0.1):
            pass


def test_tombstones_are_per_generation_files(kb):
    kb.delete(doc_ids=["tea"])
    seg = kb.manifest["segments"][0]
    dead = np.load(kb.path / "segments" / seg["name"] / seg["deleted"])
    assert dead.tolist() == [3]


def test_build_killed_half_way_leaves_old_kb(kb, tmp_path):
    import signal
    import subprocess
    import sys

    big = write_jsonl(tmp_path / "big.jsonl", [{"id": f"d{i}", "text": f"filler text number {i} " * 40}
                                               for i in range(60000)])
    before = kb.info()
    p = subprocess.Popen([sys.executable, "-m", "picorag", "build", str(kb.path), "--from", str(big)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # mid-way through reading/indexing 60k documents (a build takes several seconds)
    p.send_signal(signal.SIGKILL)
    p.wait()
    after = KnowledgeBase.open(kb.path)
    # all or nothing: the old KB, or (on a machine fast enough to finish first) the complete new one
    if after.info()["docs"] == before["docs"]:
        assert ids(after.search("carrier")) == ["dog-0"]
    else:
        assert after.info()["docs"] == 60000
    after.add([write_jsonl(tmp_path / "one.jsonl", [{"id": "owl", "content": "Owls hunt."}])])
    assert sorted(os.listdir(kb.path / "segments")) == [s["name"] for s in after.info()["segments"]]


def test_search_many_equals_search(kb):
    queries = ["cats", "dogs bark", "tea degrees", "wild fox night", "zzz unknown"]
    for fetch in (True, False):
        batch = kb.search_many(queries, k=3, fetch=fetch)
        for q, hits in zip(queries, batch, strict=True):
            one = kb.search(q, k=3, fetch=fetch)
            assert [(h.id, h.doc_id, h.score) for h in hits] == [(h.id, h.doc_id, h.score) for h in one]
    assert kb.search("dogs bark", k=1, fetch=False)[0].text == ""  # ids and scores only
