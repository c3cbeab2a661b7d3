"""Kill a KB writer with SIGKILL at random moments and check that the KB is always a committed state.

The writer adds batches of documents, deletes some and compacts now and then (every fourth trial:
an HTTP server taking the batches through POST /documents), and after every
commit appends the set of live batches to a log (fsynced). A SIGKILL can land anywhere: inside
SQLite, between array files, between the segment rename and the manifest replace... Afterwards the
KB must open, hold exactly the last logged state or the one after it (the commit happened, the log
line did not), find every live document, show none of the deleted ones, and accept the next write.

    python tests/crash_harness.py 100      # the full run (bench); tests/test_crash.py runs a few trials
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 20
PRELUDE = r"""
import json, os, sys
from pathlib import Path
from picorag.kb import KnowledgeBase
kb_path, log, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
kb = KnowledgeBase.open(kb_path)
live = sorted({int(c["doc_id"][1:].split("-")[0]) for s in kb.segments for c in s.store.iter_chunks()
               if s.live[c["row"]] and c["doc_id"].startswith("b")})  # the KB, not the log, is the truth

def commit(state):
    with open(log, "a") as f:
        f.write(json.dumps(sorted(state)) + "\n"); f.flush(); os.fsync(f.fileno())

commit(live)
start = int(log.read_text().count("\n")) * 10  # batch numbers never reused across trials
"""
# a server write: the server (uvicorn in a thread) and its client share the process the kill lands on,
# so it dies mid-request, inside POST /documents' add
SERVER_WRITER = PRELUDE + r"""
import socket, threading, time
import httpx, uvicorn
from picorag.server import create_app
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
server = uvicorn.Server(uvicorn.Config(create_app(kb_path), host="127.0.0.1", port=port, log_level="error"))
threading.Thread(target=server.run, daemon=True).start()
while not server.started:
    time.sleep(0.02)
with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
    for i in range(start, start + 1000):
        docs = [{"id": f"b{i}-{j}", "content": f"batch{i} document {j} " + "filler " * 30} for j in range(20)]
        r = c.post("/documents", json={"documents": docs})
        assert r.status_code == 200 and r.json()["chunks"] == 20, r.text
        live.append(i); commit(live)
"""
WRITER = PRELUDE + r"""
for i in range(start, start + 1000):
    src = work / f"b{i}.jsonl"
    src.write_text("".join(json.dumps({"id": f"b{i}-{j}", "text": f"batch{i} document {j} " + "filler " * 30}) + "\n"
                           for j in range(20)))
    kb.add([src]); live.append(i); commit(live)
    if i % 3 == 2 and len(live) > 1:
        gone = live[len(live) // 2]
        kb.delete(doc_ids=[f"b{gone}-{j}" for j in range(20)]); live.remove(gone); commit(live)
    if i % 5 == 4:
        kb.compact(); commit(live)
"""


def live_batches(kb) -> set[int]:
    return {int(c["doc_id"][1:].split("-")[0]) for seg in kb.segments for c in seg.store.iter_chunks()
            if seg.live[c["row"]] and c["doc_id"].startswith("b")}


def check(kb_path: Path, log: Path) -> str | None:
    """None when the KB holds the last logged state or the one right after it, whole and searchable."""
    from picorag.kb import KnowledgeBase

    logged = set(json.loads(log.read_text().splitlines()[-1])) if log.exists() else set()
    kb = KnowledgeBase.open(kb_path)  # raises if damaged
    live = live_batches(kb)
    added, removed = live - logged, logged - live
    # the kill may land after a commit and before its log line: one add or one delete ahead is fine
    if not (live == logged or (not removed and len(added) == 1 and min(added) > max(logged, default=-1))
            or (not added and len(removed) == 1)):
        return f"live batches {sorted(live)}, but the last logged state is {sorted(logged)}"
    info = kb.info()
    if info["docs"] != BATCH * len(live) or info["chunks"] != BATCH * len(live):
        return f"info says {info['docs']} docs / {info['chunks']} chunks for {len(live)} live batches"
    for b in live:
        hits = kb.search(f"batch{b}", k=BATCH + 5)
        if {h.doc_id for h in hits} != {f"b{b}-{j}" for j in range(BATCH)}:
            return f"batch {b} is live but search finds {len(hits)} hits"
    for b in removed:
        if kb.search(f"batch{b}", k=5):
            return f"deleted batch {b} is still found"
    return None


def trial(seed: int, root: Path, max_delay: float = 1.5) -> str | None:
    """One kill at a random moment; then check, and check that the next write succeeds."""
    from picorag.kb import KnowledgeBase

    rng = random.Random(seed)
    kb_path, log, work = root / "kb", root / "log.jsonl", root / "work"
    work.mkdir(exist_ok=True)
    if not kb_path.exists():
        seed_doc = work / "seed.jsonl"
        seed_doc.write_text(json.dumps({"id": "seed", "text": "seed document"}) + "\n")
        KnowledgeBase.build(kb_path, [seed_doc]).delete(doc_ids=["seed"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    server = seed % 4 == 3  # every fourth trial kills a server in the middle of POST /documents
    p = subprocess.Popen([sys.executable, "-c", SERVER_WRITER if server else WRITER, str(kb_path), str(log),
                          str(work)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # python + numpy start-up (and the server's), then a random point
    time.sleep(2.5 + rng.random() * (max_delay + 2) if server else 0.8 + rng.random() * max_delay)
    p.send_signal(signal.SIGKILL)
    _, err = p.communicate()
    if p.returncode != -signal.SIGKILL:
        return f"writer ended by itself (rc {p.returncode}): {err.decode()[-300:]}"
    problem = check(kb_path, log)
    if problem:
        return problem
    nxt = work / "next.jsonl"  # the next write must succeed (no stale lock, no leftovers in the way)
    nxt.write_text(json.dumps({"id": f"probe{seed}", "text": f"probe{seed} after the crash"}) + "\n")
    kb = KnowledgeBase.open(kb_path)
    kb.add([nxt])
    if [h.doc_id for h in kb.search(f"probe{seed}")] != [f"probe{seed}"]:
        return "the write after the crash is not searchable"
    kb.delete(doc_ids=[f"probe{seed}"])
    return None


def run(trials: int, seed: int = 0) -> list[tuple[int, str]]:
    failures = []
    with tempfile.TemporaryDirectory(prefix="crash-") as tmp:
        for t in range(trials):
            problem = trial(seed * 1000 + t, Path(tmp))
            if problem:
                failures.append((t, problem))
            print(f"trial {t + 1}/{trials}: {problem or 'ok'}", file=sys.stderr, flush=True)
    return failures


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    fails = run(n)
    print(f"{n - len(fails)} passed, {len(fails)} failed")
    for t, problem in fails:
        print(f"  trial {t}: {problem}")
    raise SystemExit(1 if fails else 0)
