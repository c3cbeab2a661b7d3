"""Multi-hop query writing on wiki2hop (refrag): pretrain -> supervised warm start -> REINFORCE -> evaluation.

    .venv/bin/python bench/bench_refrag.py              # every stage whose output is missing, then eval + report
    .venv/bin/python bench/bench_refrag.py --redo warm  # redo one stage and every stage after it

Stages (outputs under bench/out/refrag/; a stage is skipped when its output exists):
  train-set  bench/out/multihop/wiki2hop_train.jsonl: `bench_multihop.py build --train 3000` (the wiki2hop
             recipe, seed 1, no article that is A or B of a wiki2hop.jsonl question)
  pretrain   `picorag train pretrain --kb bench/out/kbs/wiki-bm25` (all 111,639 passages; tokenizer included)
  warm-data  warm.jsonl: conversations rendered as refrag's episode prompt (refrag.query_messages: the
             instruction, the multi_hop retrieval message with the 5 hop-1 passages, the question) whose
             answer is the bridge title; questions whose hop 1 lacks A are left out (nothing to read the
             title from); plus N_CLOZE single-passage cloze conversations of the same shape (cloze_data)
  warm       `picorag train rag-finetune --data warm.jsonl --init base`
  refrag     `picorag train refrag-finetune --queries wiki2hop_train.jsonl --init warm` (2 hops x 5)
  eval       both gold passages among the 10 returned, on wiki2hop.jsonl's dev and test splits: plain k=10,
             the bridge-name strategy 2 x 5, each model writing hop 2 greedily (2 x 5), and the bridge title
             itself as hop 2's query (an upper bound for a model that writes the title)
Writes bench/out/refrag.{md,json,png} and docs/img/refrag.png. One torch thread (LAB_THREADS to change it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IMG, OUT, ROOT, cpu_info, limit_threads, loadavg, md_table, write_json, write_text  # noqa: E402

THREADS = int(os.environ.get("LAB_THREADS", "1"))
limit_threads(THREADS)

RUN = OUT / "refrag"
KB = OUT / "kbs" / "wiki-bm25"
SET = ROOT / "bench" / "data" / "wiki2hop.jsonl"
TRAIN_SET = OUT / "multihop" / "wiki2hop_train.jsonl"
HOPS, PER_HOP = 2, 5
N_CLOZE = 8000  # single-passage cloze conversations added to the warm start (see cloze_data)
STAGES = ("train-set", "pretrain", "warm-data", "warm", "refrag", "eval")
# the settings of the reported run; choices were made on the dev split and the training questions only
PRETRAIN = ["--kb", str(KB.relative_to(ROOT)), "--steps", "360", "--batch-size", "8", "--seq-len", "512",
            "--n-layer", "4", "--n-head", "4", "--n-embd", "192", "--block-pattern", "T,T,T,T",
            "--vocab-size", "4096", "--eval-every", "60"]
WARM = ["--steps", "800", "--batch-size", "8", "--lr", "2e-3", "--eval-every", "100"]
REFRAG = ["--steps", "200", "--batch-size", "8", "--lr", "2e-4", "--max-hops", str(HOPS),
          "--top-k-per-hop", str(PER_HOP)]


def picorag(args: list[str], out: Path, log: Path) -> tuple[dict, str]:
    """Run `python -m picorag ARGS --out OUT` with one thread, its progress bar going to `log`; (the summary
    the checkpoint's config.json holds, the command as typed)."""
    args = [*args, "--out", str(out.relative_to(ROOT))]
    shown = "OMP_NUM_THREADS=1 .venv/bin/python -m picorag " + " ".join(args)
    print(f"$ {shown}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    with open(log, "w", encoding="utf-8") as err:
        p = subprocess.run([sys.executable, "-m", "picorag", *args], cwd=ROOT, env=env, stdout=err, stderr=err)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {shown}; see {log}")
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    return {k: v for k, v in meta.items() if k not in ("format", "version", "model")}, shown


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def warm_data(kb, rows: list[dict]) -> tuple[list[dict], dict[str, int]]:
    from picorag.prompt import document
    from picorag.refrag import query_messages

    out, why = [], Counter()
    for r in rows:
        hits = kb.search(r["question"], k=PER_HOP)  # what hop 1 of an episode retrieves
        ids = {h.id for h in hits}
        if r["gold"][0] not in ids:
            why["A not in hop 1"] += 1  # the bridge cannot be read off the passages
            continue
        why["B already in hop 1 (kept: the same reading task)"] += r["gold"][1] in ids
        hops = [{"hop": 1, "query": r["question"], "documents": [document(h) for h in hits]}]
        out.append({"messages": [*query_messages(r["question"], hops), {"role": "assistant", "content": r["bridge"]}]})
    why["kept"] = len(out)
    return out, dict(why)


def cloze_data(kb, n: int, exclude: set[str], seed: int = 2) -> list[dict]:
    """`n` more warm-start conversations of the same shape from random passages: a sentence with one
    capitalised name (1-4 words, once in the sentence, not its first word) replaced by X; the answer is the
    name. The same reading task as the 2-hop questions (find the sentence, copy what X stands for), without
    the bridge-title conditions that leave only ~1,700 of those. Articles in `exclude` are not used."""
    import gzip
    import random
    import re

    from common import DATA

    from picorag.prompt import document
    from picorag.refrag import query_messages

    name = re.compile(r"(?<=\s)[A-Z][a-z]+(?:\s[A-Z][a-z]+){0,3}")
    sent = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
    passages = [json.loads(line) for line in gzip.open(DATA / "wiki" / "passages.jsonl.gz", "rt", encoding="utf-8")]
    rnd = random.Random(seed)
    rnd.shuffle(passages)
    out = []
    for p in passages:
        if p["title"] in exclude:
            continue
        sents = [x for x in sent.split(p["text"]) if len(x.split()) >= 8]
        if not sents:
            continue
        x = rnd.choice(sents)
        names = [m.group() for m in name.finditer(x) if len(m.group()) >= 4 and x.count(m.group()) == 1]
        if not names:
            continue
        span = rnd.choice(names)
        question = f'Which entity is X in: "{x.replace(span, "X")}"?'
        hits = kb.search(question, k=PER_HOP)
        if f"{p['id']}-0" not in {h.id for h in hits}:
            continue
        hops = [{"hop": 1, "query": question, "documents": [document(h) for h in hits]}]
        out.append({"messages": [*query_messages(question, hops), {"role": "assistant", "content": span}]})
        if len(out) == n:
            break
    return out


def evaluate(kb, rows: list[dict], models: dict[str, Path]) -> dict:
    """Per method and split: A found, B found, both found; for the models also how often hop 2's query is
    the bridge title exactly, or contains it."""
    from tqdm import tqdm

    from picorag.checkpoint import load_checkpoint
    from picorag.refrag import run_episode
    from picorag.strategies import retrieve

    def hop2_by(query_of):
        def fn(r):
            first = kb.search(r["question"], k=PER_HOP)
            seen = {h.id for h in first}
            q2 = query_of(r)
            more = [h for h in kb.search(q2, k=PER_HOP + len(seen)) if h.id not in seen][:PER_HOP]
            return [h.id for h in first + more], q2
        return fn

    methods = {"plain, k=10": lambda r: ([h.id for h in kb.search(r["question"], k=10)], None),
               f"bridge names (no model), {HOPS} hops x {PER_HOP}": lambda r: (
                   [h.id for h in retrieve(kb, r["question"], "multi-hop", None, max_hops=HOPS,
                                           top_k_per_hop=PER_HOP)[0]], None),
               f"oracle: the bridge title as hop 2's query, {HOPS} x {PER_HOP}": hop2_by(lambda r: r["bridge"])}
    for name, path in models.items():
        model, tok, _ = load_checkpoint(path)
        model.eval()

        def fn(r, model=model, tok=tok):
            ep = run_episode(model, tok, kb, {"question": r["question"], "gold": r["gold"]}, HOPS, PER_HOP,
                             temperature=0.0)
            return [d["id"] for h in ep.hops for d in h["documents"]], (ep.hops[1]["query"] if len(ep.hops) > 1
                                                                        else None)
        methods[f"{name} writes hop 2, {HOPS} x {PER_HOP}"] = fn
    result, examples = {}, {}
    for name, fn in methods.items():
        t0, per = time.perf_counter(), {}
        for r in tqdm(rows, desc=name[:40], leave=False, disable=None):
            ids, q2 = fn(r)
            x = per.setdefault(r["split"], Counter())
            x["n"] += 1
            x["a"] += r["gold"][0] in ids
            x["b"] += r["gold"][1] in ids
            x["both"] += set(r["gold"]) <= set(ids)
            x["passages"] += len(ids)
            if q2 is not None and "writes" in name:
                x["wrote"] += 1
                x["exact"] += q2.strip() == r["bridge"]
                x["names"] += r["bridge"] in q2
                x["again"] += q2 == r["question"]  # an empty query falls back to the question
                if len(examples.setdefault(name, [])) < 8 and r["split"] == "dev":
                    examples[name].append({"id": r["id"], "bridge": r["bridge"], "query": q2,
                                           "both": set(r["gold"]) <= set(ids)})
        stat = {s: {"n": x["n"], **{k: x[k] / x["n"] for k in ("a", "b", "both", "passages")},
                    **({"wrote": x["wrote"], "exact": x["exact"] / max(x["wrote"], 1),
                        "names": x["names"] / max(x["wrote"], 1), "again": x["again"] / max(x["wrote"], 1)}
                       if "writes" in name else {})}
                for s, x in per.items()}
        stat["ms_per_question"] = (time.perf_counter() - t0) * 1000 / len(rows)
        result[name] = stat
    return {"methods": result, "examples": examples}


def plot(log_rows: list[dict], pre_log: Path, path: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    steps = [r["step"] for r in log_rows]
    rew = np.array([r["reward"] for r in log_rows])
    win = 20
    ax1.plot(steps, rew, color="0.75", lw=0.8, label="mean reward of the step's episodes")
    if len(rew) >= win:
        ax1.plot(steps[win - 1:], np.convolve(rew, np.ones(win) / win, "valid"), color="C0",
                 label=f"{win}-step moving mean")
    wrote = [(i, r["reward_wrote"]) for i, r in enumerate(log_rows) if r["reward_wrote"] is not None]
    if len(wrote) >= win:
        ax1.plot([steps[i] for i, _ in wrote[win - 1:]],
                 np.convolve([w for _, w in wrote], np.ones(win) / win, "valid"), color="C2",
                 label=f"{win}-step moving mean, episodes the model wrote in")
    ax1.plot(steps, [np.nan if r["baseline"] is None else r["baseline"] for r in log_rows], color="C1", lw=1,
             ls="--", label="baseline (running mean, episodes it wrote in)")
    ax1.set(xlabel="refrag-finetune step", ylabel="reward", title="REINFORCE on wiki2hop training questions")
    ax1.legend(fontsize=8)
    rows = list(csv.DictReader(pre_log.open(encoding="utf-8")))
    ax2.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], lw=0.8, label="train")
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    ax2.plot(*zip(*val), "o-", label="validation")
    ax2.set(xlabel="pretrain step", ylabel="loss (nats/token)", title="Pretraining on the Wikipedia passages")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def report(res: dict) -> str:
    head = ["method", "split", "n", "A found", "B found", "both found", "hop-2 query = title", "names title",
            "hop-2 query = the question"]
    rows = []
    for name, s in res["eval"]["methods"].items():
        for split in ("dev", "test"):
            if split in s:
                x = s[split]
                rows.append([name, split, x["n"], f"{x['a']:.3f}", f"{x['b']:.3f}", f"{x['both']:.3f}",
                             *(f"{x[k]:.2f}" if k in x else "–" for k in ("exact", "names", "again"))])
    md = md_table(head, rows) + "\n\n"
    st = res["stages"]
    pre, warm, rf = st.get("pretrain", {}), st.get("warm", {}), st.get("refrag", {})
    md += (f"Pretrain: {pre.get('params', 0):,} parameters, step {pre.get('step')}, loss {pre.get('loss')}, "
           f"validation {pre.get('val_loss')}, {pre.get('tokens_per_s', 0):,.0f} tokens/s, {pre.get('elapsed_s')} s. "
           f"Warm start: {st.get('warm-data', {}).get('kept')} 2-hop and {st.get('warm-data', {}).get('cloze')} "
           f"cloze conversations, loss {warm.get('loss')}, validation {warm.get('val_loss')}, {warm.get('seconds')} s. "
           f"Refrag: mean reward {rf.get('reward_first_10')} (first 10 steps) -> {rf.get('reward_last_10')} (last "
           f"10); in the episodes the model wrote in {rf.get('reward_wrote_first_10')} -> "
           f"{rf.get('reward_wrote_last_10')}; {rf.get('seconds', '?')} s.\n\nCommands:\n\n" +
           "".join(f"    {st[k]['command']}\n" for k in ("train-set", "pretrain", "warm", "refrag") if k in st))
    return md


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redo", choices=STAGES, help="redo this stage and the ones after it")
    p.add_argument("--until", choices=STAGES, help="stop after this stage (no report)")
    args = p.parse_args()
    RUN.mkdir(parents=True, exist_ok=True)
    state_path = RUN / "stages.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    redo = set(STAGES[STAGES.index(args.redo):]) if args.redo else set()
    outputs = {"train-set": TRAIN_SET, "pretrain": RUN / "base", "warm-data": RUN / "warm.jsonl",
               "warm": RUN / "warm", "refrag": RUN / "refrag"}

    def todo(stage: str) -> bool:
        if args.until and STAGES.index(stage) > STAGES.index(args.until):
            return False
        return stage in redo or stage not in state or (stage in outputs and not outputs[stage].exists())

    def save() -> None:
        write_json(state_path, state)

    if todo("train-set"):
        subprocess.run([sys.executable, str(ROOT / "bench" / "bench_multihop.py"), "build", "--train", "3000"],
                       check=True)
        state["train-set"] = {"questions": len(read_rows(TRAIN_SET)),
                              "command": ".venv/bin/python bench/bench_multihop.py build --train 3000"}
        save()
    if todo("pretrain"):
        r, cmd = picorag(["train", "pretrain", *PRETRAIN], RUN / "base", RUN / "pretrain.log")
        state["pretrain"] = {**r, "command": cmd}
        save()

    from picorag import KnowledgeBase

    with KnowledgeBase.open(KB) as kb:
        if todo("warm-data"):
            convs, why = warm_data(kb, read_rows(TRAIN_SET))
            held = read_rows(SET)
            cloze = cloze_data(kb, N_CLOZE, {r["a_title"] for r in held} | {r["bridge"] for r in held})
            why["cloze"] = len(cloze)
            convs += cloze
            (RUN / "warm.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs),
                                            encoding="utf-8")
            state["warm-data"] = why
            save()
        if todo("warm"):
            r, cmd = picorag(["train", "rag-finetune", "--data", str((RUN / "warm.jsonl").relative_to(ROOT)),
                              "--init", str((RUN / "base").relative_to(ROOT)), *WARM], RUN / "warm", RUN / "warm.log")
            state["warm"] = {**r, "command": cmd}
            save()
        if todo("refrag"):
            r, cmd = picorag(["train", "refrag-finetune", "--kb", str(KB.relative_to(ROOT)), "--queries",
                              str(TRAIN_SET.relative_to(ROOT)), "--init", str((RUN / "warm").relative_to(ROOT)),
                              *REFRAG], RUN / "refrag", RUN / "refrag.log")
            state["refrag"] = {**r, "command": cmd}
            save()
        if todo("eval"):
            load0, c0 = loadavg(), time.process_time()
            models = {"warm-started model": RUN / "warm", "refrag-finetuned model": RUN / "refrag"}
            state["eval"] = {**evaluate(kb, read_rows(SET), {k: v for k, v in models.items() if v.exists()}),
                             "cpu_seconds": time.process_time() - c0, "load_start": load0, "load_end": loadavg()}
            save()
    if args.until and args.until != "eval":
        return
    log_rows = read_rows(RUN / "refrag" / "refrag_log.jsonl")
    plot(log_rows, RUN / "base" / "log.csv", OUT / "refrag.png")
    plot(log_rows, RUN / "base" / "log.csv", IMG / "refrag.png")  # the figure docs/BENCHMARKS.md shows
    res = {"stages": {k: v for k, v in state.items() if k != "eval"}, "eval": state["eval"],
           "refrag_log": log_rows, "cpu": cpu_info(), "threads": THREADS}
    write_json(OUT / "refrag.json", res)
    md = report(res)
    write_text(OUT / "refrag.md", md)
    print(md)


if __name__ == "__main__":
    main()
