"""The `picorag` command: each subcommand is a few lines over the Python API.

Errors a user can cause print one line and exit non-zero; with --json, stdout carries JSON only
(warnings and progress bars go to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import unicodedata
from typing import Any

from .records import PicoragError


def warn(msg: str) -> None:
    print(f"picorag: warning: {msg}", file=sys.stderr)


def _emit(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=1) if args.json else text)


def parse_where(items: list[str] | None) -> dict[str, list[str]]:
    """["law=刑法", "law=宪法", "chapter=…"] -> {"law": ["刑法", "宪法"], "chapter": [...]}."""
    where: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or '"' in key:
            raise PicoragError(f"--where expects key=value, got {item!r}")
        where.setdefault(key, []).append(value.strip())
    return where


def search_options(args: argparse.Namespace) -> dict[str, Any]:
    from .rerank import load_reranker

    return {"mode": args.mode, "fusion": args.fusion, "recall_factor": args.recall_factor, "cut": args.cut,
            "nprobe": args.nprobe, "reranker": load_reranker(args.rerank) if args.rerank else None,
            "tuned": not args.no_tuned}


def cmd_build(args: argparse.Namespace) -> None:
    from .bm25 import BM25Params
    from .kb import KnowledgeBase

    params = BM25Params(k1=args.k1, b=args.b, method=args.bm25)
    kb = KnowledgeBase.build(args.kb, args.sources, chunk_size=args.chunk_size, overlap=args.overlap,
                             bm25=params, dense=args.dense, index=args.index, warn=warn,
                             batch_size=args.batch_size, resume=args.resume, ray=args.ray, nlist=args.nlist,
                             nprobe=args.nprobe, train_sample=args.train_sample)
    info = kb.info()
    _emit(args, info, f"built {args.kb}: {info['docs']} documents, {info['chunks']} chunks")


def cmd_add(args: argparse.Namespace) -> None:
    from .kb import KnowledgeBase

    if not args.sources and not args.dense:
        raise PicoragError("nothing to add: give files/directories, or --dense MODEL to add vectors")
    stats = KnowledgeBase.open(args.kb).add(args.sources, warn=warn, dense=args.dense, index=args.index,
                                            batch_size=args.batch_size)
    _emit(args, stats, "added {added}, replaced {replaced}, unchanged {unchanged} documents "
                       "({chunks} chunks written)".format(**stats))


def cmd_delete(args: argparse.Namespace) -> None:
    from .kb import KnowledgeBase

    if not args.doc_id and not args.id:
        raise PicoragError("say what to delete: --doc-id ID or --id CHUNK_ID")
    stats = KnowledgeBase.open(args.kb).delete(args.doc_id or [], args.id or [])
    _emit(args, stats, f"deleted {stats['chunks']} chunks")


def cmd_compact(args: argparse.Namespace) -> None:
    from .kb import KnowledgeBase

    stats = KnowledgeBase.open(args.kb).compact()
    _emit(args, stats, "compacted {segments_before} segment(s) into 1 ({chunks} chunks)".format(**stats))


def cmd_info(args: argparse.Namespace) -> None:
    from .kb import KnowledgeBase

    info = KnowledgeBase.open(args.kb).info()
    lines = [f"{info['path']}: {info['docs']} documents, {info['chunks']} chunks, "
             f"{info['size_bytes'] / 1e6:.1f} MB, generation {info['generation']}",
             f"bm25: {info['bm25']}  chunking: {info['chunking']}  analyzer: {info['analyzer']}"]
    lines += [f"  {s['name']}: {s['chunks']} chunks ({s['n_deleted']} deleted), {s['bytes'] / 1e6:.1f} MB"
              for s in info["segments"]]
    _emit(args, info, "\n".join(lines))


def cmd_search(args: argparse.Namespace) -> None:
    from .kb import KnowledgeBase

    kb = KnowledgeBase.open(args.kb)
    if args.strategy != "plain":
        return search_strategy(args, kb)
    hits = kb.search(args.query, k=args.k, where=parse_where(args.where), **search_options(args))
    if args.json:
        _emit(args, [{"id": h.id, "score": h.score, "text": h.text, "meta": h.meta, "citation": h.citation}
                     for h in hits], "")
        return
    if not hits:
        print("no results")
    for i, h in enumerate(hits, 1):
        print(f"{i}. [{h.score:.3f}] {h.citation}  ({h.id})\n   {snippet(h.text)}")


def cmd_tune(args: argparse.Namespace) -> None:
    from .kb import KnowledgeBase
    from .tune import TuneConfig, remove_tuned, tune

    if args.remove:
        KnowledgeBase.open(args.kb)  # a clear error when KB is not a knowledge base
        had = remove_tuned(args.kb)
        _emit(args, {"removed": had}, "tune keys removed" if had else "nothing to remove: the KB is not tuned")
        return
    cfg = TuneConfig(key_weight=args.key_weight, budget_minutes=args.budget_minutes, max_keys=args.max_keys)
    say = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    r = tune(KnowledgeBase.open(args.kb), cfg, say=say)
    _emit(args, r, f"tuned {args.kb}: {r['keys']} sentence keys for {r['chunks_with_keys']} of {r['chunks']} chunks "
                   f"(key weight {r['key_weight']:g}) in {r['seconds']:.0f} s; search/ask/eval use them "
                   f"(--no-tuned to compare)")


def search_strategy(args: argparse.Namespace, kb: Any) -> None:
    """search --strategy hyde|step-back|multi-hop: the hits, and what the strategy searched for."""
    from .strategies import retrieve

    hits, msg = retrieve(kb, args.query, args.strategy, generator_of(args), k=args.k, where=parse_where(args.where),
                         **search_options(args), **strategy_options(args))
    if args.json:
        _emit(args, {"strategy": args.strategy, "hits": [h.to_dict() for h in hits], "retrieval": msg}, "")
        return
    if msg.get("multi_hop"):
        i = 0
        for hop in msg["hops"]:
            print(f"hop {hop['hop']} ({hop['via']}): {hop['query']}")
            for d in hop["documents"]:
                i += 1
                print(f"  {i}. [{d['score']:.3f}] {d['citation']}  ({d['id']})\n     {snippet(d['content'])}")
        print(f"(stopped: {msg['stop']})")
        return
    print(f"({args.strategy}: {msg.get('hypothesis') or msg.get('step_back')})")
    for i, h in enumerate(hits, 1):
        print(f"{i}. [{h.score:.3f}] {h.citation}  ({h.id})\n   {snippet(h.text)}")


def snippet(text: str, width: int = 160) -> str:
    """One line of at most `width` terminal columns (a CJK character takes two)."""
    out, used = [], 0
    for ch in " ".join(text.split()):
        used += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        if used > width - 2:
            return "".join(out).rstrip() + " …"
        out.append(ch)
    return "".join(out)


def generator_of(args: argparse.Namespace) -> Any:
    from .generate import load_generator

    options: dict[str, Any] = {}
    if args.generator == "openai":
        options = {"base_url": args.base_url, "model": args.model, "timeout": args.timeout}
    elif args.generator == "local" and args.model:
        options = {"path": args.model}
    elif args.generator == "gpt":
        options = {"model": args.model}
    return load_generator(args.generator, **options)


def print_sources(answer: Any) -> None:
    if answer.citations:
        print("\nSources:")
        for c in answer.citations:
            print(f"  [{c['n']}] {c['citation']}  ({c['id']})")
    else:
        print("\n(no passage cited)")


def cmd_ask(args: argparse.Namespace) -> None:
    from .answer import ask
    from .kb import KnowledgeBase

    kb = KnowledgeBase.open(args.kb)
    live = sys.stdout.isatty() and not args.json  # stream tokens on a terminal, print once otherwise
    answer = ask(kb, args.question, generator_of(args), k=args.k, strategy=args.strategy, max_tokens=args.max_tokens,
                 on_token=(lambda t: print(t, end="", flush=True)) if live else None,
                 where=parse_where(args.where), **search_options(args), **strategy_options(args))
    if args.json:
        _emit(args, answer.to_dict(), "")
        return
    print("" if live else answer.text)
    print_sources(answer)


def cmd_chat(args: argparse.Namespace) -> int:
    from .answer import ask
    from .kb import KnowledgeBase

    kb = KnowledgeBase.open(args.kb)
    gen = generator_of(args)
    history: list[dict[str, str]] = []
    # a shell starting us in the background sets SIGINT to "ignore", which Python keeps: Ctrl-C must work here
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"picorag chat on {args.kb} ({gen.name} generator). Type quit or press Ctrl-D to leave.")
    while True:
        try:
            question = input("\nyou> ").strip()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            return 0
        if question.lower() in ("quit", "exit", ":q"):
            return 0
        if not question:
            continue
        print("picorag> ", end="", flush=True)
        try:
            answer = ask(kb, question, gen, k=args.k, strategy=args.strategy, history=history,
                         max_tokens=args.max_tokens, on_token=lambda t: print(t, end="", flush=True),
                         where=parse_where(args.where), **search_options(args), **strategy_options(args))
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the session
            print("\n(stopped)")
            continue
        except PicoragError as e:
            print(f"\npicorag: error: {e}")
            continue
        print()
        if answer.query != question:
            print(f"(searched for: {answer.query})")
        print_sources(answer)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.text}]


def cmd_serve(args: argparse.Namespace) -> None:
    from .server import serve

    serve(args.kb, args.host, args.port, args.api_key, generator_of(args))


def strategy_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_hops": args.max_hops, "top_k_per_hop": args.top_k_per_hop} if args.strategy == "multi-hop" else {}


def cmd_eval(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .evaluate import evaluate, evaluate_qa
    from .kb import KnowledgeBase

    kb = KnowledgeBase.open(args.kb)
    progress = lambda it: tqdm(it, desc="eval", disable=None, leave=False)  # noqa: E731
    if args.qa:
        from .answer import ask
        from .prompt import strip_markers

        gen = generator_of(args)
        res = evaluate_qa(lambda q: strip_markers(ask(kb, q, gen, k=args.k, strategy=args.strategy,
                                                      **search_options(args), **strategy_options(args)).text),
                          args.qa, progress=progress)
        _emit(args, res, f"{res['n']} questions, {res['qps']:.1f} q/s: EM {res['em']:.4f}  F1 {res['f1']:.4f}")
        return
    if not args.dataset:
        raise PicoragError("give --dataset (retrieval: BEIR dir or gold JSONL) or --qa (answers: EM/F1)")
    match = [m.strip() for m in args.match.split(",") if m.strip()]
    opts = search_options(args)
    if args.strategy != "plain":  # strategies run query by query, through the generator if they need one
        from .strategies import retrieve

        gen = generator_of(args)
        res = evaluate(lambda q, n: retrieve(kb, q, args.strategy, gen, k=n, **opts, **strategy_options(args))[0],
                       args.dataset, k=args.k, match=match, progress=progress)
    else:
        opts["fetch"] = not os.path.isdir(args.dataset)  # BEIR judges doc ids only: skip fetching text
        res = evaluate(lambda q, n: kb.search(q, k=n, **opts), args.dataset, k=args.k, match=match,
                       progress=progress, search_many=lambda qs, n: kb.search_many(qs, k=n, **opts))
    keys = [f"hit@{args.k}", f"mrr@{args.k}", "ndcg@10", "recall@100"]
    lines = [f"{res['n']} queries, {res['qps']:.0f} q/s: " + "  ".join(f"{key} {res[key]:.4f}" for key in keys)]
    for tag, m in res.get("by_tag", {}).items():
        lines.append(f"  {tag} ({m['n']}): " + "  ".join(f"{key} {m[key]:.4f}" for key in keys))
    _emit(args, res, "\n".join(lines))


def dense_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dense", metavar="MODEL", help="also store vectors: auto, minilm, e5-small or a model dir")
    sp.add_argument("--index", default="flat", choices=["flat", "hnsw", "ivfpq", "ivfflat"],
                    help="vector index (default flat)")


def mode_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--mode", choices=["bm25", "dense", "hybrid"], help="default: hybrid when the KB has vectors")
    sp.add_argument("--fusion", default="rrf", choices=["rrf", "weighted"], help="hybrid fusion (default rrf)")
    sp.add_argument("--recall-factor", type=int, default=4, help="candidates per retriever = k x this (default 4)")
    sp.add_argument("--cut", type=float, default=0.2, help="drop candidates below this x the top score (0.2)")
    sp.add_argument("--nprobe", type=int, help="IVF lists to probe (ivfpq index)")
    sp.add_argument("--rerank", metavar="DIR", help="cross-encoder directory (ONNX or sentence-transformers)")
    sp.add_argument("--no-tuned", action="store_true", help="ignore the KB's `picorag tune` adapter (to compare)")


def answer_args(sp: argparse.ArgumentParser) -> None:
    from .generate import GENERATORS
    from .strategies import STRATEGIES

    sp.add_argument("--generator", default="extractive", choices=GENERATORS, help="default: extractive (no model)")
    sp.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1 (openai)")
    sp.add_argument("--model", help="model name (openai) or GGUF path (local); key from OPENAI_API_KEY")
    sp.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the endpoint (openai)")
    sp.add_argument("--strategy", default="plain", choices=STRATEGIES, help="query strategy (default plain)")
    sp.add_argument("--max-hops", type=int, default=3, help="multi-hop: retrieval rounds (default 3)")
    sp.add_argument("--top-k-per-hop", type=int, default=3, help="multi-hop: passages per round (default 3)")


def cmd_train(args: argparse.Namespace) -> None:
    """picorag train pretrain | prepare-dataset | rag-finetune | refrag-finetune | retriever (docs/LAB.md)."""
    from . import train

    if args.stage == "prepare-dataset":
        from .dataset import prepare_dataset

        r = prepare_dataset(args.mode, args.output, args.documents or [], k=args.k, p_absent=args.p_absent,
                            multi_hop=args.multi_hop, test_frac=args.test_frac, per_doc=args.per_doc,
                            seed=args.seed, warn=warn)
        _emit(args, r, "wrote {output}: {train_conversations} training and {test_conversations} test "
                       "conversations, knowledge base {knowledge_base} ({chunks} chunks)".format(**r))
        return
    if args.stage == "retriever":
        from .contrastive import RetrieverConfig, train_retriever

        rc = RetrieverConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             hard_negatives=args.hard_negatives, max_length=args.max_length, val=args.val,
                             seed=args.seed, device=args.device, threads=args.threads)
        r = train_retriever(args.kb, args.out, dataset=args.dataset, split=args.split, pairs=args.pairs,
                            base=args.base, cfg=rc, progress=not args.json, warn=warn)
        _emit(args, r, "retriever: {s} steps, val MRR@10 by epoch {v}, kept epoch {b}; saved {out} "
                       "(use: picorag build KB --dense {out})".format(s=r["steps"], v=r["val_mrr@10"],
                                                                      b=r["best_epoch"], out=args.out))
        return
    if args.stage == "refrag-finetune":
        from .refrag import refrag_finetune

        r = refrag_finetune(args.kb, args.queries, args.init, args.out, steps=args.steps, batch_size=args.batch_size,
                            lr=args.lr, max_hops=args.max_hops, top_k_per_hop=args.top_k_per_hop,
                            hop_cost=args.hop_cost, seed=args.seed, progress=not args.json)
        _emit(args, r, "refrag-finetune: {step} steps, mean reward {reward_first_10} (first 10) -> "
                       "{reward_last_10} (last 10); saved {out}".format(**r, out=args.out))
        return
    cfg = train.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                            seed=args.seed, eval_every=args.eval_every, save_every=args.save_every,
                            device=args.device)
    progress = not args.json
    if args.stage == "pretrain":
        model = {"sequence_len": args.seq_len, "n_layer": args.n_layer, "n_head": args.n_head,
                 "n_embd": args.n_embd, "block_pattern": args.block_pattern}
        r = train.pretrain(args.sources or [], args.out, model, cfg, kb=args.kb, tokenizer=args.tokenizer,
                           vocab_size=args.vocab_size, resume=args.resume, progress=progress)
    else:
        r = train.rag_finetune(args.data, args.out, cfg, init=args.init, resume=args.resume, progress=progress)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return
    _emit(args, r, f"{r['stage']}: step {r['step']}, loss {r['loss']}, validation loss {r['val_loss']}, "
                   f"{r['params']:,} parameters, {r['tokens_per_s']:,.0f} tokens/s on {r['device']}; saved {args.out}")


def train_parser(sub: Any) -> None:
    tp = sub.add_parser("train", help="the model lab: pretrain, prepare-dataset, rag-finetune, refrag-finetune, "
                                      "retriever")
    stages = tp.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def stage(name: str, help: str) -> argparse.ArgumentParser:
        sp = stages.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=cmd_train)
        sp.add_argument("--json", action="store_true", help="print JSON only on stdout")
        sp.add_argument("--seed", type=int, default=0)
        return sp

    def loop_args(sp: argparse.ArgumentParser, steps: int, lr: float) -> None:
        sp.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory")
        sp.add_argument("--steps", type=int, default=steps, help=f"optimizer steps in all (default {steps})")
        sp.add_argument("--batch-size", type=int, default=8, help="sequences per step, all processes (8)")
        sp.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
        sp.add_argument("--warmup", type=int, default=10, help="warmup steps (default 10)")
        sp.add_argument("--eval-every", type=int, default=50, help="validation loss every N steps (50)")
        sp.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (default: at the end)")
        sp.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")
        sp.add_argument("--resume", action="store_true", help="continue the run in --out up to --steps")

    sp = stage("pretrain", "train a tokenizer and a model from scratch on text files and/or a KB's chunks")
    sp.add_argument("--from", dest="sources", nargs="+", metavar="PATH", help="text, markdown, JSONL, PDF files")
    sp.add_argument("--kb", metavar="KB", help="also train on this knowledge base's chunks")
    sp.add_argument("--tokenizer", metavar="FILE", help="a tokenizer JSON to use instead of training one")
    sp.add_argument("--vocab-size", type=int, default=2048, help="tokenizer vocabulary (default 2048)")
    sp.add_argument("--seq-len", type=int, default=256, help="context length in tokens (default 256)")
    sp.add_argument("--n-layer", type=int, default=4)
    sp.add_argument("--n-head", type=int, default=4)
    sp.add_argument("--n-embd", type=int, default=256)
    sp.add_argument("--block-pattern", default="", help='e.g. "T,T,M,M": attention (T) and Mamba (M) blocks')
    loop_args(sp, 500, 3e-3)

    sp = stage("prepare-dataset", "example documents and queries, or training conversations from your documents")
    sp.add_argument("--mode", choices=["example", "build"], required=True)
    sp.add_argument("--output", required=True, metavar="DIR")
    sp.add_argument("--documents", nargs="+", metavar="PATH", help="build: JSONL or files to make questions from")
    sp.add_argument("-k", type=int, default=3, help="passages retrieved per question (default 3)")
    sp.add_argument("--p-absent", type=float, default=0.2, help="share with the gold passage removed (0.2)")
    sp.add_argument("--multi-hop", type=float, default=0.2, help="share with a two-hop retrieval message (0.2)")
    sp.add_argument("--test-frac", type=float, default=0.1, help="questions held out for testing (0.1)")
    sp.add_argument("--per-doc", type=int, default=2, help="build: questions per document (default 2)")

    sp = stage("rag-finetune", "fine-tune a checkpoint on RAG conversations (loss on the answers only)")
    sp.add_argument("--data", required=True, metavar="JSONL", help="conversations, as prepare-dataset writes")
    sp.add_argument("--init", metavar="DIR", help="the pretrained checkpoint to start from")
    loop_args(sp, 300, 1e-3)

    sp = stage("retriever", "contrastive fine-tuning of a dense encoder (InfoNCE, BM25 hard negatives) on a KB")
    sp.add_argument("--kb", required=True, metavar="KB", help="passages (live chunks) and BM25 for hard negatives")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", metavar="BEIR_DIR", help="queries.jsonl + qrels/<split>.tsv")
    src.add_argument("--pairs", metavar="JSONL", help='{"question" (or "query"/"text"), "doc_id"} lines')
    sp.add_argument("--split", default="train", help="BEIR qrels split (default train)")
    sp.add_argument("--base", metavar="DIR", help="BERT-like HF folder (default: fp32 all-MiniLM-L6-v2)")
    sp.add_argument("--out", required=True, metavar="DIR", help="model dir for build --dense DIR")
    sp.add_argument("--epochs", type=int, default=1)
    sp.add_argument("--batch-size", type=int, default=32, help="queries per step (default 32)")
    sp.add_argument("--lr", type=float, default=2e-5)
    sp.add_argument("--hard-negatives", type=int, default=1, help="BM25 negatives per query (default 1)")
    sp.add_argument("--max-length", type=int, default=256, help="passage tokens (default 256)")
    sp.add_argument("--val", type=float, default=0.1, help="share of queries held out to pick the epoch (0.1)")
    sp.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")
    sp.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: OMP_NUM_THREADS or cores/2)")

    sp = stage("refrag-finetune", "multi-hop episodes: the model writes the next query; REINFORCE with a baseline")
    sp.add_argument("--kb", required=True, metavar="KB", help="the knowledge base the episodes search")
    sp.add_argument("--queries", required=True, metavar="JSONL",
                    help='{"question", "doc_id", "evidence"} or {"question", "gold": [chunk ids]} lines')
    sp.add_argument("--init", required=True, metavar="DIR", help="the checkpoint to start from")
    sp.add_argument("--out", required=True, metavar="DIR")
    sp.add_argument("--steps", type=int, default=100)
    sp.add_argument("--batch-size", type=int, default=4, help="episodes per step (default 4)")
    sp.add_argument("--lr", type=float, default=1e-4)
    sp.add_argument("--max-hops", type=int, default=3, help="retrieval rounds per episode (default 3)")
    sp.add_argument("--top-k-per-hop", type=int, default=2, help="passages per round (default 2)")
    sp.add_argument("--hop-cost", type=float, default=0.1, help="reward lost per extra hop (default 0.1)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="picorag", description="Local, offline-first retrieval-augmented generation.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Any, help: str, kb: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        if kb:
            sp.add_argument("kb", metavar="KB", help="knowledge base directory")
            sp.add_argument("--json", action="store_true", help="print JSON only on stdout")
        return sp

    sp = command("build", cmd_build, "build a knowledge base from files, directories or JSONL")
    sp.add_argument("--from", dest="sources", nargs="+", required=True, metavar="PATH")
    sp.add_argument("--chunk-size", type=int, default=256, help="tokens per chunk (default 256)")
    sp.add_argument("--overlap", type=int, default=32, help="tokens shared by neighbouring chunks (default 32)")
    sp.add_argument("--k1", type=float, default=1.5)
    sp.add_argument("--b", type=float, default=0.75)
    sp.add_argument("--bm25", default="lucene", choices=["lucene", "robertson"], help="BM25 variant")
    dense_args(sp)
    sp.add_argument("--batch-size", type=int, default=10_000, help="records per shard: bounds memory (10000)")
    sp.add_argument("--resume", action="store_true", help="continue a killed build from its last finished shard")
    sp.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="chunk and embed as Ray tasks: a local Ray (2 workers) or a cluster address")
    sp.add_argument("--nlist", type=int, help="IVF lists (default ≈ 4·√chunks)")
    sp.add_argument("--nprobe", type=int, help="IVF lists probed by default at query time (default nlist/8)")
    sp.add_argument("--train-sample", type=int, help="vectors to train IVF on (default 40 per list, ≥ 50000)")

    sp = command("add", cmd_add, "add or update documents without rebuilding (or give a KB vectors)")
    sp.add_argument("sources", nargs="*", metavar="PATH")
    dense_args(sp)
    sp.add_argument("--batch-size", type=int, default=10_000, help="records per shard: bounds memory (10000)")

    sp = command("delete", cmd_delete, "delete documents or single chunks")
    sp.add_argument("--doc-id", action="append", metavar="ID")
    sp.add_argument("--id", action="append", metavar="CHUNK_ID")

    command("compact", cmd_compact, "merge segments and drop deleted chunks")
    command("info", cmd_info, "counts, segments, sizes and settings")

    sp = command("search", cmd_search, "search a knowledge base")
    sp.add_argument("query")
    sp.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    sp.add_argument("--where", action="append", metavar="KEY=VALUE",
                    help="metadata filter; repeat a key for any-of, different keys must all match")
    mode_args(sp)
    answer_args(sp)  # --strategy, and the generator a strategy may need

    for name, fn, text in (("ask", cmd_ask, "answer a question with citations"),
                           ("chat", cmd_chat, "multi-turn questions and answers (quit or Ctrl-D to leave)")):
        sp = command(name, fn, text)
        if name == "ask":
            sp.add_argument("question")
        sp.add_argument("-k", type=int, default=5, help="passages given to the generator (default 5)")
        sp.add_argument("--where", action="append", metavar="KEY=VALUE", help="metadata filter, as in search")
        sp.add_argument("--max-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
        mode_args(sp)
        answer_args(sp)

    sp = command("eval", cmd_eval, "measure retrieval (BEIR dir or gold JSONL) or answers (--qa, EM/F1)")
    sp.add_argument("--dataset", metavar="PATH")
    sp.add_argument("--qa", metavar="FILE", help='JSONL of {"question", "answers": [...]}: exact match and F1')
    sp.add_argument("-k", type=int, default=5)
    sp.add_argument("--match", default="law,article", help="gold keys a hit must match (default law,article)")
    mode_args(sp)
    answer_args(sp)

    sp = command("tune", cmd_tune, "sentence keys from this KB's own text for vague questions (no labels needed)")
    sp.add_argument("--key-weight", type=float, default=None, help="share of a chunk's best sentence key in its "
                    "dense score, 0-1 (default: chosen for this KB on pseudo-queries from its own sentences)")
    sp.add_argument("--budget-minutes", type=float, default=30.0, help="give up (storing nothing) when embedding "
                    "would take longer (30)")
    sp.add_argument("--max-keys", type=int, default=100000, help="refuse KBs with more sentences (100000)")
    sp.add_argument("--remove", action="store_true", help="delete the KB's tune keys instead")

    sp = command("serve", cmd_serve, "HTTP API, OpenAI-compatible endpoint and web page")
    sp.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (other addresses need --api-key)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--api-key", help="required on every endpoint but /health (or set PICORAG_API_KEY)")
    answer_args(sp)

    train_parser(sub)
    sub.add_parser("micro", help="the dependency-free teaching RAG (pure Python); see picorag micro --help")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["micro"]:  # micro has its own parser (and its own --help)
        from . import micro

        return micro.main(argv[1:])
    args = build_parser().parse_args(argv)
    return run(args.fn, args)


def run(fn: Any, args: argparse.Namespace) -> int:
    """Run a command: a user's mistake is one line and exit 1, a bug of ours one line and exit 3."""
    try:
        return fn(args) or 0
    except PicoragError as e:
        print(f"picorag: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("picorag: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # `picorag search … | head`
        return 0
    except Exception as e:  # a bug of ours: still one line, with a way to see the traceback
        if os.environ.get("PICORAG_DEBUG"):
            raise
        print(f"picorag: internal error: {type(e).__name__}: {e} (set PICORAG_DEBUG=1 for details)",
              file=sys.stderr)
        return 3

if __name__ == "__main__":
    raise SystemExit(main())
