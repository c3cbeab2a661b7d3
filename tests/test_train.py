"""The model lab's training: checkpoints, exact resume, conversation encoding, RAG data, the gpt generator."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from picorag.checkpoint import load_checkpoint
from picorag.cli import main
from picorag.dataset import (
    ChatData,
    encode_conversation,
    fit_conversation,
    prepare_dataset,
    read_conversations,
    template_questions,
)
from picorag.generate import load_generator
from picorag.prompt import render
from picorag.records import PicoragError, Record, Section
from picorag.tokenizer import Tokenizer
from picorag.train import TrainConfig, pretrain, rag_finetune

torch.set_num_threads(1)
LAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "law" / "corpus" / "xianfa.txt"
MODEL = {"sequence_len": 512, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_pattern": "T,M", "chunk_size": 16}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("text") / "xianfa.txt"
    p.write_text(LAW.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, text_file) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "base"
    pretrain([str(text_file)], out, MODEL, TrainConfig(steps=30, batch_size=4, lr=1e-2, eval_every=10),
             vocab_size=420, progress=False)
    return out


def test_pretrain_learns_and_logs(pretrained):
    rows = (pretrained / "log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,val_loss,lr,tokens,tokens_per_s,elapsed_s" and len(rows) == 31
    losses = [float(r.split(",")[1]) for r in rows[1:]]
    assert losses[-1] < losses[0] - 0.8  # ~6.1 (uniform over 448 ids) down
    meta = json.loads((pretrained / "config.json").read_text())
    assert meta["stage"] == "pretrain" and meta["step"] == 30 and meta["model"]["block_pattern"] == "T,M"
    assert meta["val_loss"] is not None and meta["params"] > 0
    model, tok, _ = load_checkpoint(pretrained)
    assert tok.vocab_size == 420 and model.config.vocab_size == 448  # padded to a multiple of 64


def test_resume_is_exact(tmp_path, text_file):
    cfg = dict(batch_size=4, lr=1e-2, eval_every=4)
    small = {**MODEL, "sequence_len": 64}
    straight, split = tmp_path / "straight", tmp_path / "split"
    pretrain([str(text_file)], straight, small, TrainConfig(steps=8, **cfg), vocab_size=300, progress=False)
    pretrain([str(text_file)], split, small, TrainConfig(steps=3, **cfg), vocab_size=300, progress=False)
    pretrain([str(text_file)], split, small, TrainConfig(steps=8, **cfg), resume=True, progress=False)
    a, b = load_file(straight / "model.safetensors"), load_file(split / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = load_file(straight / "optimizer.safetensors"), load_file(split / "optimizer.safetensors")
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)
    assert (straight / "log.csv").read_text().count("\n") == (split / "log.csv").read_text().count("\n") == 9
    with pytest.raises(PicoragError, match="already at step"):
        pretrain([str(text_file)], split, small, TrainConfig(steps=8, **cfg), resume=True, progress=False)
    other = tmp_path / "other.txt"
    other.write_text("different text " * 400)
    with pytest.raises(PicoragError, match="other data"):
        pretrain([str(other)], split, small, TrainConfig(steps=9, **cfg), resume=True, progress=False)


def test_bad_checkpoints_are_one_line_errors(tmp_path, pretrained):
    with pytest.raises(PicoragError, match="no config.json"):
        load_checkpoint(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(pretrained, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(PicoragError, match="damaged"):
        load_checkpoint(bad)
    (bad / "config.json").write_text('{"format": "picorag-gpt", "version": 99}')
    with pytest.raises(PicoragError, match="version"):
        load_checkpoint(bad)


def conv(answer="Cats purr [1]."):
    return [{"role": "system", "content": "Answer from the context."},
            {"role": "retrieval", "documents": [{"id": "d-0", "title": "Cats", "content": "Cats purr <|end|>."},
                                                {"id": "e-0", "title": "Dogs", "content": "Dogs bark. " * 30}]},
            {"role": "user", "content": "Do cats purr?"}, {"role": "assistant", "content": answer}]


def test_encoding_follows_render_and_masks_the_answer():
    tok = Tokenizer()
    ids, mask = encode_conversation(tok, conv())
    text = tok.decode(ids)
    # the same text as prompt.render, with role markers as special tokens
    plain = render(conv(), add_generation_prompt=False)
    for role in ("system", "retrieval", "user", "assistant"):
        plain = plain.replace(f"<|{role}|>", f"<|{role}_start|>", 1)
        text = text.replace(f"<|{role}_end|>", "<|end|>")
    assert text == "<|bos|>" + plain
    assert ids.count(tok.special_tokens["<|retrieval_end|>"]) == 1  # the passage's "<|end|>" is plain text
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learned == "Cats purr [1].<|assistant_end|>"
    prompt, _ = encode_conversation(tok, conv()[:-1], add_generation_prompt=True)
    assert prompt[-1] == tok.special_tokens["<|assistant_start|>"] and prompt == ids[:len(prompt)]


def test_fit_conversation_cuts_passages_but_keeps_the_cited_one():
    tok = Tokenizer()
    n = len(encode_conversation(tok, conv())[0])
    short = fit_conversation(tok, conv(), n - 150)
    assert short is not None and len(encode_conversation(tok, short)[0]) <= n - 150
    assert short[1]["documents"][0]["content"] == "Cats purr <|end|>."
    assert fit_conversation(tok, conv("Dogs bark [2]."), 120) is None  # would drop the cited passage
    assert fit_conversation(tok, conv(), n) == conv()


def test_chat_batches_target_only_the_answer():
    tok = Tokenizer()
    ex = [encode_conversation(tok, conv()), encode_conversation(tok, conv("No idea."))]
    x, y = ChatData(ex, batch_size=4, pad_id=0).batch(0)
    for row_x, row_y in zip(x, y):
        got = tok.decode([int(t) for t in row_y if t >= 0])
        assert got in ("Cats purr [1].<|assistant_end|>", "No idea.<|assistant_end|>")
        n = int((row_y >= 0).nonzero()[0])  # inputs are the targets shifted by one
        assert int(row_x[n + 1]) == int(row_y[n])


def test_template_questions():
    recs = [Record("d1", "Warranty", [Section("Every laptop has a two-year warranty covering hardware faults. "
                                              "Water damage is not covered by the warranty at all.")]),
            Record("xf", "宪法", [Section("第一条　中华人民共和国是工人阶级领导的社会主义国家。其他内容。",
                                          {"law": "中华人民共和国宪法", "article": "第一条"})])]
    qs = template_questions(recs, per_doc=2)
    zh = next(q for q in qs if q["doc_id"] == "xf")
    assert zh["question"] == "宪法第一条规定了什么？" and zh["answer"] == "中华人民共和国是工人阶级领导的社会主义国家。"
    assert recs[1].sections[0].text.startswith(zh["evidence"]) and len(zh["evidence"]) > 10
    en = [q for q in qs if q["doc_id"] == "d1"]
    assert len(en) == 2 and all(q["question"].startswith("What does Warranty say about ") for q in en)
    assert all(q["answer"] in recs[0].sections[0].text for q in en)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rag") / "ex"
    prepare_dataset("example", str(out), p_absent=0.3, multi_hop=0.3, test_frac=0.2)
    return out


def test_prepare_example_dataset(example):
    for f in ("documents.jsonl", "queries_train.jsonl", "queries_test.jsonl", "conversations_train.jsonl",
              "knowledge_base/manifest.json"):
        assert (example / f).is_file(), f
    rows = [json.loads(line) for line in (example / "conversations_train.jsonl").read_text().splitlines()]
    assert len(rows) == 16
    assert any(not r["answerable"] for r in rows) and any(r["answerable"] for r in rows)
    for r in rows:
        msgs = r["messages"]
        assert [m["role"] for m in msgs] == ["system", "retrieval", "user", "assistant"]
        ret = msgs[1]
        docs = [d for h in ret["hops"] for d in h["documents"]] if ret.get("multi_hop") else ret["documents"]
        if r["answerable"]:  # the cited passage is the gold document's
            n = int(msgs[-1]["content"].rsplit("[", 1)[1].rstrip("]"))
            assert docs[n - 1]["id"].startswith(r["doc_id"] + "-")
        else:
            assert "don't know" in msgs[-1]["content"]
            assert r["doc_id"] not in {d["id"].rsplit("-", 1)[0] for d in docs}
    hops = [r["messages"][1] for r in rows if r["multi_hop"]]
    assert hops and all([h["hop"] for h in m["hops"]] == [1, 2] for m in hops)
    assert len(read_conversations(example / "conversations_train.jsonl")) == 16


def test_rag_finetune_and_gpt_generator(tmp_path, example, pretrained):
    out = tmp_path / "rag"
    summary = rag_finetune(example / "conversations_train.jsonl", out, TrainConfig(steps=6, batch_size=4),
                           init=pretrained, progress=False)
    assert summary["stage"] == "rag-finetune" and summary["data"]["examples"] + summary["data"]["skipped"] == 16
    assert summary["data"]["examples"] > 0
    gen = load_generator("gpt", model=str(out))
    assert gen.can_write and gen.context_window == 512 and gen.count_tokens("abc") > 0
    msgs = [{"role": "system", "content": "S"}, {"role": "retrieval", "documents": []},
            {"role": "user", "content": "Q?"}]
    text = "".join(gen.stream(msgs, max_tokens=8))
    ids, _ = encode_conversation(gen.tok, msgs, add_generation_prompt=True)
    want = []
    for t in gen.model.generate(ids, 8, use_cache=False):
        if t >= min(gen.tok.special_tokens.values()):
            break
        want.append(t)
    assert text == gen.tok.decode(want).rstrip("\ufffd")
    with pytest.raises(PicoragError, match="--model"):
        load_generator("gpt")


def test_ask_with_the_gpt_generator(tmp_path, example, pretrained, capsys):
    # the whole answer path: retrieve, fit the passages to the model's window, stream, resolve citations
    argv = ["ask", str(example / "knowledge_base"), "Do gift cards expire?", "--generator", "gpt", "--model",
            str(pretrained), "--max-tokens", "6", "-k", "2"]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out  # an untrained model's answer: any text, then the sources (or none cited)
    assert "Sources:" in out or "(no passage cited)" in out
    assert main([*argv[:-4], "--model", str(tmp_path / "nothing")]) == 1
    assert "not a picorag model checkpoint" in capsys.readouterr().err


def test_cli_train_commands(tmp_path, text_file, capsys):
    base = tmp_path / "base"
    argv = ["train", "pretrain", "--from", str(text_file), "--out", str(base), "--steps", "3", "--batch-size", "2",
            "--seq-len", "32", "--n-layer", "1", "--n-embd", "16", "--n-head", "1", "--vocab-size", "300",
            "--block-pattern", "M", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 3 and (base / "model.safetensors").is_file()
    assert main(["train", "rag-finetune", "--data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("picorag: error:") and "--init" in err and len(err.splitlines()) == 1
    assert main(["train", "prepare-dataset", "--mode", "build", "--output", str(tmp_path / "d")]) == 1
    assert "--documents" in capsys.readouterr().err


@pytest.mark.slow  # two torch processes start (~10-30 s); run with pytest -m slow
def test_torchrun_two_processes_give_the_one_process_curve(tmp_path, text_file):
    args = ["-m", "picorag", "train", "pretrain", "--from", str(text_file), "--steps", "6", "--batch-size", "4",
            "--seq-len", "64", "--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-pattern", "T,M",
            "--vocab-size", "300", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, timeout=300)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert json.loads(two.stdout)["processes"] == 2  # only rank 0 prints
    curve = [[float(r.split(",")[1]) for r in (tmp_path / d / "log.csv").read_text().splitlines()[1:]]
             for d in ("one", "two")]
    assert len(curve[0]) == 6 and curve[0] == pytest.approx(curve[1], abs=1e-4)


def test_pretraining_text_from_a_kb_skips_deleted_chunks(tmp_path, example):
    from picorag.dataset import read_texts
    from picorag.kb import KnowledgeBase

    kb = tmp_path / "kb"
    shutil.copytree(example / "knowledge_base", kb)
    texts = read_texts(kb=str(kb))
    assert len(texts) == 10 and any("cannot be exchanged for cash" in t for t in texts)
    KnowledgeBase.open(kb).delete(["store_002"])
    texts = read_texts(kb=str(kb))
    assert len(texts) == 9 and not any("cannot be exchanged for cash" in t for t in texts)
    with pytest.raises(PicoragError, match="no text"):
        read_texts([])


def test_refrag_reward_shape():
    from picorag.refrag import reward

    assert reward(1) == 1.0 and reward(1) > reward(2) > reward(3) > reward(None) == 0.0
    assert reward(2, hop_cost=0.3) == pytest.approx(0.7) and reward(50) == 0.0  # never below "not found"


class _Writer:
    """A stand-in model that always writes the same query (to steer an episode)."""

    def __init__(self, model, tok, text):
        self.config, self.ids = model.config, tok.encode(text) + [tok.special_tokens["<|assistant_end|>"]]

    def generate(self, ids, n, **kw):
        yield from self.ids[:n]


def test_refrag_episodes_run_several_hops(example, pretrained):
    from picorag.kb import KnowledgeBase
    from picorag.refrag import run_episode

    model, tok, _ = load_checkpoint(pretrained)
    with KnowledgeBase.open(example / "knowledge_base") as kb:
        # hop 1 finds the warranty passages; the query the model writes finds the gold one at hop 2
        q = {"question": "How long is the laptop warranty?", "doc_id": "store_002"}
        ep = run_episode(_Writer(model, tok, "gift cards cash"), tok, kb, q, max_hops=3, top_k_per_hop=2)
        assert [h["query"] for h in ep.hops] == ["How long is the laptop warranty?", "gift cards cash"]
        assert ep.found_at == 2 and ep.reward == pytest.approx(0.9) and len(ep.queries) == 1
        assert "store_002" not in {d["id"].rsplit("-", 1)[0] for d in ep.hops[0]["documents"]}
        # a gold passage that no query can find: all hops run, each with new passages, the real model writing
        q = {"question": "Do gift cards expire?", "doc_id": "store_002", "evidence": "not in any passage"}
        ep = run_episode(model, tok, kb, q, max_hops=3, top_k_per_hop=2, generator=torch.Generator().manual_seed(0))
        assert len(ep.hops) == 3 and len(ep.queries) == 2 and ep.found_at is None and ep.reward == 0.0
        ids = [d["id"] for h in ep.hops for d in h["documents"]]
        assert len(ids) == len(set(ids)) >= 2  # never the same passage twice
        special = min(tok.special_tokens.values())
        for hop, written in zip(ep.hops[1:], ep.queries):  # each later hop searched what the model wrote
            assert hop["query"] == (tok.decode([t for t in written if t < special]).strip() or q["question"])
        # found at once: no query written
        q = {"question": "Do gift cards expire?", "doc_id": "store_002"}
        ep = run_episode(model, tok, kb, q, max_hops=3)
        assert ep.found_at == 1 and ep.reward == 1.0 and ep.queries == []


def test_refrag_two_hop_gold_needs_every_passage(example, pretrained):
    from picorag.kb import KnowledgeBase
    from picorag.refrag import has_gold, run_episode

    model, tok, _ = load_checkpoint(pretrained)
    with KnowledgeBase.open(example / "knowledge_base") as kb:
        question = "How long is the laptop warranty?"
        first = [h.id for h in kb.search(question, k=2)]
        assert "policy_003-0" in first and "store_002-0" not in first
        # one gold passage found by the question, the other only by the written query: found when both are in
        q = {"question": question, "gold": ["policy_003-0", "store_002-0"]}
        ep = run_episode(_Writer(model, tok, "gift cards cash"), tok, kb, q, max_hops=3, top_k_per_hop=2)
        assert ep.found_at == 2 and ep.reward == pytest.approx(0.9) and ep.golds_found == 2 and len(ep.hops) == 2
        # the second never found: no partial credit for the first, and every hop runs
        q = {"question": question, "gold": ["policy_003-0", "no-such-chunk"]}
        ep = run_episode(_Writer(model, tok, "gift cards cash"), tok, kb, q, max_hops=3, top_k_per_hop=2)
        assert ep.found_at is None and ep.reward == 0.0 and ep.golds_found == 1 and len(ep.hops) == 3
        # both found by the question itself: no query written
        ep = run_episode(model, tok, kb, {"question": question, "gold": first}, max_hops=3, top_k_per_hop=2)
        assert ep.found_at == 1 and ep.reward == 1.0 and ep.queries == []
    assert has_gold({"question": "q", "doc_id": "d"}) and has_gold({"question": "q", "gold": ["a-0", "b-0"]})
    assert not has_gold({"question": "q", "gold": []}) and not has_gold({"question": "q", "gold": "a-0"})
    assert not has_gold({"question": "q"}) and not has_gold({"gold": ["a-0"]})


def test_refrag_prompt_cuts_passages_not_the_question(example, pretrained):
    """Passages longer than the model's window: the prompt keeps its start (the instruction) and the
    question, and the passages are cut as in RAG fine-tuning, instead of the prompt's front being dropped."""
    from picorag.kb import KnowledgeBase
    from picorag.refrag import NEXT_QUERY, run_episode

    model, tok, _ = load_checkpoint(pretrained)  # a law tokenizer: English passages take ~1 token a byte
    prompts = []

    class Reader(_Writer):
        def generate(self, ids, n, **kw):
            prompts.append(ids)
            yield from super().generate(ids, n, **kw)

    with KnowledgeBase.open(example / "knowledge_base") as kb:
        q = {"question": "How many days or dollars does it take?", "doc_id": "nowhere"}  # 5 passages match
        ep = run_episode(Reader(model, tok, "gift cards"), tok, kb, q, max_hops=2, top_k_per_hop=5,
                         max_query_tokens=16)
    text, docs = tok.decode(prompts[0]), ep.hops[0]["documents"]
    assert len(prompts[0]) <= model.config.sequence_len - 16 and prompts[0][0] == tok.special_tokens["<|bos|>"]
    assert len(docs) == 5 and docs[0]["content"] in text and docs[-1]["content"][:40] not in text  # last cut
    assert NEXT_QUERY in text and text.endswith(
        "How many days or dollars does it take?<|user_end|><|assistant_start|>")


def test_reinforce_moves_queries_by_their_advantage(pretrained):
    from picorag.refrag import Episode, query_log_prob, reinforce_loss

    for reward_, sign in ((1.0, 1), (0.0, -1)):
        model, tok, _ = load_checkpoint(pretrained)
        prompt, query = tok.encode("第一条 问题"), tok.encode("宪法") + [tok.special_tokens["<|assistant_end|>"]]
        ep = Episode("q", prompts=[prompt], queries=[query], reward=reward_)
        before = query_log_prob(model, prompt, query).item()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        reinforce_loss(model, [ep], baseline=0.5).backward()
        opt.step()
        assert sign * (query_log_prob(model, prompt, query).item() - before) > 0


def test_refrag_finetune_end_to_end(tmp_path, example, pretrained, capsys):
    argv = ["train", "refrag-finetune", "--kb", str(example / "knowledge_base"), "--queries",
            str(example / "queries_train.jsonl"), "--init", str(pretrained), "--out", str(tmp_path / "rf"),
            "--steps", "2", "--batch-size", "2", "--max-hops", "2", "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["stage"] == "refrag-finetune" and summary["step"] == 2
    assert len((tmp_path / "rf" / "refrag_log.jsonl").read_text().splitlines()) == 2
    load_checkpoint(tmp_path / "rf")
    assert main([*argv[:-3], "--max-hops", "1"]) == 1 and "at least 2" in capsys.readouterr().err
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"question": "Do gift cards expire?", "gold": ["store_002-0", "policy_001-0"]}) + "\n")
    assert main([*argv[:5], str(gold), *argv[6:]]) == 0, capsys.readouterr().err
    rows = [json.loads(r) for r in (tmp_path / "rf" / "refrag_log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["golds_found"] >= 1 for r in rows)  # the question itself finds store_002
    gold.write_text(json.dumps({"question": "Do gift cards expire?", "gold": ["store_002-0"]}) + "\n")
    capsys.readouterr()
    assert main([*argv[:5], str(gold), *argv[6:]]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)  # always found at hop 1: no query, so no baseline either
    assert summary["reward_last_10"] == 1.0 and summary["reward_wrote_last_10"] is None
    rows = [json.loads(r) for r in (tmp_path / "rf" / "refrag_log.jsonl").read_text().splitlines()]
    assert [(r["wrote"], r["reward_wrote"], r["baseline"]) for r in rows] == [(0, None, None)] * 2
    gold.write_text(json.dumps({"question": "Do gift cards expire?", "gold": "store_002-0"}) + "\n")
    assert main([*argv[:5], str(gold), *argv[6:]]) == 1 and "no {" in capsys.readouterr().err


@pytest.mark.parametrize("pattern", ["T,T", "M,M"])
def test_rag_finetune_learns_for_pure_attention_and_pure_mamba(tmp_path, example, text_file, pattern):
    # the hybrid is covered above; the issue asks RAG fine-tuning to work for all three block patterns
    base, out = tmp_path / "base", tmp_path / "rag"
    pretrain([str(text_file)], base, {**MODEL, "block_pattern": pattern}, TrainConfig(steps=5, batch_size=2),
             vocab_size=420, progress=False)
    rag_finetune(example / "conversations_train.jsonl", out, TrainConfig(steps=30, batch_size=4, lr=1e-2, warmup=2),
                 init=base, progress=False)
    losses = [float(r.split(",")[1]) for r in (out / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # the answers are being learned
    gen = load_generator("gpt", model=str(out))
    assert gen.model.config.block_pattern == pattern
    msgs = [{"role": "retrieval", "documents": []}, {"role": "user", "content": "Q?"}]
    assert isinstance("".join(gen.stream(msgs, max_tokens=4)), str)
