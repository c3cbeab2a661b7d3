"""nanochat's retrieval interface over a picorag knowledge base, so nanochat RAG scripts run unchanged.

    python -m picorag.retrieval --documents docs.jsonl --output kb --type hybrid   # build (vectors: dense/hybrid)
    RetrievalManager(retriever_type="hybrid", knowledge_base_path="kb").retrieve(query, top_k=5)

retriever_type: simple and bm25 search BM25; dense searches vectors; hybrid fuses both. A
`Document.to_dict()` is exactly a conversation document of prompt.py: {"id", "title", "content",
"source", "score", "citation"}, so `{"role": "retrieval", "documents": [d.to_dict() for d in docs]}` works.

>>> import pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "docs.jsonl").write_text('{"id": "p1", "title": "Return Policy", "content": "Returns within 30 days."}')
>>> _ = prepare_knowledge_base(d / "docs.jsonl", d / "kb", retriever_type="bm25")
>>> [doc] = RetrievalManager("bm25", knowledge_base_path=d / "kb").retrieve("return policy", top_k=1)
>>> doc.title, list(doc.to_dict())
('Return Policy', ['id', 'title', 'content', 'source', 'score', 'citation'])
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kb import KnowledgeBase, Warn, Where
from .prompt import document
from .records import Hit, PicoragError

RETRIEVER_TYPES = {"simple": "bm25", "bm25": "bm25", "dense": "dense", "hybrid": "hybrid"}
DOC_KEYS = ("id", "title", "content", "source", "score", "citation")
# nanochat names its models the sentence-transformers way; these are the same models, shipped offline
MODEL_ALIASES = {"all-minilm-l6-v2": "minilm", "sentence-transformers/all-minilm-l6-v2": "minilm",
                 "multilingual-e5-small": "e5-small", "intfloat/multilingual-e5-small": "e5-small"}


@dataclass
class Document:
    """A retrieved chunk, nanochat-style. `id` is the chunk id; meta["doc_id"] the input document's id."""

    id: str
    title: str
    content: str
    source: str = ""
    score: float = 0.0
    citation: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hit(cls, hit: Hit) -> Document:
        return cls(**document(hit), meta={**hit.meta, "doc_id": hit.doc_id})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Document:
        return cls(**{k: d[k] for k in DOC_KEYS if k in d}, meta=dict(d.get("meta", d.get("metadata")) or {}))

    @property
    def metadata(self) -> dict[str, Any]:  # nanochat's name for it
        return self.meta

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in DOC_KEYS}


def encoder_name(model: str | None) -> str:
    """picorag's encoder name for a nanochat/sentence-transformers model name; None -> "auto"."""
    if not model:
        return "auto"
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve())  # as the KB's manifest records a model dir
    return MODEL_ALIASES.get(model.lower(), model)


def search_mode(retriever_type: str) -> str:
    if retriever_type not in RETRIEVER_TYPES:
        raise PicoragError(f"unknown retriever_type {retriever_type!r}; choose one of {', '.join(RETRIEVER_TYPES)}")
    return RETRIEVER_TYPES[retriever_type]


class RetrievalManager:
    """nanochat's RetrievalManager over a picorag KB (built with `prepare_knowledge_base` or picorag build).

    `model_name` must agree with the model the KB was embedded with (queries need the same one);
    `use_gpu` is accepted and ignored (picorag encodes on CPU); `alpha` weights dense scores in a
    weighted hybrid fusion, as nanochat's does; other keywords are picorag search options
    (fusion, recall_factor, rrf_k, cut, dense_weight, nprobe, reranker).
    """

    def __init__(self, retriever_type: str = "simple", knowledge_base_path: str | Path | None = None, *,
                 model_name: str | None = None, use_gpu: bool = False, alpha: float | None = None,
                 **search: Any) -> None:
        from .retrieve import Options, resolve_mode

        self.mode = search_mode(retriever_type)
        if knowledge_base_path is None:
            raise PicoragError("RetrievalManager needs knowledge_base_path; build one with: "
                               "python -m picorag.retrieval --documents DOCS.jsonl --output KB")
        unknown = set(search) - ({f.name for f in dataclasses.fields(Options)} - {"mode"})
        if unknown:
            raise PicoragError(f"unknown RetrievalManager option(s): {', '.join(sorted(unknown))}")
        if alpha is not None:
            search = {"fusion": "weighted", "dense_weight": alpha, **search}
        self.kb = KnowledgeBase.open(knowledge_base_path)
        resolve_mode(self.kb, self.mode)  # dense/hybrid on a KB without vectors: the KB's own clear error
        dense = self.kb.manifest.get("dense")
        if dense and self.mode != "bm25" and encoder_name(model_name) not in ("auto", dense["model"]):
            raise PicoragError(f"{self.kb.path} was embedded with {dense['model']}, not {model_name}; rebuild it "
                               f"with: python -m picorag.retrieval --documents … --output {self.kb.path} "
                               f"--type {retriever_type} --model {model_name}")
        self.search = search

    def retrieve(self, query: str, top_k: int = 5, where: Where | None = None) -> list[Document]:
        """The top_k best chunks, best first; `where` filters metadata, e.g. {"source": "faq"}."""
        hits = self.kb.search(query, k=top_k, where=where, mode=self.mode, **self.search)
        return [Document.from_hit(h) for h in hits]

    def augment_conversation(self, conversation: dict[str, Any], top_k: int = 5,
                             insert_position: str = "before_user") -> dict[str, Any]:
        """nanochat's: retrieve for the last user message and insert a retrieval message
        before it ("before_user") or after the system message ("after_system")."""
        messages = list(conversation.get("messages", []))
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if insert_position not in ("before_user", "after_system"):
            raise PicoragError(f"unknown insert_position {insert_position!r}; use before_user or after_system")
        docs = self.retrieve(messages[users[-1]].get("content", ""), top_k) if users else []
        if not docs:
            return conversation
        if insert_position == "before_user":
            at = users[-1]
        else:
            at = next((i + 1 for i, m in enumerate(messages) if m.get("role") == "system"), 0)
        messages.insert(at, {"role": "retrieval", "documents": [d.to_dict() for d in docs]})
        return {**conversation, "messages": messages}

    def close(self) -> None:
        self.kb.close()


def prepare_knowledge_base(documents_path: str | Path | Sequence[str | Path], output_path: str | Path,
                           retriever_type: str = "dense", model_name: str | None = None, index: str = "flat",
                           warn: Warn | None = None) -> KnowledgeBase:
    """nanochat's builder: a KB from JSONL ({"id", "title", "content", "source"}) or any picorag input;
    dense and hybrid also store vectors from `model_name` (auto, minilm, e5-small or a model dir)."""
    sources = [documents_path] if isinstance(documents_path, str | Path) else list(documents_path)
    dense = None if search_mode(retriever_type) == "bm25" else encoder_name(model_name)
    return KnowledgeBase.build(output_path, sources, dense=dense, index=index, warn=warn)


def main(argv: list[str] | None = None) -> int:
    """`python -m picorag.retrieval`: build a KB; errors print one line and exit 1."""
    p = argparse.ArgumentParser(prog="python -m picorag.retrieval",
                                description="Build a picorag knowledge base from nanochat-style JSONL documents.")
    p.add_argument("--documents", required=True, nargs="+", help="JSONL file(s) (or any picorag input)")
    p.add_argument("--output", required=True, help="knowledge base directory to build (replaced if it is one)")
    p.add_argument("--type", default="simple", choices=list(RETRIEVER_TYPES),
                   help="simple/bm25: BM25 only; dense/hybrid: also store vectors (default simple)")
    p.add_argument("--model", help="encoder for dense/hybrid: auto (default), minilm, e5-small or a model dir")
    p.add_argument("--index", default="flat", choices=["flat", "hnsw", "ivfpq"], help="vector index (default flat)")
    args = p.parse_args(argv)
    from .cli import run, warn

    def build(args: argparse.Namespace) -> int:
        if args.model and search_mode(args.type) == "bm25":
            warn(f"--model is ignored for --type {args.type} (no vectors are stored)")
        kb = prepare_knowledge_base(args.documents, args.output, args.type, args.model, args.index, warn)
        info = kb.info()
        vectors = f", {info['dense']['model']} vectors" if info["dense"] else ""
        print(f"built {args.output}: {info['docs']} documents, {info['chunks']} chunks{vectors}")
        return 0

    return run(build, args)

if __name__ == "__main__":
    raise SystemExit(main())
