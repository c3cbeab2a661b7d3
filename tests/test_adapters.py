"""Adapters: nanochat's RetrievalManager and `python -m picorag.retrieval` over a picorag KB, and
the LangChain retriever and tool (skipped where langchain-core is not installed)."""

import json
import subprocess
import sys

import pytest

from picorag.kb import KnowledgeBase
from picorag.prompt import document
from picorag.records import PicoragError
from picorag.retrieval import Document, RetrievalManager, encoder_name, prepare_knowledge_base

DOCS = [  # nanochat's JSONL shape
    {"id": "policy_001", "title": "Return Policy", "source": "handbook",
     "content": "Customers can return items within 30 days of purchase with original receipt."},
    {"id": "policy_002", "title": "Shipping Information", "source": "handbook",
     "content": "We offer free shipping on orders over $50. Standard shipping takes 3-5 business days."},
    {"id": "faq_001", "title": "Account Creation", "source": "faq",
     "content": "To create an account, click the Sign Up button and provide your email address."},
    {"id": "faq_002", "title": "Password", "source": "faq",
     "content": "Forgot your password? Use the reset link on the login page to choose a new one."},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def docs_path(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("docs") / "docs.jsonl", DOCS)


@pytest.fixture(scope="module")
def bm25_kb(docs_path, tmp_path_factory):
    return prepare_knowledge_base(docs_path, tmp_path_factory.mktemp("bm25") / "kb", retriever_type="simple").path


@pytest.fixture(scope="module")
def dense_kb(docs_path, tmp_path_factory):
    return KnowledgeBase.build(tmp_path_factory.mktemp("dense") / "kb", [docs_path], dense="minilm").path


# -- RetrievalManager -----------------------------------------------------------------------------


def test_bm25_documents_have_nanochat_shape(bm25_kb):
    docs = RetrievalManager(retriever_type="bm25", knowledge_base_path=bm25_kb).retrieve("return policy", top_k=3)
    assert docs and all(isinstance(d, Document) for d in docs)
    top = docs[0]
    assert top.title == "Return Policy" and top.id == "policy_001-0" and top.meta["doc_id"] == "policy_001"
    assert isinstance(top.score, float) and top.score >= docs[-1].score
    assert top.citation and top.metadata is top.meta and top.meta["source"] == "handbook"
    hit = KnowledgeBase.open(bm25_kb).search("return policy", k=1, mode="bm25")[0]
    assert top.to_dict() == document(hit)  # exactly a conversation document of prompt.py
    assert Document.from_dict(top.to_dict()).to_dict() == top.to_dict()
    simple = RetrievalManager("simple", knowledge_base_path=bm25_kb).retrieve("return policy", top_k=3)
    assert [d.to_dict() for d in simple] == [d.to_dict() for d in docs]


def test_where_and_augment_conversation(bm25_kb):
    m = RetrievalManager("bm25", knowledge_base_path=bm25_kb)
    assert {d.meta["doc_id"] for d in m.retrieve("password account", top_k=5, where={"source": "faq"})} <= {
        "faq_001", "faq_002"}
    conv = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "return policy?"}],
            "id": 7}
    out = m.augment_conversation(conv, top_k=2)
    assert [x["role"] for x in out["messages"]] == ["system", "retrieval", "user"] and out["id"] == 7
    assert out["messages"][1]["documents"][0]["title"] == "Return Policy" and len(conv["messages"]) == 2
    assert m.augment_conversation({"messages": []}) == {"messages": []}


def test_dense_and_hybrid(dense_kb):
    for kind in ("dense", "hybrid"):
        m = RetrievalManager(kind, knowledge_base_path=dense_kb, model_name="all-MiniLM-L6-v2", use_gpu=True)
        docs = m.retrieve("How do I get my money back for a purchase?", top_k=2)
        assert docs[0].title == "Return Policy", kind
    weighted = RetrievalManager("hybrid", knowledge_base_path=dense_kb, alpha=0.7)
    assert weighted.search == {"fusion": "weighted", "dense_weight": 0.7}
    assert weighted.retrieve("free shipping", top_k=1)[0].title == "Shipping Information"


def test_manager_errors(bm25_kb, dense_kb, tmp_path):
    with pytest.raises(PicoragError, match="has no vectors"):  # the KB's own message
        RetrievalManager("dense", knowledge_base_path=bm25_kb)
    with pytest.raises(PicoragError, match="unknown retriever_type 'tfidf'"):
        RetrievalManager("tfidf", knowledge_base_path=bm25_kb)
    with pytest.raises(PicoragError, match="needs knowledge_base_path"):
        RetrievalManager("bm25")
    with pytest.raises(PicoragError, match="knowledge base not found"):
        RetrievalManager("bm25", knowledge_base_path=tmp_path / "nope")
    with pytest.raises(PicoragError, match="unknown RetrievalManager option"):
        RetrievalManager("bm25", knowledge_base_path=bm25_kb, k1=1.2)
    with pytest.raises(PicoragError, match="embedded with minilm, not e5-small"):
        RetrievalManager("dense", knowledge_base_path=dense_kb, model_name="e5-small")
    assert encoder_name(None) == "auto" and encoder_name("sentence-transformers/all-MiniLM-L6-v2") == "minilm"


# -- python -m picorag.retrieval ------------------------------------------------------------------


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "picorag.retrieval", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_builds_working_kbs(docs_path, tmp_path):
    r = run_cli("--documents", docs_path, "--output", tmp_path / "kb", "--type", "bm25", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "4 documents" in r.stdout
    docs = RetrievalManager("bm25", knowledge_base_path=tmp_path / "kb").retrieve("shipping", top_k=1)
    assert docs[0].title == "Shipping Information"
    r = run_cli("--documents", docs_path, "--output", tmp_path / "hkb", "--type", "hybrid", "--model", "minilm",
                cwd=tmp_path)
    assert r.returncode == 0 and "minilm vectors" in r.stdout, r.stderr
    docs = RetrievalManager("hybrid", knowledge_base_path=tmp_path / "hkb").retrieve("reset my login", top_k=1)
    assert docs[0].title == "Password"


def test_cli_errors_are_one_line(docs_path, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "content": 3}\n')
    for args in (["--documents", tmp_path / "missing.jsonl"], ["--documents", bad],
                 ["--documents", docs_path, "--type", "dense", "--model", "no-such-model"]):
        r = run_cli(*args, "--output", tmp_path / "kb", cwd=tmp_path)
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.startswith("picorag: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "kb" / "manifest.json").exists()


# -- LangChain ------------------------------------------------------------------------------------


def test_langchain_retriever(dense_kb):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document as LCDocument

    from picorag.langchain import PicoragRetriever

    docs = PicoragRetriever(kb_path=str(dense_kb), k=2).invoke("free shipping")
    assert len(docs) == 2 and all(isinstance(d, LCDocument) for d in docs)
    top = docs[0]
    assert top.page_content.startswith("We offer free shipping") and top.id == "policy_002-0"
    assert {"id", "doc_id", "score", "citation", "meta"} <= set(top.metadata)
    assert top.metadata["meta"]["source"] == "handbook" and isinstance(top.metadata["score"], float)
    faq = PicoragRetriever(kb_path=dense_kb, k=4, mode="bm25", where={"source": "faq"}).invoke("password")
    assert {d.metadata["doc_id"] for d in faq} <= {"faq_001", "faq_002"}


def test_langchain_retriever_errors(bm25_kb, tmp_path):
    pytest.importorskip("langchain_core")
    from picorag.langchain import PicoragRetriever

    with pytest.raises(PicoragError, match="has no vectors"):
        PicoragRetriever(kb_path=bm25_kb, mode="dense")
    with pytest.raises(PicoragError, match="knowledge base not found"):
        PicoragRetriever(kb_path=tmp_path / "nope")


def test_langchain_tool_answers_with_citations(bm25_kb):
    pytest.importorskip("langchain_core")
    from picorag.langchain import picorag_tool

    tool = picorag_tool(bm25_kb, k=3)
    assert tool.name == "picorag_ask" and "question" in tool.args
    text = tool.invoke("How many days do customers have to return items?")
    answer, _, sources = text.partition("\n\nSources:\n")
    assert "30 days" in answer and "[1]" in answer
    assert sources.startswith("[1] Return Policy")
    msg = tool.invoke({"name": tool.name, "args": {"question": "free shipping?"}, "id": "c1", "type": "tool_call"})
    assert msg.content.startswith("We offer free shipping") and msg.artifact["citations"][0]["id"] == "policy_002-0"
    assert tool.invoke({"question": " "}) == "empty question"  # an agent sees the error, it does not crash


def test_langchain_missing_dependency_is_explained():
    code = "import sys; sys.modules['langchain_core'] = None; import picorag.langchain"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "ImportError: picorag.langchain needs langchain-core: pip install langchain-core" in (
        r.stderr)
