"""Answers with citations: prompt building, generators (extractive, OpenAI-compatible against a fake
server on 127.0.0.1), the ask pipeline, QA metrics, and the ask/chat/eval --qa commands."""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from picorag.answer import ask, standalone
from picorag.evaluate import evaluate_qa, exact_match, normalize_answer, token_f1
from picorag.generate import ExtractiveGenerator, OpenAIGenerator, complete, load_generator
from picorag.kb import KnowledgeBase
from picorag.prompt import conversation, documents_of, fit_documents, render, resolve_citations, to_chat
from picorag.records import Hit, PicoragError

DOCS = [
    {"id": "refund", "title": "Refunds",
     "content": "Refunds are paid within 7 days of the return. Shipping is not refunded."},
    {"id": "ship", "title": "Shipping", "content": "Orders over 50 euros ship for free. Express delivery costs extra."},
    {"id": "law", "title": "民法典",
     "content": "当事人一方因不可抗力不能履行合同的，根据不可抗力的影响，部分或者全部免除责任。"},
]


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    d = tmp_path_factory.mktemp("answers")
    src = d / "docs.jsonl"
    src.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in DOCS), encoding="utf-8")
    return KnowledgeBase.build(d / "kb", [src])


def hit(i, text, title="T"):
    return Hit(f"d{i}-0", f"d{i}", 1.0, text, {"title": title}, f"{title} · line {i}")


# -- prompt ---------------------------------------------------------------------------------------


def test_conversation_and_renderers():
    msgs = conversation("When are refunds paid?", [hit(1, "Refunds in 7 days."), hit(2, "Free shipping.")],
                        history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "retrieval", "user"]
    assert msgs[3]["documents"][0] == {"id": "d1-0", "title": "T", "content": "Refunds in 7 days.", "source": "",
                                       "score": 1.0, "citation": "T · line 1"}
    chat = to_chat(msgs)
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert chat[-1]["content"].startswith("Context:\n[1] T · line 1\nRefunds in 7 days.\n\n[2]")
    assert chat[-1]["content"].endswith("Question: When are refunds paid?")
    flat = render(msgs)
    assert flat.startswith("<|system|>") and flat.endswith("<|assistant|>") and "<|retrieval|>Context:" in flat


def test_multi_hop_documents_are_numbered_across_hops():
    m = {"role": "retrieval", "multi_hop": True, "hops": [
        {"hop": 1, "query": "a", "documents": [{"id": "x", "content": "X"}]},
        {"hop": 2, "query": "b", "documents": [{"id": "y", "content": "Y"}, {"id": "z", "content": "Z"}]}]}
    assert [d["id"] for d in documents_of([m])] == ["x", "y", "z"]
    assert "[3] z\nZ" in to_chat([m, {"role": "user", "content": "q"}])[0]["content"]


def test_fit_documents_truncates_the_context_not_the_question():
    docs = [{"id": str(i), "content": "word " * 100} for i in range(5)]
    count = lambda t: len(t.split())  # noqa: E731
    kept = fit_documents(docs, 250, count)
    assert [d["id"] for d in kept] == ["0", "1", "2"]  # two whole, the third cut to fit
    assert kept[2]["content"].endswith(" …") and count(kept[2]["content"]) < 100
    assert sum(count(f"[{i}] {d['id']}\n{d['content']}") for i, d in enumerate(kept, 1)) <= 250


def test_resolve_citations():
    docs = [{"id": "a", "citation": "A"}, {"id": "b", "citation": "B"}]
    text, cited = resolve_citations("Yes [2]. Also [1, 2] but not [7]. 是的 [1]。", docs)
    assert text == "Yes [2]. Also [1][2] but not. 是的 [1]。"
    assert cited == [{"n": 2, "id": "b", "citation": "B"}, {"n": 1, "id": "a", "citation": "A"}]


# -- generators -----------------------------------------------------------------------------------


def test_extractive_quotes_and_cites():
    gen = ExtractiveGenerator()
    msgs = conversation("How fast are refunds paid?", [hit(1, "Orders ship free."), hit(2, DOCS[0]["content"])])
    out = "".join(gen.stream(msgs))
    # best-supported sentence first (refund + paid), then the weaker one that still mentions refunds
    assert out == "Refunds are paid within 7 days of the return. [2] Shipping is not refunded. [2]"
    none = "".join(gen.stream(conversation("What is quantum chromodynamics?", [hit(1, "Orders ship free.")])))
    assert none.startswith("I don't know")
    with pytest.raises(PicoragError, match="extractive generator cannot"):
        complete(gen, msgs, purpose="write a hypothetical answer")


class FakeOpenAI(BaseHTTPRequestHandler):
    """Streams a canned answer as SSE (or plain JSON when asked not to stream); records requests."""

    requests: list = []
    reply = "Refunds take 7 days [1]."

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "model exploded"}')
            return
        self.send_response(200)
        if not body.get("stream"):
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"choices": [{"message": {"content": self.reply}}]}).encode())
            return
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in self.reply.split(" "):
            chunk = {"choices": [{"delta": {"content": piece + " "}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_openai_generator_streams_from_a_compatible_server(server, kb):
    gen = OpenAIGenerator(base_url=server, model="tiny", api_key="sk-test")
    pieces = list(gen.stream(conversation("refunds?", [hit(1, "Refunds in 7 days.")]), max_tokens=32))
    assert len(pieces) > 1 and "".join(pieces).strip() == FakeOpenAI.reply
    req = FakeOpenAI.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["stream"] is True and req["body"]["max_tokens"] == 32
    assert req["body"]["messages"][-1]["content"].startswith("Context:\n[1]")
    a = ask(kb, "How long do refunds take?", gen, k=2)
    assert a.text == "Refunds take 7 days [1]." and a.citations[0]["id"] == a.hits[0].id
    assert set(a.to_dict()) == {"answer", "query", "citations", "retrieval", "timings"}
    assert a.timings["first_token_s"] <= a.timings["total_s"]


def test_openai_errors_are_clear(server):
    with pytest.raises(PicoragError, match=r"answered HTTP 500: .*model exploded"):
        "".join(OpenAIGenerator(base_url=server, model="broken").stream([{"role": "user", "content": "x"}]))
    with pytest.raises(PicoragError, match=r"cannot reach http://127.0.0.1:9/v1/chat/completions"):
        "".join(OpenAIGenerator(base_url="http://127.0.0.1:9/v1", timeout=2).stream([{"role": "user", "content": "x"}]))
    with pytest.raises(PicoragError, match="unknown generator"):
        load_generator("gpt-9")


# -- ask ------------------------------------------------------------------------------------------


def test_ask_extractive_cites_the_right_chunk(kb):
    a = ask(kb, "不可抗力不能履行合同能免除责任吗？", k=3)
    assert a.citations[0]["id"] == "law-0" and "[1]" in a.text and a.hits[0].id == "law-0"
    assert all(c["id"] in {h.id for h in a.hits} for c in a.citations)
    with pytest.raises(PicoragError, match="empty question"):
        ask(kb, "  ")


class Recorder:
    """A writing generator that records what it was asked and answers with a fixed text."""

    name, can_write = "recorder", True

    def __init__(self, reply="ok", window=4096):
        self.context_window, self.reply, self.seen = window, reply, []

    def count_tokens(self, text):
        return len(text.split()) + len(text) // 20

    def stream(self, messages, max_tokens=256):
        self.seen.append(messages)
        yield self.reply


def test_context_budget_and_window_errors(kb):
    big, small = Recorder(), Recorder(window=150)
    ask(kb, "refunds shipping euros", big, k=3, max_tokens=40)
    ask(kb, "refunds shipping euros", small, k=3, max_tokens=40)
    assert len(documents_of(big.seen[-1])) == 2  # both passages that match
    docs = documents_of(small.seen[-1])
    assert len(docs) == 1  # the context was cut to fit, the question kept
    prompt = sum(small.count_tokens(m.get("content", "")) + 4 for m in small.seen[-1] if m["role"] != "retrieval")
    assert prompt + sum(small.count_tokens(d["content"]) for d in docs) + 40 <= 150
    assert small.seen[-1][-1] == {"role": "user", "content": "refunds shipping euros"}
    with pytest.raises(PicoragError, match="window is 30"):
        ask(kb, "refunds " * 40, Recorder(window=30), k=3, max_tokens=10)


def test_follow_up_questions_are_rewritten(kb):
    history = [{"role": "user", "content": "How long do refunds take?"}, {"role": "assistant", "content": "7 days"}]
    writer = Recorder(reply="How much does express shipping cost?")
    assert standalone("and express?", history, writer) == "How much does express shipping cost?"
    assert "assistant: 7 days" in writer.seen[-1][-1]["content"]
    assert standalone("and express?", history, ExtractiveGenerator()).count("and express?") == 2
    assert standalone("first question", [], writer) == "first question"


# -- QA metrics and commands ------------------------------------------------------------------------


def test_qa_metrics_by_hand(tmp_path):
    assert normalize_answer("The Cat, sat!") == ["cat", "sat"]
    assert normalize_answer("表面约6000度") == ["表", "面", "约", "6000", "度"]
    assert exact_match("Cat sat.", ["the cat sat"]) == 1.0 and exact_match("cat", ["dog", "cow"]) == 0.0
    assert token_f1("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)  # p = 1, r = 2/3
    assert token_f1("表面6000度", ["表面约6000度"]) == pytest.approx(2 * 1 * 0.8 / 1.8)
    assert token_f1("", [""]) == 1.0 and token_f1("x", ["y"]) == 0.0
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "a", "answers": ["x y"]}\n{"question": "b", "answers": ["z"]}\n')
    res = evaluate_qa(lambda q: {"a": "x y", "b": "w"}[q], qa)
    assert (res["n"], res["em"], res["f1"]) == (2, 0.5, 0.5)
    qa.write_text('{"question": "a"}\n')
    with pytest.raises(PicoragError, match="qa.jsonl:1: record needs"):
        evaluate_qa(lambda q: "", qa)


def run(*args, stdin=None):
    p = subprocess.run([sys.executable, "-m", "picorag", *map(str, args)], capture_output=True, text=True,
                       input=stdin, timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_ask_chat_and_eval_commands(kb, tmp_path, server):
    rc, out, err = run("ask", kb.path, "How long do refunds take?", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["citations"][0]["id"] == "refund-0" and res["retrieval"][0]["id"] == "refund-0"
    rc, out, err = run("ask", kb.path, "How long do refunds take?", "--generator", "openai", "--base-url", server,
                       "--model", "tiny")
    assert rc == 0 and "Refunds take 7 days [1]." in out and "Sources:\n  [1]" in out, err
    rc, out, err = run("ask", kb.path, "x", "--generator", "openai", "--base-url", "http://127.0.0.1:9/v1",
                       "--timeout", "2")
    assert rc == 1 and err.count("\n") == 1 and "cannot reach http://127.0.0.1:9/v1" in err
    rc, out, err = run("chat", kb.path, stdin="How long do refunds take?\nand shipping?\nquit\n")
    assert rc == 0 and out.count("Sources:") == 2 and "(searched for:" in out, err
    rc, out, err = run("chat", kb.path, stdin="")  # Ctrl-D at the prompt
    assert rc == 0 and "Traceback" not in err
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "How long do refunds take?",
                              "answers": ["Refunds are paid within 7 days of the return."]}) + "\n")
    rc, out, err = run("eval", kb.path, "--qa", qa, "--json", "-k", "1")
    assert rc == 0, err
    res = json.loads(out)  # the extractive answer: that sentence plus a weaker one; [n] markers not scored
    assert res["n"] == 1 and res["em"] == 0.0 and 0.6 < res["f1"] < 1.0
