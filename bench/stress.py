"""`make stress`: the reliability runs too long for `make test`, with the figures docs/RELIABILITY.md quotes.

    .venv/bin/python bench/stress.py                    # all parts, one after the other
    .venv/bin/python bench/stress.py --parts fuzz,huge  # some parts (each writes bench/out/stress-PART.json)
    .venv/bin/python bench/stress.py --report           # only merge the parts into bench/out/stress.md

Parts:
- crash: 100 seeded SIGKILL trials (tests/crash_harness.py: add/delete/compact, every fourth a server write);
- fuzz: tests/test_fuzz.py with 1,000 examples per property (10 properties: 10,000 inputs), counts per property;
- huge: a 200 MB one-line text file and a 50 MB JSON field (refused), and a 30 MB field (accepted, under the
  32 MB limit), each `picorag add` in a subprocess with its peak RSS;
- load: bench/bench_load.py, 10,000 requests at concurrency 32 mixing search/ask/add.
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, cpu_info, git_commit, loadavg, md_table, write_json, write_text

PY = str(ROOT / ".venv" / "bin" / "python")
PARTS = ("crash", "fuzz", "huge", "load")


def part_crash(trials: int = 100) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from crash_harness import run

    t0 = time.time()
    failures = run(trials, seed=0)
    return {"trials": trials, "server_trials": sum(1 for t in range(trials) if t % 4 == 3),
            "failures": len(failures), "failure_examples": failures[:5], "wall_s": time.time() - t0}


def part_fuzz(per_property: int = 1000) -> dict:
    report = OUT / "stress-fuzz-counts.json"
    report.unlink(missing_ok=True)
    env = {**os.environ, "PICORAG_FUZZ_EXAMPLES": str(per_property), "PICORAG_FUZZ_REPORT": str(report)}
    t0 = time.time()
    p = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    counts = json.loads(report.read_text()) if report.exists() else {}
    # cli.search.damaged: each damaged KB generated for the API properties is also searched through the CLI
    inputs = {k: v for k, v in counts.items() if not k.endswith(".rejected") and k != "cli.search.damaged"}
    tail = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-300:]
    return {"per_property": per_property, "inputs": sum(inputs.values()),
            "checks": sum(v for k, v in counts.items() if not k.endswith(".rejected")), "counts": counts,
            "rejected": sum(v for k, v in counts.items() if k.endswith(".rejected")),
            "failed_properties": 0 if p.returncode == 0 else tail, "pytest": tail, "wall_s": time.time() - t0}


def add_with_rss(kb: Path, src: Path) -> dict:
    """`picorag add KB SRC` in a subprocess: exit code, the error line, the child's own peak RSS."""
    t0 = time.time()
    p = subprocess.Popen([str(ROOT / ".venv" / "bin" / "picorag"), "add", str(kb), str(src)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(p.pid, 0)
    err = p.stderr.read().strip() if p.stderr else ""
    return {"input_mb": round(src.stat().st_size / 2**20), "rc": os.waitstatus_to_exitcode(status),
            "message": err.splitlines()[-1] if err else "", "peak_rss_mb": usage.ru_maxrss / 1024,
            "wall_s": time.time() - t0}


def part_huge() -> dict:
    from picorag.kb import KnowledgeBase

    out = {}
    with tempfile.TemporaryDirectory(prefix="huge-") as tmp:
        d = Path(tmp)
        (d / "seed.jsonl").write_text(json.dumps({"id": "seed", "content": "a small document"}) + "\n")
        KnowledgeBase.build(d / "kb", [d / "seed.jsonl"])
        words = " ".join(f"word{i % 5000}" for i in range(1_000_000)) + " "
        with open(d / "one-line-200mb.txt", "w") as f:  # 200 MB, no line break
            for _ in range(200 * 2**20 // len(words) + 1):
                f.write(words)
        out["200 MB one-line .txt"] = add_with_rss(d / "kb", d / "one-line-200mb.txt")
        (d / "one-line-200mb.txt").unlink()
        for name, mb in (("50 MB JSON field", 50), ("30 MB JSON field", 30)):
            text = (words * (mb * 2**20 // len(words) + 1))[: mb * 2**20]
            src = d / f"field-{mb}mb.jsonl"
            src.write_text(json.dumps({"id": f"giant{mb}", "content": text}) + "\n")
            out[name] = add_with_rss(d / "kb", src)
            src.unlink()
        out["kb_docs_after"] = KnowledgeBase.open(d / "kb").info()["docs"]
    return out


def part_load() -> dict:
    p = subprocess.run([PY, str(ROOT / "bench" / "bench_load.py"), "--requests", "10000", "--concurrency", "32"],
                       cwd=ROOT, capture_output=True, text=True)
    res = json.loads((OUT / "load.json").read_text()) if (OUT / "load.json").exists() else {}
    res.pop("rss_samples", None)
    return {**res, "rc": p.returncode}


def report() -> str:
    parts = {p: json.loads((OUT / f"stress-{p}.json").read_text()) for p in PARTS
             if (OUT / f"stress-{p}.json").exists()}
    lines = [f"Stress run (commit {git_commit()}, {cpu_info()['nproc']} CPUs, load average now {loadavg()}).", ""]
    if c := parts.get("crash"):
        lines.append(f"- **Crash trials**: {c['trials']} SIGKILLs ({c['server_trials']} of them a server mid-POST), "
                     f"**{c['failures']} failures**, {c['wall_s'] / 60:.1f} min.")
    if f := parts.get("fuzz"):
        lines.append(f"- **Fuzzing**: {f['inputs']:,} generated inputs ({f.get('checks', 0):,} checks with the CLI "
                     f"runs on damaged KBs; {f['rejected']:,} rejections, each a clear error), failing properties "
                     f"(tracebacks): **{f['failed_properties']}**, "
                     f"{f['wall_s'] / 60:.1f} min. Per property: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(f["counts"].items()) if not k.endswith(".rejected")))
    if h := parts.get("huge"):
        rows = [[k, v["input_mb"], v["rc"], f"{v['peak_rss_mb']:.0f}", f"{v['wall_s']:.1f}", v["message"][:90]]
                for k, v in h.items() if isinstance(v, dict)]
        lines += ["", md_table(["input", "MB", "exit", "peak RSS MB", "s", "message"], rows, align="lrrrrl")]
    if ld := parts.get("load"):
        lines += ["", f"- **Load**: {ld.get('requests', 0):,} requests at concurrency {ld.get('concurrency')}: "
                  f"**{ld.get('errors')} errors**, p50 {ld.get('p50_ms', 0):.0f} ms, p99 {ld.get('p99_ms', 0):.0f} ms, "
                  f"{ld.get('rps', 0):.0f} req/s, server peak RSS {ld.get('server_peak_rss_mb', 0):.0f} MB "
                  f"(after 10% {ld.get('rss_at_10pct_mb', 0):.0f} MB, end {ld.get('rss_end_mb', 0):.0f} MB)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--report", action="store_true", help="only merge the parts' results")
    args = ap.parse_args()
    failed = False
    if not args.report:
        for part in args.parts.split(","):
            la0 = loadavg()
            res = {"crash": part_crash, "fuzz": part_fuzz, "huge": part_huge, "load": part_load}[part]()
            res |= {"loadavg_before": la0, "loadavg_after": loadavg(), "commit": git_commit()}
            write_json(OUT / f"stress-{part}.json", res)
            failed |= bool(res.get("failures") or res.get("failed_properties") or res.get("errors") or res.get("rc"))
            print(f"{part}: done", flush=True)
    text = report()
    write_text(OUT / "stress.md", text + "\n")
    print(text)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
