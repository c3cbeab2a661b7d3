"""Model-lab benchmark: training/generation throughput, T vs M vs hybrid loss curves, RAG fine-tuning F1.

    .venv/bin/python bench/bench_lab.py throughput      # ~10M-parameter T, M, hybrid: train and generate tokens/s
    .venv/bin/python bench/bench_lab.py curves          # ~0.7M-parameter T, M, hybrid on the law corpus, same batches
    .venv/bin/python bench/bench_lab.py rag             # pretrain (steps/2) -> RAG fine-tune (steps) -> token F1
                                                        # on held-out questions, with and without retrieval

Options: --steps N, --threads N (torch threads, default 2), --device auto|cpu|cuda. Results go to
bench/out/lab/*.json (and docs/img/lab_loss.png for curves); each section prints a markdown table.
The law-corpus tokenizer (2,048 tokens) and token ids are cached in bench/out/lab/ after the first run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DATA, IMG, OUT, limit_threads, loadavg, md_table, write_json  # noqa: E402

limit_threads(int(os.environ.get("LAB_THREADS", "1")))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from picorag.dataset import TokenData, encode_conversation, prepare_dataset, read_texts  # noqa: E402
from picorag.evaluate import token_f1  # noqa: E402
from picorag.model import GPT, GPTConfig  # noqa: E402
from picorag.prompt import strip_markers  # noqa: E402
from picorag.tokenizer import Tokenizer  # noqa: E402
from picorag.train import TrainConfig, fit, init_distributed, pretrain, rag_finetune  # noqa: E402

LAB = OUT / "lab"
LAW = DATA / "law" / "corpus"
PATTERNS = {"T": "T,T,T,T,T,T", "M": "M,M,M,M,M,M", "hybrid": "T,T,T,M,M,M"}  # ~10M at n_embd 384
PATTERNS4 = {"T": "T,T,T,T", "M": "M,M,M,M", "hybrid": "T,T,M,M", "T-wide": "T,T,T,T"}  # the models of curves
WIDTH4 = {"T-wide": 104}  # attention at M's parameter count (0.73M); the others are 96 wide
PATTERNS3 = {"T": "T,T,T", "M": "M,M,M", "hybrid": "T,M,M"}  # and of rag


def law_tokens() -> tuple[Tokenizer, np.ndarray]:
    """The law corpus as one token stream, with a 2,048-token tokenizer trained on it (both cached)."""
    LAB.mkdir(parents=True, exist_ok=True)
    tok_file, ids_file = LAB / "tokenizer.json", LAB / "law_ids.npy"
    texts = read_texts([str(LAW)])
    if tok_file.is_file():
        tok = Tokenizer.load(tok_file)
    else:
        tok = Tokenizer()
        tok.train(texts, vocab_size=2048, progress=True)
        tok.save(tok_file)
    if not ids_file.is_file():
        bos = tok.special_tokens["<|bos|>"]
        np.save(ids_file, np.array([i for t in texts for i in (bos, *tok.encode(t))], dtype=np.int32))
    return tok, np.load(ids_file)


def throughput(args: argparse.Namespace) -> None:
    rows, out = [], {}
    device = init_distributed(args.device).device
    for name, pattern in PATTERNS.items():
        torch.manual_seed(0)
        cfg = GPTConfig(vocab_size=2048, sequence_len=256, n_layer=6, n_head=6, n_embd=384, block_pattern=pattern)
        model = GPT(cfg).to(device)
        opt = model.optimizer()
        x = torch.randint(0, 2048, (8, 257), device=device)
        times, cpu = [], 0.0
        for i in range(args.steps + 1):  # the first step warms up allocators and is not counted
            t0, c0 = time.perf_counter(), time.process_time()
            loss = model(x[:, :-1], x[:, 1:])[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
                cpu += time.process_time() - c0
        train_tps = 8 * 256 / (sum(times) / len(times))
        train_cpu = 8 * 256 * len(times) / cpu  # tokens per CPU-second: what the work costs on a busy machine
        model.eval()
        prompt = list(range(1, 129))
        gen, gen_cpu = {}, {}
        for cached in (True, False):
            t0, c0 = time.perf_counter(), time.process_time()
            n = len(list(model.generate(prompt, 64, use_cache=cached)))
            gen[cached], gen_cpu[cached] = n / (time.perf_counter() - t0), n / (time.process_time() - c0)
        out[name] = {"pattern": pattern, "params": model.num_params(), "train_tokens_per_s": round(train_tps, 1),
                     "train_tokens_per_cpu_s": round(train_cpu, 1), "step_s": [round(t, 3) for t in times],
                     "generate_tokens_per_s_cached": round(gen[True], 1),
                     "generate_tokens_per_cpu_s_cached": round(gen_cpu[True], 1),
                     "generate_tokens_per_s_recompute": round(gen[False], 1),
                     "generate_tokens_per_cpu_s_recompute": round(gen_cpu[False], 1)}
        rows.append([name, pattern, f"{model.num_params() / 1e6:.2f}M", f"{train_tps:,.0f} / {train_cpu:,.0f}",
                     f"{gen[True]:,.1f} / {gen_cpu[True]:,.1f}", f"{gen[False]:,.1f} / {gen_cpu[False]:,.1f}"])
        print(rows[-1], flush=True)
    out["meta"] = {"device": str(device), "threads": torch.get_num_threads(), "loadavg": loadavg(),
                   "batch": "8 x 256 tokens", "generation": "128-token prompt, 64 new tokens, greedy"}
    write_json(LAB / "throughput.json", out)
    print(md_table(["model", "blocks", "params", "train tokens/s (wall / CPU)", "generate tok/s, cache (wall / CPU)",
                    "generate tok/s, recompute (wall / CPU)"], rows, "llrrrr"))


def curves(args: argparse.Namespace) -> None:
    tok, ids = law_tokens()
    d = init_distributed(args.device)
    data = TokenData(ids, 128, 8, seed=0)
    results = {}
    for name in PATTERNS4:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=2048, sequence_len=128, n_layer=4, n_head=4, n_embd=WIDTH4.get(name, 96),
                              block_pattern=PATTERNS4[name], chunk_size=32))
        cfg = TrainConfig(steps=args.steps, batch_size=8, lr=3e-3, eval_every=max(1, args.steps // 10),
                          device=args.device)
        t0 = time.perf_counter()
        summary = fit(model, data, cfg, LAB / f"curve-{name}", tok, {"stage": "curve"}, d, progress=True)
        rows = (LAB / f"curve-{name}" / "log.csv").read_text().splitlines()[1:]
        results[name] = {"pattern": PATTERNS4[name], "params": summary["params"], "seconds": time.perf_counter() - t0,
                         "loss": [float(r.split(",")[1]) for r in rows],
                         "val": [(int(r.split(",")[0]), float(r.split(",")[2])) for r in rows if r.split(",")[2]]}
        print(name, summary["params"], summary["loss"], summary["val_loss"], flush=True)
    results["meta"] = {"steps": args.steps, "batch": "8 x 128 tokens", "data": "law corpus (3 statutes)",
                       "loadavg": loadavg()}
    write_json(LAB / "curves.json", results)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in PATTERNS4:
        r = results[name]
        loss = np.convolve(r["loss"], np.ones(10) / 10, mode="valid")
        line, = ax.plot(np.arange(len(loss)) + 9, loss, label=f"{name} ({r['params'] / 1e6:.2f}M) train", alpha=0.7)
        ax.plot(*zip(*r["val"]), "o--", color=line.get_color(), label=f"{name} validation")
    ax.set_xlabel("step (8 x 128 tokens)")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("law corpus: attention vs Mamba vs hybrid, same batches")
    ax.legend(fontsize=8)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "lab_loss.png", dpi=110)
    print(md_table(["model", "blocks", "params", "final train loss (mean of last 10)", "final validation loss",
                    "seconds"],
                   [[n, results[n]["pattern"], f"{results[n]['params'] / 1e6:.2f}M",
                     f"{np.mean(results[n]['loss'][-10:]):.3f}", f"{results[n]['val'][-1][1]:.3f}",
                     f"{results[n]['seconds']:.0f}"] for n in PATTERNS4], "llrrrr"))


def answer(model: GPT, tok: Tokenizer, messages: list[dict], max_tokens: int = 48) -> str:
    ids, _ = encode_conversation(tok, messages, add_generation_prompt=True)
    ids = ids[-(model.config.sequence_len - max_tokens):]
    first_special = min(tok.special_tokens.values())
    out = []
    for t in model.generate(ids, max_tokens):
        if t >= first_special:
            break
        out.append(t)
    return tok.decode(out)


def rag(args: argparse.Namespace) -> None:
    import json

    from picorag.checkpoint import load_checkpoint

    tok, _ = law_tokens()
    pattern = PATTERNS3.get(args.pattern, args.pattern)
    base, tuned, data = LAB / f"rag-base-{args.pattern}", LAB / f"rag-tuned-{args.pattern}", LAB / "law-rag"
    model_cfg = {"sequence_len": 384, "n_layer": 3, "n_head": 4, "n_embd": 96, "block_pattern": pattern}
    if not (data / "conversations_train.jsonl").is_file():
        prepare_dataset("build", str(data), [str(LAW)], k=3, p_absent=0.2, multi_hop=0.2, test_frac=0.1)
    if not (base / "config.json").is_file():
        pretrain([str(LAW)], base, model_cfg, TrainConfig(steps=args.steps // 2, batch_size=4, lr=3e-3, eval_every=50,
                                                          device=args.device), tokenizer=str(LAB / "tokenizer.json"))
    if not (tuned / "config.json").is_file():
        rag_finetune(data / "conversations_train.jsonl", tuned, TrainConfig(steps=args.steps, batch_size=4, lr=3e-3,
                                                                            eval_every=50, device=args.device),
                     init=base)
    tests = [json.loads(line) for line in (data / "conversations_test.jsonl").read_text().splitlines()]
    tests = [t for t in tests if t["answerable"]][: args.questions]
    scores: dict[str, list[float]] = {"tuned, with retrieval": [], "tuned, no retrieval": [],
                                      "pretrain only, with retrieval": []}
    examples = []
    m_tuned, tok_t, _ = load_checkpoint(tuned)
    m_base, tok_b, _ = load_checkpoint(base)
    for t in tests:
        msgs = t["messages"][:-1]
        bare = [m for m in msgs if m["role"] != "retrieval"]
        bare.insert(1, {"role": "retrieval", "documents": []})
        got = {"tuned, with retrieval": answer(m_tuned, tok_t, msgs),
               "tuned, no retrieval": answer(m_tuned, tok_t, bare),
               "pretrain only, with retrieval": answer(m_base, tok_b, msgs)}
        for k, v in got.items():
            scores[k].append(token_f1(strip_markers(v), [t["reference"]]))
        if len(examples) < 5:
            examples.append({"question": msgs[-1]["content"], "reference": t["reference"], **got})
    out = {k: round(float(np.mean(v)), 4) for k, v in scores.items()}
    write_json(LAB / f"rag-{args.pattern}.json", {"pattern": pattern, "questions": len(tests), "f1": out,
                                                 "examples": examples, "steps": args.steps, "loadavg": loadavg()})
    print(json.dumps(examples[:3], ensure_ascii=False, indent=1))
    print(md_table(["model", "token F1"], [[k, f"{v:.3f}"] for k, v in out.items()], "lr"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", choices=["throughput", "curves", "rag"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=int(os.environ.get("LAB_THREADS", "1")))
    p.add_argument("--device", default="cpu")
    p.add_argument("--pattern", default="T", help="rag: T, M, hybrid or an explicit block pattern")
    p.add_argument("--questions", type=int, default=40, help="rag: held-out questions to answer")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.steps = args.steps or {"throughput": 3, "curves": 200, "rag": 200}[args.section]
    {"throughput": throughput, "curves": curves, "rag": rag}[args.section](args)


if __name__ == "__main__":
    main()
