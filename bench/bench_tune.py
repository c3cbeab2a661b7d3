"""`picorag tune` before/after, per retrieval mode, on three sets.

    .venv/bin/python bench/bench_tune.py [--only law|scifact] [--key-weight W]

    law      KB bench/out/kbs/law-e5-small (3 statutes, e5-small vectors), copied to bench/out/tune/law-e5
             - bench/data/law_vague_dev.jsonl: our 54 vague colloquial questions (hit@5, MRR@5)
             - ../shared/data/law/eval/law_eval_set.jsonl: the shared set, test only (must stay hit@5 1.00)
    scifact  KB bench/out/kbs/scifact-minilm, copied to bench/out/tune/scifact-minilm; BEIR test queries (nDCG@10)

Tune stores sentence keys made from each KB's own chunks only (picorag/tune.py) and chooses the key weight
on pseudo-queries from those chunks (`--key-weight W` fixes it, to compare); no question of any set above
is seen by tune, and only the dev set was used to choose its method and defaults. Key vectors are
cached by text under bench/out/tune/cache (embedding is the slow part); "embed s" is the time they took when
first embedded (at the load average then), "tune s" the rest of `tune` (cutting, storing).
Writes bench/out/tune.md, bench/out/tune.json and bench/out/tune.png.
"""

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import cpu_info, git_commit, loadavg, md_table, pyplot, write_json, write_text  # noqa: E402

from picorag.evaluate import evaluate  # noqa: E402
from picorag.kb import KnowledgeBase  # noqa: E402
from picorag.tune import TuneConfig, embed_keys, tune  # noqa: E402

OUT = ROOT / "bench" / "out"
WORK = OUT / "tune"
SHARED = ROOT.parent / "shared" / "data"
SETS = {
    "law": {"kb": OUT / "kbs" / "law-e5-small", "copy": WORK / "law-e5", "datasets": [
        ("vague dev (ours, 54)", ROOT / "bench" / "data" / "law_vague_dev.jsonl"),
        ("shared law set (test only, 100)", SHARED / "law" / "eval" / "law_eval_set.jsonl")]},
    "scifact": {"kb": OUT / "kbs" / "scifact-minilm", "copy": WORK / "scifact-minilm", "datasets": [
        ("SciFact test (300)", SHARED / "beir" / "scifact")]},
}
MODES = ("bm25", "dense", "hybrid")


def tuned_kb(name: str, cfg: TuneConfig) -> tuple[Path, dict]:
    """Copy the benchmark KB (never touch the original) and run `tune` on the copy, with key vectors
    taken from the cache where it has them."""
    spec = SETS[name]
    if spec["copy"].exists():
        shutil.rmtree(spec["copy"])
    shutil.copytree(spec["kb"], spec["copy"])
    kb = KnowledgeBase.open(spec["copy"])
    timing: dict[str, float] = {"this_run_s": 0.0, "embed_s": 0.0}  # keys, then the pseudo-queries
    t0 = time.perf_counter()
    rep = tune(kb, cfg, say=lambda m: print(f"  {m}", flush=True),
               embed=lambda texts: cached_embed(name, kb, texts, timing))
    total = time.perf_counter() - t0
    return spec["copy"], {**rep, "embed_s": timing["embed_s"], "tune_s": total - timing["this_run_s"]}


def cached_embed(name: str, kb: KnowledgeBase, texts: list[str], timing: dict) -> tuple[np.ndarray, np.ndarray]:
    """Key vectors through a per-KB text -> vector cache; only texts not seen before are embedded.
    Records in `timing` the seconds embedding all of them took (as measured when first embedded)."""
    texts_f, vecs_f, log_f = (WORK / "cache" / f"{name}-keys.{x}" for x in ("texts.json", "vecs.npy", "log.json"))
    cached = json.loads(texts_f.read_text(encoding="utf-8")) if texts_f.exists() else []
    vecs = np.load(vecs_f) if vecs_f.exists() else np.zeros((0, kb.manifest["dense"]["dim"]), np.float32)
    log = json.loads(log_f.read_text()) if log_f.exists() else {"embedded": 0, "seconds": 0.0}
    where = {t: i for i, t in enumerate(cached)}
    missing = list(dict.fromkeys(t for t in texts if t not in where))
    t0 = time.perf_counter()
    if missing:
        new, _ = embed_keys(kb, missing)
        log = {"embedded": log["embedded"] + len(missing), "seconds": log["seconds"] + time.perf_counter() - t0}
        texts_f.parent.mkdir(parents=True, exist_ok=True)
        cached += missing
        vecs = np.concatenate([vecs, new])
        texts_f.write_text(json.dumps(cached, ensure_ascii=False), encoding="utf-8")
        np.save(vecs_f, vecs)
        log_f.write_text(json.dumps(log))
        where = {t: i for i, t in enumerate(cached)}
    timing["this_run_s"] += time.perf_counter() - t0
    uniq = len(set(texts))
    timing["embed_s"] += log["seconds"] / max(log["embedded"], 1) * uniq  # seconds per key when first embedded
    return vecs[[where[t] for t in texts]], np.ones(len(texts), dtype=bool)


def measure(kb_dir: Path, dataset: Path) -> dict[str, dict[str, dict]]:
    kb = KnowledgeBase.open(kb_dir)
    out: dict[str, dict[str, dict]] = {}
    for mode in MODES:
        for tuned in (False, True):
            if mode == "bm25" and tuned:  # BM25 does not use the keys
                out[mode]["after"] = out[mode]["before"]
                continue
            opts = {"mode": mode, "tuned": tuned, "fetch": not dataset.is_dir()}
            res = evaluate(lambda q, n, o=opts: kb.search(q, k=n, **o), dataset, k=5,
                           search_many=lambda qs, n, o=opts: kb.search_many(qs, k=n, **o))
            out.setdefault(mode, {})["after" if tuned else "before"] = {
                key: res[key] for key in ("hit@5", "mrr@5", "ndcg@10", "recall@100")}
            print(f"  {dataset.name} {mode:6s} {'tuned' if tuned else 'plain'}: "
                  + "  ".join(f"{key} {v:.3f}" for key, v in out[mode]["after" if tuned else "before"].items()),
                  flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=list(SETS))
    ap.add_argument("--key-weight", type=float, help="fixed w (default: learned per KB by tune)")
    args = ap.parse_args()
    cfg = TuneConfig(key_weight=args.key_weight)
    old = json.loads((OUT / "tune.json").read_text()) if (OUT / "tune.json").exists() else {}
    results: dict = {"load_before": loadavg(), "cpu": cpu_info(), "commit": git_commit(), "config": asdict(cfg),
                     "sets": old.get("sets", {}) if args.only else {}}  # --only updates one set in place
    for name in [args.only] if args.only else list(SETS):
        print(f"{name}: tuning", flush=True)
        kb_dir, train = tuned_kb(name, cfg)
        print(f"  {train}", flush=True)
        results["sets"][name] = {"train": train, "eval": {label: measure(kb_dir, ds)
                                                          for label, ds in SETS[name]["datasets"]}}
    results["load_after"] = loadavg()
    write_json(OUT / "tune.json", results)
    write_text(OUT / "tune.md", report(results))
    plot(results)
    print(report(results))


def report(r: dict) -> str:
    lines = [f"commit {r['commit']}; load average before {r['load_before']}, after {r['load_after']}; "
             f"{r['cpu'].get('model', '')} ({r['cpu'].get('cores', '?')} cores)", ""]
    rows = []
    for s in r["sets"].values():
        for label, ev in s["eval"].items():
            metrics = ("ndcg@10", "recall@100") if "SciFact" in label else ("hit@5", "mrr@5")
            for mode in MODES:
                b, a = ev[mode]["before"], ev[mode]["after"]
                rows.append([label, mode] + [f"{b[m]:.3f} → {a[m]:.3f}" for m in metrics]
                            + [", ".join(metrics)])
    lines.append(md_table(["set", "mode", "first metric: before → after", "second", "metrics"], rows))
    lines += ["", md_table(["KB", "chunks", "sentence keys", "key weight", "pseudo-query MRR@10 per w", "embed s",
                            "tune s (rest)"],
                           [[n, s["train"]["chunks"], s["train"]["keys"], f"{s['train'].get('key_weight', 0.7):g}",
                             " ".join(f"{w}:{m:.3f}" for w, m in s["train"].get("weight_learning", {})
                                      .get("mrr@10", {}).items()) or "(fixed)",
                             f"{s['train']['embed_s']:.0f}", f"{s['train']['tune_s']:.1f}"]
                            for n, s in r["sets"].items()])]
    return "\n".join(lines) + "\n"


def plot(r: dict) -> None:
    plt = pyplot()
    panels = [(name, label, ev) for name, s in r["sets"].items() for label, ev in s["eval"].items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (_, label, ev) in zip(axes[0], panels, strict=True):
        metric = "ndcg@10" if "SciFact" in label else "hit@5"
        x = np.arange(len(MODES))
        ax.bar(x - 0.2, [ev[m]["before"][metric] for m in MODES], 0.4, label="plain")
        ax.bar(x + 0.2, [ev[m]["after"][metric] for m in MODES], 0.4, label="tuned")
        ax.set_xticks(x, MODES)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{label}\n{metric}", fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "tune.png", dpi=110)


if __name__ == "__main__":
    main()
