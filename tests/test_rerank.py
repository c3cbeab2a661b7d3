"""The rerank stage with a cross-encoder we construct: ONNX export of a tiny pair scorer."""

import json
import warnings

import numpy as np
import pytest

from picorag.kb import KnowledgeBase
from picorag.records import PicoragError
from picorag.rerank import OnnxCrossEncoder, load_reranker

WORDS = ["[PAD]", "[UNK]", "[SEP]", "cat", "dog", "fish", "tea", "green", "sleeps", "barks"]


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory):
    """score(query, passage) = <mean embedding of the query tokens, mean embedding of the passage tokens>."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    d = tmp_path_factory.mktemp("ce")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A", pair="$A:0 [SEP]:1 $B:1",
                                                       special_tokens=[("[SEP]", 2)])
    tok.save(str(d / "tokenizer.json"))

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.e = torch.nn.Embedding(len(WORDS), 6)

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.e(input_ids)
            m = attention_mask.float()
            a = m * (1 - token_type_ids.float())
            b = m * token_type_ids.float()
            qa = (h * a.unsqueeze(-1)).sum(1) / a.sum(1, keepdim=True).clamp(min=1)
            pb = (h * b.unsqueeze(-1)).sum(1) / b.sum(1, keepdim=True).clamp(min=1)
            return (qa * pb).sum(-1, keepdim=True)  # logits (batch, 1)

    torch.manual_seed(0)
    model = Pair()
    ones = torch.ones(1, 3, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ones, ones, ones), str(d / "model.onnx"), dynamo=False,
                          input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
                          dynamic_axes={n: {0: "b", 1: "s"} for n in ["input_ids", "attention_mask", "token_type_ids"]})
    return d, model.e.weight.detach().numpy()


def test_scores_match_the_model(cross_encoder_dir):
    d, table = cross_encoder_dir
    rr = load_reranker(str(d))
    assert isinstance(rr, OnnxCrossEncoder)
    got = rr.score("green tea", ["cat sleeps", "tea", "dog barks fish"])
    idx = {w: i for i, w in enumerate(WORDS)}
    q = (table[idx["green"]] + table[idx["tea"]]) / 2
    mean = lambda words: table[[idx[w] for w in words]].mean(0)  # noqa: E731
    # the pair template puts [SEP] in the passage segment, so it enters the passage mean
    passages = [["cat", "sleeps"], ["tea"], ["dog", "barks", "fish"]]
    want = [q @ mean(["[SEP]", *p]) for p in passages]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rerank_reorders_search_results(cross_encoder_dir, tmp_path):
    d, _ = cross_encoder_dir
    rr = load_reranker(str(d))
    src = tmp_path / "docs.jsonl"
    docs = [{"id": "a", "text": "cat sleeps"}, {"id": "b", "text": "dog barks"}, {"id": "c", "text": "cat dog fish"},
            {"id": "e", "text": "green tea"}]
    src.write_text("".join(json.dumps(x) + "\n" for x in docs))
    kb = KnowledgeBase.build(tmp_path / "kb", [src])
    plain = kb.search("cat dog", k=3)
    reranked = kb.search("cat dog", k=3, reranker=rr)
    scores = rr.score("cat dog", [h.text for h in plain])
    # the reranked list is the candidates sorted by the cross-encoder, carrying its scores
    assert [h.score for h in reranked] == pytest.approx(sorted(scores.tolist(), reverse=True)[:3])
    assert {h.id for h in reranked} <= {h.id for h in kb.search("cat dog", k=12)}


def test_reranker_errors(tmp_path):
    with pytest.raises(PicoragError, match="not found"):
        load_reranker(str(tmp_path / "nope"))
    with pytest.raises(PicoragError, match="holds no reranker"):
        load_reranker(str(tmp_path))
