"""Server under load: 10,000 requests at concurrency 32 mixing search, ask and add, on loopback.

    .venv/bin/python bench/bench_load.py                         # 10,000 requests, 32 in flight
    .venv/bin/python bench/bench_load.py --requests 2000 --name load-small
    .venv/bin/python bench/bench_load.py --add-share 0 --name load-readonly   # memory without writes

`picorag serve` runs in a subprocess (bench_server.start_server) over a fresh KB built from the
bundled corpora (examples/law + examples/wiki: 286 documents). 32 kept-alive connections send a
seeded mix: 80% POST /search (bm25, questions cycling through examples' titles and statute
phrases), 19% POST /ask (extractive generator), 1% POST /documents (one document, replacing one of
20 ids with new text, so the KB changes under the readers and every add is a commit). Every
response must be 200 with the expected shape (hits, an answer, a chunk written): anything else is
an error. The server's RSS is sampled every 0.25 s, so the plot shows whether memory is flat.

Writes bench/out/<name>.json and .md, plots docs/img/<name>.png, prints the markdown.
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import http, proc_cpu_s, proc_peak_rss_mb, start_server
from common import IMG, OUT, ROOT, cpu_info, git_commit, loadavg, md_table, percentile, pyplot, write_json, write_text

QUERIES = ["盗窃公私财物数额较大", "不可抗力 免除责任", "交通事故 逃逸 赔偿", "公民的基本权利", "合同 违约责任",
           "history of the Roman empire", "photosynthesis in plants", "who wrote the theory of relativity",
           "largest city", "river", "war", "music band album", "最高人民法院", "国家机构", "婚姻 家庭"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(path: str, body: dict) -> bytes:
    data = json.dumps(body, ensure_ascii=False).encode()
    return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (path.encode(), len(data), data))


def plan(n: int, seed: int, add_share: float = 0.01) -> list[tuple[str, bytes]]:
    """The seeded request mix: (kind, raw HTTP request); asks are 19% whatever the add share."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = rng.choice(QUERIES)
        x = rng.random()
        if x < add_share:
            doc = {"id": f"load-{i % 20}", "title": f"Load {i}", "content": f"Load test document {i}: {q} " * 5}
            out.append(("add", post("/documents", {"documents": [doc]})))
        elif x < add_share + 0.19:
            out.append(("ask", post("/ask", {"question": q, "k": 3})))
        else:
            out.append(("search", post("/search", {"query": q, "k": 5, "mode": "bm25"})))
    return out


def check(kind: str, status: int, body: bytes) -> str | None:
    """None when the response is what a client expects, else the error."""
    if status != 200:
        return f"{kind} {status}: {body[:200]!r}"
    r = json.loads(body)
    ok = {"search": lambda: isinstance(r.get("hits"), list), "ask": lambda: isinstance(r.get("answer"), str),
          "add": lambda: r.get("chunks") == 1 or r.get("unchanged") == 1}[kind]()
    return None if ok else f"{kind}: unexpected body {body[:200]!r}"


async def load(url: str, requests: list[tuple[str, bytes]], concurrency: int, done: list[int]) -> dict:
    host, port = url.removeprefix("http://").split(":")
    lat: dict[str, list[float]] = {"search": [], "ask": [], "add": []}
    errors: list[str] = []
    it = iter(requests)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for kind, raw in it:
                t0 = time.perf_counter()
                try:
                    status, body = await http(reader, writer, raw)
                    problem = check(kind, status, body)
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    problem = f"{kind}: {type(e).__name__}: {e}"
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                lat[kind].append(time.perf_counter() - t0)
                done[0] += 1
                if problem:
                    errors.append(problem)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies": lat, "errors": errors, "wall_s": time.perf_counter() - t0}


def run(args: argparse.Namespace) -> dict:
    from picorag.kb import KnowledgeBase

    kb_path = OUT / "kbs" / "load"
    shutil.rmtree(kb_path, ignore_errors=True)
    KnowledgeBase.build(kb_path, [*sorted((ROOT / "examples" / "law").glob("*.txt")),
                                  ROOT / "examples" / "wiki" / "passages.jsonl"])
    proc, url = start_server(kb_path, threads=1)
    try:
        done, samples, stop = [0], [], threading.Event()

        def sample() -> None:
            t0 = time.perf_counter()
            while not stop.is_set():
                samples.append((time.perf_counter() - t0, done[0], rss_mb(proc.pid)))
                stop.wait(0.25)

        asyncio.run(load(url, plan(200, seed=1), args.concurrency, [0]))  # warm-up: jieba, SQLite pages
        la0, cpu0 = loadavg(), proc_cpu_s(proc.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        r = asyncio.run(load(url, plan(args.requests, args.seed, args.add_share), args.concurrency, done))
        stop.set()
        sampler.join()
        cpu, peak = proc_cpu_s(proc.pid) - cpu0, proc_peak_rss_mb(proc.pid)
        info = KnowledgeBase.open(kb_path).info()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    all_ms = [s * 1e3 for v in r["latencies"].values() for s in v]
    per_kind = {k: {"n": len(v), "p50_ms": percentile([s * 1e3 for s in v], 50),
                    "p99_ms": percentile([s * 1e3 for s in v], 99)} for k, v in r["latencies"].items()}
    after_warm = [s for s in samples if s[1] >= args.requests * 0.1]
    return {"requests": len(all_ms), "concurrency": args.concurrency, "add_share": args.add_share,
            "errors": len(r["errors"]),
            "error_examples": r["errors"][:5], "wall_s": r["wall_s"], "rps": len(all_ms) / r["wall_s"],
            "p50_ms": percentile(all_ms, 50), "p99_ms": percentile(all_ms, 99), "per_kind": per_kind,
            "server_peak_rss_mb": peak, "server_cpu_ms_per_req": cpu * 1e3 / len(all_ms),
            "rss_at_10pct_mb": after_warm[0][2] if after_warm else None,
            "rss_end_mb": samples[-1][2] if samples else None, "rss_samples": samples,
            "kb_after": {"docs": info["docs"], "segments": len(info["segments"]), "generation": info["generation"]},
            "loadavg_before": la0, "loadavg_after": loadavg(), "cpu": cpu_info(), "commit": git_commit()}


def report(res: dict) -> str:
    rows = [[k, v["n"], v["p50_ms"], v["p99_ms"]] for k, v in res["per_kind"].items()]
    rows.append(["all", res["requests"], res["p50_ms"], res["p99_ms"]])
    growth = (res["rss_end_mb"] - res["rss_at_10pct_mb"]) if res["rss_at_10pct_mb"] else float("nan")
    return "\n".join([
        f"{res['requests']:,} requests at concurrency {res['concurrency']}: **{res['errors']} errors**, "
        f"{res['rps']:.0f} req/s, server peak RSS {res['server_peak_rss_mb']:.0f} MB "
        f"(RSS {res['rss_at_10pct_mb']:.0f} MB after 10% of the run, {res['rss_end_mb']:.0f} MB at the end: "
        f"{growth:+.0f} MB), {res['server_cpu_ms_per_req']:.1f} ms server CPU per request; "
        f"KB after: {res['kb_after']['docs']} docs in {res['kb_after']['segments']} segments; "
        f"load average {res['loadavg_before']} → {res['loadavg_after']} on {res['cpu']['nproc']} CPUs.", "",
        md_table(["request", "n", "p50 ms", "p99 ms"], rows)])


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    s = res["rss_samples"]
    ax.plot([x[1] for x in s], [x[2] for x in s], color="tab:blue")
    ax.set_xlabel("requests completed")
    ax.set_ylabel("server RSS (MB)", color="tab:blue")
    ax.set_ylim(0, max(x[2] for x in s) * 1.2)
    adds = res.get("add_share", 0.01)
    ax.set_title(f"picorag serve: {res['requests']:,} requests ({1 - adds - 0.19:.0%} search, 19% ask, "
                 f"{adds:.0%} add), concurrency {res['concurrency']}, {res['errors']} errors", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--add-share", type=float, default=0.01, help="share of POST /documents (default 0.01)")
    ap.add_argument("--name", default="load")
    args = ap.parse_args()
    res = run(args)
    write_json(OUT / f"{args.name}.json", res)
    text = report(res)
    write_text(OUT / f"{args.name}.md", text + "\n")
    plot(res, IMG / f"{args.name}.png")
    print(text)
    if res["errors"]:
        print("errors, e.g.:", *res["error_examples"], sep="\n  ")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
