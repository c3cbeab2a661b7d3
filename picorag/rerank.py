"""Rerankers: score (query, passage) pairs jointly and reorder the fused candidates.

No cross-encoder ships inside a PyPI package we can install offline, so picorag loads yours:
  ONNX       a directory with model.onnx + tokenizer.json (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2
             exported with `optimum-cli export onnx --task text-classification`); the graph takes
             input_ids / attention_mask / token_type_ids for the pair and returns logits
  sentence-transformers  a saved CrossEncoder folder (needs `pip install sentence-transformers`)

>>> rr = load_reranker("models/ms-marco-MiniLM-L-6-v2-onnx")           # doctest: +SKIP
>>> kb.search("what causes fever", k=5, reranker=rr)                    # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from .encoders import _need, session_options
from .records import PicoragError


class OnnxCrossEncoder:
    """Score = the relevance logit (the last column when the model outputs several classes)."""

    def __init__(self, path: Path, max_length: int = 512):
        _need("onnxruntime", "onnxruntime")
        import onnxruntime as ort
        from tokenizers import Tokenizer

        try:
            self.session = ort.InferenceSession(str(path / "model.onnx"), session_options(),
                                                providers=["CPUExecutionProvider"])
            self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # onnxruntime/tokenizers raise their own exception types
            raise PicoragError(f"cannot load reranker at {path}: {e}") from None
        self.tok.enable_truncation(max_length=max_length)
        self.tok.enable_padding(pad_id=self.tok.token_to_id("[PAD]") or 0)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.name = str(path)

    def score(self, query: str, texts: Sequence[str], batch: int = 16) -> np.ndarray:
        out = []
        for s in range(0, len(texts), batch):
            enc = self.tok.encode_batch([(query, t) for t in texts[s : s + batch]])
            feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
            logits = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
            out.append(np.asarray(logits, dtype=np.float32).reshape(len(enc), -1)[:, -1])
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class STCrossEncoder:
    def __init__(self, path: Path):
        _need("sentence_transformers", "sentence-transformers")
        from sentence_transformers import CrossEncoder

        try:
            self.model = CrossEncoder(str(path), device="cpu")
        except Exception as e:  # many loader exception types: report them as one line
            raise PicoragError(f"cannot load reranker at {path}: {e}") from None
        self.name = str(path)

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        logits = self.model.predict([(query, t) for t in texts], show_progress_bar=False, activation_fn=None)
        return np.asarray(logits, dtype=np.float32).reshape(len(texts), -1)[:, -1]


@lru_cache(maxsize=2)
def load_reranker(name: str) -> OnnxCrossEncoder | STCrossEncoder:
    path = Path(name).expanduser()
    if not path.is_dir():
        raise PicoragError(f"reranker {name!r} not found: give a directory with model.onnx + tokenizer.json "
                           "or a saved sentence-transformers CrossEncoder")
    if (path / "model.onnx").exists() and (path / "tokenizer.json").exists():
        cfg = json.loads((path / "picorag.json").read_text()) if (path / "picorag.json").exists() else {}
        return OnnxCrossEncoder(path, **cfg)
    if (path / "config.json").exists():
        return STCrossEncoder(path)
    raise PicoragError(f"{path} holds no reranker picorag can load (need model.onnx + tokenizer.json, "
                       "or a sentence-transformers CrossEncoder folder)")
