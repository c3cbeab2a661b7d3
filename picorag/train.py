"""Training for the model lab: pretraining on text, RAG fine-tuning on retrieved conversations.

One loop (`fit`) serves both: AdamW, linear warmup then cosine decay, gradient clipping, a loss row per
step in DIR/log.csv, validation loss every `eval_every` steps, a checkpoint (weights, tokenizer, optimizer)
at the end and every `save_every` steps. Batches are chosen by (seed, step) and the learning rate is a
function of the step, so `resume` continues exactly where a run stopped.

The same code runs on a GPU (device auto; bfloat16 autocast) and under `torchrun --nproc_per_node=N`
(gloo on CPU, NCCL on GPU): each process takes every N-th row of the same global batch and DDP averages
the gradients, so the loss curve is the one-process curve.

>>> import tempfile                                                                    # doctest: +SKIP
>>> pretrain(["notes.txt"], tempfile.mkdtemp(), {"n_layer": 2, "n_embd": 64}, TrainConfig(steps=50))  # doctest: +SKIP
{'stage': 'pretrain', 'step': 50, 'loss': 3.1, ...}
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from tqdm import tqdm

from .checkpoint import load_checkpoint, load_optimizer, read_config, save_checkpoint
from .dataset import ChatData, TokenData, encode_conversation, fit_conversation, read_conversations, read_texts
from .model import GPT, GPTConfig
from .records import PicoragError
from .tokenizer import Tokenizer

LOG_FIELDS = ["step", "loss", "val_loss", "lr", "tokens", "tokens_per_s", "elapsed_s"]


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8  # sequences per step, over all processes
    lr: float = 3e-3
    warmup: int = 10
    min_lr_frac: float = 0.1  # the cosine ends at lr * min_lr_frac
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 50  # 0: only at the end
    eval_batches: int = 4
    save_every: int = 0  # 0: only at the end
    device: str = "auto"


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(device: str = "auto") -> str:
    """`auto` → cuda when PyTorch sees a GPU, else cpu; a bad name or a missing GPU is a one-line error."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise PicoragError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PicoragError("--device cuda but PyTorch sees no GPU")
    return device


def init_distributed(device: str = "auto") -> Dist:
    """The process's rank, world size and device; starts the process group when run under torchrun."""
    device = pick_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(0, 1, torch.device(device))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(torch_dist.get_rank(), world, dev)


def _mean(value: torch.Tensor, d: Dist) -> float:
    if d.world > 1:
        value = value.detach().clone()
        torch_dist.all_reduce(value)
        value /= d.world
    return value.item()


def _read_log(path: Path, before: int) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) < before]


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(model: GPT, data: TokenData | ChatData, cfg: TrainConfig, d: Dist) -> float:
    """Mean validation loss over `eval_batches` fixed batches."""
    model.eval()
    losses = []
    for i in range(cfg.eval_batches):
        x, y = (t.to(d.device) for t in data.batch(i, "val", d.rank, d.world))
        with _autocast(d.device):
            losses.append(model(x, y)[1].float())
    model.train()
    return _mean(torch.stack(losses).mean(), d)


def _autocast(device: torch.device) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                   enabled=False)


def fit(model: GPT, data: TokenData | ChatData, cfg: TrainConfig, out: str | Path, tok: Tokenizer,
        meta: dict[str, Any], d: Dist, start_step: int = 0, resume_from: str | Path | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Train `model` from `start_step` to `cfg.steps`; returns the summary also stored in config.json."""
    out = Path(out)
    if cfg.batch_size % d.world:
        raise PicoragError(f"--batch-size {cfg.batch_size} must be a multiple of the {d.world} processes")
    model.to(d.device).train()
    opt = model.optimizer(lr=cfg.lr, weight_decay=cfg.weight_decay)
    if resume_from is not None:
        load_optimizer(resume_from, model, opt)
    net: torch.nn.Module = model
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.index
                                                        is not None else None)
    rows: list[dict[str, Any]] = _read_log(out / "log.csv", start_step) if d.main else []
    tokens = int(rows[-1]["tokens"]) if rows else 0
    summary: dict[str, Any] = {}
    loss_val = val = float("nan")
    t_start = time.perf_counter()
    bar = tqdm(range(start_step, cfg.steps), desc=meta.get("stage", "train"), file=sys.stderr,
               disable=not (progress and d.main), initial=start_step, total=cfg.steps)
    for step in bar:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = (t.to(d.device) for t in data.batch(step, "train", d.rank, d.world))
        with _autocast(d.device):
            loss = net(x, y)[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss_val = _mean(loss.detach().float(), d)
        n_tok = x.numel() * d.world
        tokens += n_tok
        last = step + 1 == cfg.steps
        val = evaluate(model, data, cfg, d) if last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0) \
            else float("nan")
        if not math.isfinite(loss_val):
            raise PicoragError(f"the loss became {loss_val} at step {step}; lower --lr")
        dt = time.perf_counter() - t0
        rows.append({"step": step, "loss": round(loss_val, 5), "val_loss": "" if math.isnan(val) else round(val, 5),
                     "lr": f"{lr:.3g}", "tokens": tokens, "tokens_per_s": round(n_tok / dt, 1),
                     "elapsed_s": round(time.perf_counter() - t_start, 3)})
        bar.set_postfix(loss=f"{loss_val:.3f}", **({} if math.isnan(val) else {"val": f"{val:.3f}"}))
        if last or (cfg.save_every and (step + 1) % cfg.save_every == 0):
            elapsed = time.perf_counter() - t_start
            summary = {"step": step + 1, "loss": round(loss_val, 4),
                       "val_loss": None if math.isnan(val) else round(val, 4),
                       "params": model.num_params(), "tokens": tokens, "seconds": round(elapsed, 2),
                       "tokens_per_s": round(sum(float(r["tokens_per_s"]) for r in rows[-20:]) / min(20, len(rows)), 1),
                       "device": str(d.device), "processes": d.world}
            if d.main:
                save_checkpoint(out, model, tok, {**meta, **summary, "train": asdict(cfg)}, optimizer=opt)
                _write_log(out / "log.csv", rows)
            if d.world > 1:
                torch_dist.barrier()
    bar.close()
    if d.world > 1:
        torch_dist.destroy_process_group()
    return {**meta, **summary}


def _fingerprint(parts: list[Any]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(np.asarray(p, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _model(model_cfg: dict[str, Any], vocab: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_dict({**model_cfg, "vocab_size": -(-vocab // 64) * 64}))  # a multiple of 64


def _resume_state(out: Path, stage: str, fingerprint: str) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    meta = read_config(out)
    if meta.get("stage") != stage:
        raise PicoragError(f"{out} holds a {meta.get('stage')} checkpoint; cannot resume {stage} from it")
    if meta.get("data", {}).get("fingerprint") != fingerprint:
        raise PicoragError(f"{out} was trained on other data; resume with the same sources")
    model, tok, meta = load_checkpoint(out)
    return model, tok, meta


def pretrain(sources: list[str], out: str | Path, model_cfg: dict[str, Any], cfg: TrainConfig,
             kb: str | None = None, tokenizer: str | None = None, vocab_size: int = 2048, resume: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Train a tokenizer (unless given one) and a model from scratch on text files and/or a KB's chunks.
    `model_cfg` holds GPTConfig fields (sequence_len, n_layer, n_head, n_embd, block_pattern, ...)."""
    d = init_distributed(cfg.device)
    out = Path(out)
    texts = read_texts(sources, kb)
    if resume:
        tok = Tokenizer.load(out / "tokenizer.json") if (out / "tokenizer.json").is_file() else None
        if tok is None:
            raise PicoragError(f"nothing to resume in {out}")
    elif tokenizer:
        tok = Tokenizer.load(tokenizer)
    else:
        tok = Tokenizer()
        sample, size = [], 0
        for t in texts:  # 4M characters are plenty for a few thousand merges, and keep this to minutes
            sample.append(t)
            size += len(t)
            if size > 4_000_000:
                break
        tok.train(sample, vocab_size=vocab_size, progress=progress and d.main)
    bos = tok.special_tokens["<|bos|>"]
    ids = np.array([i for t in texts for i in (bos, *tok.encode(t))], dtype=np.int32)
    fingerprint = _fingerprint([ids])
    seq_len = int(model_cfg.get("sequence_len", GPTConfig.sequence_len))
    data = TokenData(ids, seq_len, cfg.batch_size, cfg.seed)
    if resume:
        model, tok, old = _resume_state(out, "pretrain", fingerprint)
        if cfg.steps <= old["step"]:
            raise PicoragError(f"{out} is already at step {old['step']}; give --steps beyond it")
        start = old["step"]
    else:
        model, start = _model(model_cfg, tok.vocab_size, cfg.seed), 0
    meta = {"stage": "pretrain", "data": {"fingerprint": fingerprint, "tokens": int(len(ids)),
                                          "texts": len(texts)}}
    return fit(model, data, cfg, out, tok, meta, d, start, out if resume else None, progress)


def rag_finetune(conversations: str | Path, out: str | Path, cfg: TrainConfig, init: str | Path | None = None,
                 resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune a checkpoint (`init`) on conversations JSONL: loss on the assistant's tokens only.
    Conversations longer than the model's context get their passages cut to fit (or are skipped)."""
    d = init_distributed(cfg.device)
    out = Path(out)
    if not resume and init is None:
        raise PicoragError("rag-finetune starts from a pretrained checkpoint: give --init DIR")
    model, tok, base = load_checkpoint(out if resume else init)  # type: ignore[arg-type]
    limit = model.config.sequence_len + 1  # inputs and targets are the ids shifted by one
    examples, skipped = [], 0
    for msgs in read_conversations(conversations):
        fitted = fit_conversation(tok, msgs, limit)
        if fitted is None:
            skipped += 1
            continue
        examples.append(encode_conversation(tok, fitted))
    data = ChatData(examples, cfg.batch_size, tok.special_tokens["<|bos|>"], cfg.seed)
    fingerprint = _fingerprint([ids for ids, _ in examples])
    start = 0
    if resume:
        model, tok, old = _resume_state(out, "rag-finetune", fingerprint)
        if cfg.steps <= old["step"]:
            raise PicoragError(f"{out} is already at step {old['step']}; give --steps beyond it")
        start, init = old["step"], old.get("init")
    meta = {"stage": "rag-finetune", "init": str(init), "data": {"fingerprint": fingerprint,
                                                                  "examples": len(examples), "skipped": skipped}}
    return fit(model, data, cfg, out, tok, meta, d, start, out if resume else None, progress)
