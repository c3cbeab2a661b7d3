"""Multi-hop retrieval on a 2-hop set derived from the Wikipedia passages: 1 hop vs several.

    .venv/bin/python bench/bench_multihop.py build      # writes bench/data/wiki2hop.jsonl (deterministic)
    .venv/bin/python bench/bench_multihop.py build --train 3000  # bench/out/multihop/wiki2hop_train.jsonl:
                                                        # seed 1, no article of wiki2hop.jsonl (model lab)
    .venv/bin/python bench/bench_multihop.py            # measures; writes bench/out/multihop.{md,json}
    .venv/bin/python bench/bench_multihop.py --local 20 # also the local generator forming the next query (slow)

The set (bench/data/README.md says the same): a passage A of article TA whose sentence s names the title of
another article TB; the question is s with TB blanked ("Which entity is X in: "...X..."?"), so the passage
that defines TB (B, the first passage of article TB) shares no word with the question and is reachable only
by reading A. Gold: A's passage and B's first passage. The KB is all 111,639 passages, BM25 only
(bench/out/kbs/wiki-bm25, built here if missing). "both@10": both gold passages among the passages returned,
10 in all for each method (plain k=10; multi-hop 2 hops x 5). Questions 1-100 are the dev split (the bridge
heuristic was checked on them), 101-300 the test split, reported separately.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, OUT, ROOT, cpu_info, limit_threads, loadavg, md_table, write_json, write_text  # noqa: E402

limit_threads(1)

import gzip  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

SET = ROOT / "bench" / "data" / "wiki2hop.jsonl"
KB = OUT / "kbs" / "wiki-bm25"
TRAIN_SET = OUT / "multihop" / "wiki2hop_train.jsonl"
N_QUESTIONS, SEED = 300, 0
_PUNCT = ",.;:!?\"'()"
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _load_passages() -> tuple[list[dict], dict[str, dict], set[str]]:
    """All passages, each article's lead passage by title, and the bridge-title candidates."""
    passages = [json.loads(line) for line in gzip.open(DATA / "wiki" / "passages.jsonl.gz", "rt", encoding="utf-8")]
    lead: dict[str, dict] = {}
    for p in passages:  # an article's first passage defines it
        lead.setdefault(p["title"], p)
    # bridge candidates: titles of two to five words, no parentheses or digits-only words
    titles = {t for t in lead if 2 <= len(t.split()) <= 5 and "(" not in t and len(t) >= 6}
    return passages, lead, titles


def make_questions(passages: list[dict], lead: dict[str, dict], titles: set[str], count: int, seed: int,
                   exclude: set[str] | frozenset[str] = frozenset(), prefix: str = "w2h", n_dev: int = 100,
                   per_title: int = 1, strip: bool = False) -> list[dict]:
    """`count` 2-hop cloze questions (the recipe in bench/data/README.md); no article in `exclude` is used as
    A or B, and each article is A (and each title TB) of at most `per_title` questions. The first `n_dev`
    get split "dev", the rest "test". `strip`: also match titles whose last word has punctuation attached
    ("... at Kent College, where ..."), which the held-out set's recipe does not."""
    from collections import Counter

    from picorag.analyze import Analyzer

    analyzer = Analyzer()
    order = list(range(len(passages)))
    random.Random(seed).shuffle(order)
    out: list[dict] = []
    used_a: Counter[str] = Counter()
    used_b: Counter[str] = Counter()
    for i in order:
        a = passages[i]
        if used_a[a["title"]] >= per_title or a["title"] in exclude:
            continue
        for s in _SENT.split(a["text"]):
            words = [w.strip(_PUNCT) for w in s.split()] if strip else s.split()
            if len(words) < 8:
                continue
            found = [" ".join(words[j:j + n]) for n in (5, 4, 3, 2) for j in range(len(words) - n + 1)
                     if " ".join(words[j:j + n]) in titles]
            found = [t for t in found if t != a["title"] and used_b[t] < per_title and s.count(t) == 1
                     and lead[t]["id"] != a["id"] and t not in exclude]
            if not found:
                continue
            tb = found[0]
            masked = s.replace(tb, "X")
            q_terms = set(analyzer.tokenize(masked))
            if q_terms & set(analyzer.tokenize(tb)) or len(q_terms) < 5:
                continue  # the question must not name B (nor any word of its title)
            b = lead[tb]
            out.append({"id": f"{prefix}-{len(out) + 1:03d}", "question": f'Which entity is X in: "{masked}"?',
                        "bridge": tb, "gold": [f"{a['id']}-0", f"{b['id']}-0"], "a_title": a["title"],
                        "split": "dev" if len(out) < n_dev else "test"})
            used_a[a["title"]] += 1
            used_b[tb] += 1
            break
        if len(out) == count:
            break
    return out


def build_set() -> None:
    passages, lead, titles = _load_passages()
    out = make_questions(passages, lead, titles, N_QUESTIONS, SEED)
    SET.parent.mkdir(parents=True, exist_ok=True)
    SET.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    print(f"wrote {len(out)} questions to {SET}")


def build_train(n: int = 3000, seed: int = 1, per_title: int = 5) -> None:
    """A training set for the model lab (bench/bench_refrag.py): the same recipe with another seed, no
    article that is A or B of any wiki2hop.jsonl question (dev or test) used as A or B here, and an article
    (or bridge title) used up to `per_title` times: at one use per title the recipe yields only ~630."""
    passages, lead, titles = _load_passages()
    held = [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines()]
    exclude = {r["a_title"] for r in held} | {r["bridge"] for r in held}
    out = make_questions(passages, lead, titles, n, seed, exclude, prefix="w2h-train", n_dev=n, per_title=per_title,
                         strip=True)
    for r in out:
        r["split"] = "train"
    TRAIN_SET.parent.mkdir(parents=True, exist_ok=True)
    TRAIN_SET.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    print(f"wrote {len(out)} training questions to {TRAIN_SET} (excluding the {len(exclude)} articles of {SET.name})")


def main() -> None:
    from tqdm import tqdm

    from picorag import KnowledgeBase
    from picorag.strategies import retrieve

    if not KB.exists():
        KnowledgeBase.build(KB, [DATA / "wiki" / "passages.jsonl.gz"])
    kb = KnowledgeBase.open(KB)
    rows = [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines()]
    load0, c0 = loadavg(), time.process_time()
    gen = None
    n_local = int(sys.argv[sys.argv.index("--local") + 1]) if "--local" in sys.argv else 0
    methods = {"plain, k=10": lambda q: retrieve(kb, q, "plain", None, k=10),
               "multi-hop bridge, 2 hops x 5": lambda q: retrieve(kb, q, "multi-hop", None, max_hops=2,
                                                                  top_k_per_hop=5),
               "multi-hop bridge, 3 hops x 3 (+1 plain)": lambda q: _pad(retrieve(kb, q, "multi-hop", None), kb, q),
               "plain, k=20": lambda q: retrieve(kb, q, "plain", None, k=20),
               "multi-hop bridge, 2 hops x 10": lambda q: retrieve(kb, q, "multi-hop", None, max_hops=2,
                                                                   top_k_per_hop=10)}
    if n_local:
        from picorag.local import LocalGenerator

        gen = LocalGenerator()
        methods["multi-hop local generator, 2 hops x 5"] = lambda q: retrieve(kb, q, "multi-hop", gen, max_hops=2,
                                                                             top_k_per_hop=5)
    result: dict = {"questions": len(rows), "kb": str(KB), "methods": {}, "examples": []}
    for name, fn in methods.items():
        subset = rows[:n_local] if "local" in name else rows
        per = {"dev": [], "test": []}
        t0, hops_used, stops, named, vias = time.perf_counter(), [], {}, [], {}
        for r in tqdm(subset, desc=name, leave=False, disable=None):
            hits, msg = fn(r["question"])
            ids = [h.id for h in hits]
            per[r["split"]].append((r["gold"][0] in ids, r["gold"][1] in ids, len(ids)))
            if msg.get("multi_hop"):
                hops_used.append(len(msg["hops"]))
                named.append(any(r["bridge"] in h["query"] for h in msg["hops"][1:]))  # a later query names TB
                for h in msg["hops"][1:]:  # generator, or the bridge heuristic it fell back to
                    vias[h["via"]] = vias.get(h["via"], 0) + 1
                stops[msg["stop"]] = stops.get(msg["stop"], 0) + 1
                if name.startswith("multi-hop bridge, 2 hops x 5") and len(result["examples"]) < 5:
                    result["examples"].append({"question": r["question"], "bridge": r["bridge"], "gold": r["gold"],
                                               "hops": [{"query": h["query"], "ids": [d["id"] for d in h["documents"]]}
                                                        for h in msg["hops"]]})
        stat = {}
        for split, xs in per.items():
            if xs:
                stat[split] = {"n": len(xs), "a": sum(a for a, _, _ in xs) / len(xs),
                               "b": sum(b for _, b, _ in xs) / len(xs),
                               "both": sum(a and b for a, b, _ in xs) / len(xs),
                               "passages": sum(n for _, _, n in xs) / len(xs)}
        stat["ms_per_question"] = (time.perf_counter() - t0) * 1000 / len(subset)
        if hops_used:
            stat["mean_hops"] = sum(hops_used) / len(hops_used)
            stat["bridge_named"] = sum(named) / len(named)
            stat["stops"], stat["later_queries_via"] = stops, vias
        result["methods"][name] = stat
    result.update({"cpu_seconds": time.process_time() - c0, "load_start": load0, "load_end": loadavg(),
                   "cpu": cpu_info()})
    write_json(OUT / "multihop.json", result)
    table = []
    for name, s in result["methods"].items():
        for split in ("dev", "test"):
            if split in s:
                x = s[split]
                table.append([name, split, x["n"], f"{x['a']:.3f}", f"{x['b']:.3f}", f"{x['both']:.3f}",
                              f"{x['passages']:.1f}", f"{s.get('mean_hops', 1):.2f}",
                              f"{s['bridge_named']:.2f}" if "bridge_named" in s else "–",
                              f"{s['ms_per_question']:.0f}"])
    md = md_table(["method", "split", "n", "A found", "B found", "both found", "passages returned", "mean hops",
                   "a query names TB (all splits)", "ms/question"], table)
    md += (f"\n\nCPU {result['cpu_seconds']:.1f} s in all; load average {load0} at the start, {result['load_end']} "
           f"at the end ({result['cpu'].get('nproc')} cores, shared).\n")
    write_text(OUT / "multihop.md", md)
    print(md)


def _pad(res, kb, q):
    """3 x 3 = 9 passages: add the best unseen plain hit so every method returns 10."""
    hits, msg = res
    have = {h.id for h in hits}
    extra = [h for h in kb.search(q, k=len(have) + 1) if h.id not in have][: 10 - len(hits)]
    return hits + extra, msg


if __name__ == "__main__":
    if sys.argv[1:2] == ["build"]:
        build_train(int(sys.argv[sys.argv.index("--train") + 1])) if "--train" in sys.argv else build_set()
    else:
        main()
