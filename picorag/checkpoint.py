"""Model-lab checkpoints: a directory of safetensors and JSON, nothing pickled.

    DIR/config.json             {"format": "picorag-gpt", "version": 1, "model": GPTConfig, "train": {...},
                                 "step": N, "stage": "pretrain" | "rag-finetune", ...}
    DIR/model.safetensors       the weights (the tied output layer is the embedding, stored once)
    DIR/tokenizer.json          picorag.tokenizer's JSON
    DIR/optimizer.safetensors   AdamW moments and step per parameter ("<param>::exp_avg", ...), for resuming
    DIR/log.csv                 the training curve (written by train.py)

Files are written under temporary names and renamed, config.json last, so a directory whose config.json
exists is complete.

>>> import tempfile
>>> from picorag.model import GPT, GPTConfig
>>> from picorag.tokenizer import Tokenizer
>>> d = tempfile.mkdtemp()
>>> m = GPT(GPTConfig(vocab_size=265, n_layer=1, n_head=1, n_embd=8, sequence_len=16))
>>> save_checkpoint(d, m, Tokenizer(), {"step": 0})
>>> model, tok, meta = load_checkpoint(d)
>>> meta["model"]["n_embd"], tok.vocab_size
(8, 265)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model import GPT, GPTConfig
from .records import PicoragError
from .tokenizer import Tokenizer

FORMAT = "picorag-gpt"
VERSION = 1


def _replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def save_checkpoint(path: str | os.PathLike, model: GPT, tok: Tokenizer, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write weights, tokenizer, optimizer state (when given) and config.json with `meta` merged in."""
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, d / "model.safetensors.tmp", metadata={"format": FORMAT})
    _replace(d / "model.safetensors.tmp", d / "model.safetensors")
    tok.save(d / "tokenizer.json.tmp")
    _replace(d / "tokenizer.json.tmp", d / "tokenizer.json")
    if optimizer is not None:
        save_file(optimizer_tensors(model, optimizer), d / "optimizer.safetensors.tmp")
        _replace(d / "optimizer.safetensors.tmp", d / "optimizer.safetensors")
    elif (d / "optimizer.safetensors").exists():
        (d / "optimizer.safetensors").unlink()  # stale moments must not be resumed with new weights
    config = {"format": FORMAT, "version": VERSION, **meta, "model": model.config.to_dict()}
    (d / "config.json.tmp").write_text(json.dumps(config, indent=1, ensure_ascii=False), encoding="utf-8")
    _replace(d / "config.json.tmp", d / "config.json")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise PicoragError(f"{path} is not a picorag model checkpoint (no config.json)")
    try:
        config = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PicoragError(f"{f} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise PicoragError(f"{f} is not a picorag model checkpoint")
    if config.get("version") != VERSION:
        raise PicoragError(f"{f}: checkpoint version {config.get('version')}, this picorag reads {VERSION}")
    return config


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """The model (on `device`, eval mode), its tokenizer and the config.json contents."""
    d = Path(path)
    meta = read_config(d)
    cfg = GPTConfig.from_dict(meta["model"])
    model = GPT(cfg)
    try:
        state = load_file(d / "model.safetensors")
        tok = Tokenizer.load(d / "tokenizer.json")
    except (FileNotFoundError, SafetensorError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise PicoragError(f"checkpoint {path} is damaged or incomplete ({type(e).__name__}: {e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PicoragError(f"checkpoint {path}: weights do not match its config ({str(e).splitlines()[0]})") from None
    if tok.vocab_size > cfg.vocab_size:
        raise PicoragError(f"checkpoint {path}: tokenizer has {tok.vocab_size} tokens, model only {cfg.vocab_size}")
    return model.to(device).eval(), tok, meta


def optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as named tensors (AdamW: step, exp_avg, exp_avg_sq)."""
    out = {}
    for name, p in model.named_parameters():
        for key, value in optimizer.state.get(p, {}).items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            out[f"{name}::{key}"] = t.detach().to("cpu").contiguous()
    return out


def load_optimizer(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore what `optimizer_tensors` saved into a fresh optimizer over the same model."""
    f = Path(path) / "optimizer.safetensors"
    if not f.is_file():
        raise PicoragError(f"{path} has no optimizer state to resume from")
    try:
        tensors = load_file(f)
    except SafetensorError as e:
        raise PicoragError(f"{f} is damaged ({e})") from None
    params = dict(model.named_parameters())
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, _, field = key.partition("::")
        if name not in params:
            raise PicoragError(f"{f}: state for unknown parameter {name}")
        state.setdefault(name, {})[field] = t
    for name, st in state.items():
        p = params[name]
        # AdamW keeps `step` on the CPU (unless capturable) and the moments next to the parameter
        optimizer.state[p] = {k: (v if k == "step" else v.to(p.device)) for k, v in st.items()}
