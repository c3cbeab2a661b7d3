"""Faults a KB must survive with a clear error and its old state intact: disk full, read-only
filesystem, two writers, readers during writes, enormous inputs; plus regressions found by
tests/test_fuzz.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from picorag.kb import KnowledgeBase
from picorag.records import PicoragError
from picorag.server import create_app


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


DOCS = [{"id": f"d{i}", "title": f"Doc {i}", "content": f"document number {i} about cats and dogs"} for i in range(5)]


@pytest.fixture
def kb(tmp_path):
    return KnowledgeBase.build(tmp_path / "kb", [write_jsonl(tmp_path / "docs.jsonl", DOCS)])


# -- regressions found by the fuzzer -------------------------------------------------------------------


def test_http_body_that_is_not_utf8_is_a_400(kb):
    with TestClient(create_app(kb.path), raise_server_exceptions=False) as c:
        for body in (b"\x80", b"\xff\xfe{}", b"\x00\x00"):
            r = c.post("/search", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"], r.text


def test_damaged_kb_files_are_one_clear_error(kb):
    """Found by fuzzing: a truncated .npy (EOFError), a manifest with wrong types (TypeError), a
    SQLite file that is not a database, rows past the end (IndexError) all surfaced as tracebacks."""
    import shutil

    import numpy as np

    from picorag.records import PicoragError

    seg = kb.path / "segments" / kb.manifest["segments"][0]["name"]
    pristine = kb.path.parent / "pristine"
    shutil.copytree(kb.path, pristine)

    def damage(fn) -> str:
        shutil.rmtree(kb.path)
        shutil.copytree(pristine, kb.path)
        fn()
        with pytest.raises(PicoragError, match="damaged") as e:
            with KnowledgeBase.open(kb.path) as opened:
                opened.search("cats")
                opened.add([write_jsonl(kb.path.parent / "more.jsonl", [{"id": "x", "content": "x"}])])
                opened.compact()
        return str(e.value)

    def manifest(**changes):
        m = json.loads((kb.path / "manifest.json").read_text())
        for k, v in changes.items():
            m["segments"][0][k] = v if k != "top" else None
        (kb.path / "manifest.json").write_text(json.dumps(m))

    assert "docs.npy" not in damage(lambda: (seg / "docs.npy").write_bytes((seg / "docs.npy").read_bytes()[:70]))
    damage(lambda: (seg / "chunks.sqlite").write_bytes(b"not a database" * 100))
    header = b"{'descr': '<u2', 'fortran_order': False, 'shape': (3,"  # numpy: tokenize.TokenError
    damage(lambda: (seg / "bm25.tf.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header + b"\n").to_bytes(2, "little")
                                                      + header + b"\n"))
    damage(lambda: (seg / "bm25.tf.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': \x00\x00\x00}\n"))
    assert "segments[0]" in damage(lambda: manifest(chunks="5"))
    assert "not a segment name" in damage(lambda: manifest(name="../../etc"))

    def rows_past_the_end():
        rows = np.load(seg / "bm25.rows.npy")
        rows[0] = 10**6
        np.save(seg / "bm25.rows.npy", rows)
        kb.delete(doc_ids=["d1"])  # so compact has work to do

    assert "bm25.rows points past the last chunk" in damage(rows_past_the_end)


# -- disk full and read-only filesystems ----------------------------------------------------------------


def state(kb_path) -> tuple:
    """What a reader sees: counts and the ids a few searches return."""
    with KnowledgeBase.open(kb_path) as kb:
        info = kb.info()
        return info["docs"], info["chunks"], info["generation"], [h.id for h in kb.search("cats dogs", k=10)]


def no_leftovers(kb_path) -> bool:
    with KnowledgeBase.open(kb_path) as kb:
        names = {s["name"] for s in kb.manifest["segments"]}
    return sorted(p.name for p in (kb_path / "segments").iterdir()) == sorted(names) and not [
        p for p in kb_path.iterdir() if p.name not in ("manifest.json", ".lock", "segments")]


def big_input(tmp_path, mb: int):
    words = " ".join(f"w{i}" for i in range(20_000))  # distinct words: large postings too
    n = mb * 1_000_000 // (len(words) + 40)
    return write_jsonl(tmp_path / "big.jsonl", [{"id": f"big{i}", "content": words} for i in range(n)])


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MB tmpfs: a real ENOSPC and a real read-only remount (needs root with mount rights)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount rights in this container)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_during_add_leaves_the_kb_intact(tiny_fs, tmp_path):
    kb = KnowledgeBase.build(tiny_fs / "kb", [write_jsonl(tmp_path / "docs.jsonl", DOCS)])
    before = state(kb.path)
    with pytest.raises(PicoragError, match=r"disk full.*previous state is intact"):
        kb.add([big_input(tmp_path, 2)])
    assert state(kb.path) == before
    rc, err = cli_run("add", kb.path, tmp_path / "big.jsonl")
    assert rc == 1 and err.count("\n") == 1 and "disk full" in err, err
    assert state(kb.path) == before and no_leftovers(kb.path)  # the failed write cleaned up after itself
    kb.add([write_jsonl(tmp_path / "one.jsonl", [{"id": "owl", "content": "Owls and cats."}])])  # space is back
    assert "owl-0" in state(kb.path)[3]


def test_read_only_filesystem(tiny_fs, tmp_path):
    kb = KnowledgeBase.build(tiny_fs / "kb", [write_jsonl(tmp_path / "docs.jsonl", DOCS)])
    before = state(kb.path)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    try:
        one = write_jsonl(tmp_path / "one.jsonl", [{"id": "owl", "content": "Owls and cats."}])
        for write in (lambda: kb.add([one]), lambda: kb.delete(doc_ids=["d1"]), lambda: kb.compact(),
                      lambda: KnowledgeBase.build(kb.path, [one])):
            with pytest.raises(PicoragError, match="read-only"):
                write()
        assert state(kb.path) == before  # readers work on a read-only KB
        rc, err = cli_run("add", kb.path, one)
        assert rc == 1 and "read-only" in err and err.count("\n") == 1, err
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_fs)], check=True)
    kb.add([one])
    assert "owl-0" in state(kb.path)[3]


def test_server_upload_on_a_read_only_disk_is_a_clear_error(tiny_fs, tmp_path):
    kb = KnowledgeBase.build(tiny_fs / "kb", [write_jsonl(tmp_path / "docs.jsonl", DOCS)])
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    try:
        with TestClient(create_app(kb.path), raise_server_exceptions=False) as c:
            r = c.post("/documents", json={"documents": [{"id": "owl", "content": "Owls."}]})
            assert r.status_code == 507 and "read-only" in r.json()["error"]["message"], r.text
            assert c.delete("/documents/d1").status_code == 400
            assert c.post("/search", json={"query": "cats"}).json()["hits"]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_fs)], check=True)


def cli_run(*args, limit: int | None = None) -> tuple[int, str]:
    """`picorag ARGS` in a subprocess, optionally with RLIMIT_FSIZE (files cannot grow past `limit`)."""
    pre = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); ") if limit else ""
    code = pre + "import sys; from picorag.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stderr


def test_file_size_limit_during_add(kb, tmp_path):
    """Works without mount rights: RLIMIT_FSIZE makes every write past 500 kB fail with EFBIG."""
    before = state(kb.path)
    rc, err = cli_run("add", kb.path, big_input(tmp_path, 2), limit=500_000)
    assert rc == 1 and err.count("\n") == 1 and "previous state is intact" in err, err  # SQLite: "disk I/O error"
    assert state(kb.path) == before and no_leftovers(kb.path)
    kb.add([write_jsonl(tmp_path / "one.jsonl", [{"id": "owl", "content": "Owls and cats."}])])
    assert "owl-0" in state(kb.path)[3]


def test_enospc_at_every_write_step(kb, tmp_path, monkeypatch):
    """In-process: the n-th file written fails with ENOSPC, for every n the add reaches."""
    import builtins
    import errno

    one = write_jsonl(tmp_path / "one.jsonl", [{"id": "owl", "content": "Owls and cats."}])
    before = state(kb.path)
    real_open = builtins.open
    for n in range(1, 60):
        def failing_open(file, mode="r", *a, n=n, opened=[0], **kw):  # noqa: B006 (one counter per n)
            if any(c in mode for c in "wax+") and str(kb.path) in str(file):
                opened[0] += 1
                if opened[0] == n:
                    raise OSError(errno.ENOSPC, "No space left on device", str(file))
            return real_open(file, mode, *a, **kw)

        monkeypatch.setattr(builtins, "open", failing_open)
        try:
            kb.add([one])
        except PicoragError as e:
            assert "disk full" in str(e)
            monkeypatch.setattr(builtins, "open", real_open)
            assert state(kb.path) == before
            continue
        monkeypatch.setattr(builtins, "open", real_open)
        assert n > 1 and "owl-0" in state(kb.path)[3]  # fewer than n files written: the add went through
        break
    else:
        raise AssertionError("the add never completed")


# -- enormous inputs ------------------------------------------------------------------------------------


def test_enormous_documents_are_refused_up_front(kb, tmp_path, monkeypatch):
    """One line or file over the per-document limit is refused with its size (the full-size run,
    200 MB in one line and a 50 MB JSON field with peak memory, is in bench/stress.py)."""
    monkeypatch.setenv("PICORAG_MAX_DOCUMENT_MB", "1")
    before = state(kb.path)
    (tmp_path / "one-line.txt").write_text("word " * 400_000)  # 2 MB, no line break
    with pytest.raises(PicoragError, match=r"one-line.txt: a document of 2 MB over the 1 MB limit per document"):
        kb.add([tmp_path / "one-line.txt"])
    big = write_jsonl(tmp_path / "giant.jsonl", [{"id": "ok", "content": "fine"},
                                                 {"id": "giant", "content": "x" * 3_000_000}])
    with pytest.raises(PicoragError, match=r"giant.jsonl:2: a line over the 1 MB limit per document"):
        kb.add([big])
    assert state(kb.path) == before and no_leftovers(kb.path)
    monkeypatch.setenv("PICORAG_MAX_DOCUMENT_MB", "4")
    kb.add([big])  # under a higher limit the same line is read and chunked
    assert kb.info()["docs"] == len(DOCS) + 2


# -- concurrency ----------------------------------------------------------------------------------------

WRITER = """
import json, sys
from pathlib import Path
from picorag.kb import KnowledgeBase
kb_path, tag, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for r in range(rounds):
    src = kb_path.parent / f"{tag}{r}.jsonl"
    src.write_text("".join(json.dumps({"id": f"{tag}{r}-{j}", "content": f"batch {tag}{r} item {j}"}) + "\\n"
                           for j in range(5)))
    KnowledgeBase.open(kb_path).add([src])
    if r % 2:
        KnowledgeBase.open(kb_path).delete(doc_ids=[f"{tag}{r - 1}-{j}" for j in range(5)])
    if r % 3 == 2:
        KnowledgeBase.open(kb_path).compact()
"""


def batches_seen(kb_path) -> tuple[int, dict[str, int]]:
    """(docs per info, docs per batch tag as found by search) of one snapshot."""
    with KnowledgeBase.open(kb_path) as kb:
        hits = kb.search("batch", k=1000, fetch=False)
        per: dict[str, int] = {}
        for h in hits:
            per[h.doc_id.rsplit("-", 1)[0]] = per.get(h.doc_id.rsplit("-", 1)[0], 0) + 1
        return kb.info()["docs"], per


def test_two_writer_processes_take_turns_and_readers_see_whole_commits(kb):
    """Two processes add/delete/compact at once (the file lock makes them take turns); meanwhile a
    reader opens snapshot after snapshot: every batch of 5 is all there or not at all, and the counts
    in the manifest match what search finds."""
    gen0 = kb.info()["generation"]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(kb.path), tag, "6"], stderr=subprocess.PIPE)
             for tag in ("a", "b")]
    snapshots, bad = 0, []
    while any(p.poll() is None for p in procs):
        docs, per = batches_seen(kb.path)
        snapshots += 1
        if any(n != 5 for n in per.values()) or docs != len(DOCS) + sum(per.values()):
            bad.append((docs, per))
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read().decode()[-500:] for p in procs]
    assert not bad, bad[:3]
    docs, per = batches_seen(kb.path)
    assert sorted(per) == ["a1", "a3", "a5", "b1", "b3", "b5"] and docs == len(DOCS) + 30
    # every add and delete committed a generation of its own (compacting one clean segment commits nothing)
    assert KnowledgeBase.open(kb.path).info()["generation"] >= gen0 + 2 * (6 + 3)
    assert snapshots > 3


def test_an_old_snapshot_still_answers_after_its_files_are_gone(kb, tmp_path):
    """A reader keeps searching (and reporting) the snapshot it opened after a compaction removed
    that snapshot's segment directory: mapped arrays and open SQLite files outlive the unlink."""
    old = KnowledgeBase.open(kb.path)
    writer = KnowledgeBase.open(kb.path)
    writer.add([write_jsonl(tmp_path / "one.jsonl", [{"id": "owl", "content": "Owls and cats."}])])
    writer.compact()
    assert not (kb.path / "segments" / old.manifest["segments"][0]["name"]).exists()
    assert old.info()["docs"] == len(DOCS) and old.info()["size_bytes"] == 0
    assert [h.id for h in old.search("cats", k=10)] == [h.id for h in old.search("cats", k=10, fetch=False)]
    assert "owl-0" not in [h.id for h in old.search("cats", k=10)]


def test_a_writer_that_cannot_get_the_lock_fails_clearly(kb, tmp_path):
    """Another process holds the lock: a write with a short timeout names the cause, nothing changes."""
    from picorag.kb import write_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from picorag.kb import write_lock\nwith write_lock(Path(sys.argv[1])):\n"
                               "    print('locked', flush=True); time.sleep(30)", str(kb.path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = state(kb.path)
        with pytest.raises(PicoragError, match="locked by another write"), write_lock(kb.path, timeout=0.3):
            pass
        assert state(kb.path) == before
    finally:
        holder.kill()
        holder.wait()
    kb.add([write_jsonl(tmp_path / "one.jsonl", [{"id": "owl", "content": "Owls and cats."}])])  # lock freed


# -- security: symbolic links in --from -----------------------------------------------------------------


def test_symlinks_in_inputs_never_hang_or_escape_silently(tmp_path):
    """A directory with a link loop, a link to a file and a directory outside, a dangling link and a
    self-link: the walk ends, reads only what lies inside, and names every link it skipped."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret outside text")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("inside text")
    (src / "inner.txt").symlink_to(src / "a.txt")  # a link that stays inside is fine
    for name, target in [("link.txt", "../outside/secret.txt"), ("sub/outdir", "../../outside"), ("sub/loop", ".."),
                         ("self.txt", "self.txt"), ("dangling.txt", "nowhere.txt")]:
        (src / name).symlink_to(target)
    warnings: list[str] = []
    kb = KnowledgeBase.build(tmp_path / "kb", [src], warn=warnings.append)
    assert sorted(h.doc_id.rsplit("/", 1)[-1] for h in kb.search("text", k=10)) == ["a.txt", "inner.txt"]
    assert not kb.search("secret")
    (warning,) = [w for w in warnings if "symbolic link" in w]
    for name in ("link.txt", "outdir", "self.txt (broken or a loop)", "dangling.txt (broken or a loop)"):
        assert name in warning, warning
    with pytest.raises(PicoragError, match="broken symbolic link"):
        KnowledgeBase.build(tmp_path / "kb2", [src / "self.txt"])


# -- security: the API key ---------------------------------------------------------------------------------


def test_api_key_is_compared_in_constant_time(kb, monkeypatch):
    """Every guarded request goes through hmac.compare_digest (its time does not depend on where the
    strings differ); a prefix, a longer key, an empty one and non-ASCII ones are all refused."""
    import hmac

    import picorag.server as server

    calls, real = [], hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(server.hmac, "compare_digest", spy)
    with TestClient(create_app(kb.path, api_key="s3cret-key"), raise_server_exceptions=False) as c:
        for given in ["s3cret", "s3cret-key-and-more", "", "S3CRET-KEY", "s3cret-kéy"]:
            r = c.post("/search", json={"query": "cats"}, headers={"Authorization": f"Bearer {given}".encode()})
            assert r.status_code == 401 and "API key" in r.json()["error"]["message"], (given, r.text)
        assert c.post("/search", json={"query": "cats"},
                      headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
    assert len(calls) == 6 and all(b == b"s3cret-key" for _, b in calls)


def test_arrays_load_safely_from_many_threads(tmp_path):
    """The server opens KBs in several threads. numpy parses .npy headers with ast.literal_eval, which
    CPython 3.11 breaks when the GC runs Python code mid-parse and another thread parses too
    ("SystemError: AST constructor recursion depth mismatch": 1-3 in 12,000 plain np.load calls here,
    and a 500 in bench_load.py). integrity.load_array parses one header at a time."""
    import gc
    import threading

    import numpy as np

    from picorag.integrity import load_array

    class Junk:
        def __del__(self):  # Python code that the GC runs in whichever thread it interrupts
            sum(range(50))

    np.save(tmp_path / "a.npy", np.arange(10))
    errors: list[str] = []

    def work() -> None:
        for _ in range(1500):
            a, b = Junk(), Junk()
            a.b, b.a = b, a  # a cycle: only the GC frees it
            try:
                load_array(tmp_path / "a.npy", mmap_mode="r")
            except SystemError as e:
                errors.append(str(e))

    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(5)
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gc.set_threshold(*threshold)
        sys.setswitchinterval(interval)
    assert errors == []
