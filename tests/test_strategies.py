"""Query strategies (plain, hyde, step-back, multi-hop) and the remaining bad-input cases of answering:
an endpoint that never answers (timeout naming the URL), no KB for ask, Ctrl-C in chat while an answer
streams."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from picorag.answer import ask
from picorag.generate import ExtractiveGenerator, OpenAIGenerator
from picorag.kb import KnowledgeBase
from picorag.prompt import documents_of
from picorag.records import PicoragError
from picorag.strategies import bridge_terms, retrieve

DOCS = [
    {"id": "ann", "title": "Ann Lee", "content": "Ann Lee is a sprinter who was coached by Bo Tran at Kent College."},
    {"id": "bo", "title": "Bo Tran", "content": "Bo Tran grew up in Oslo in the 1950s and ran the 400 metres."},
    {"id": "kent", "title": "Kent College", "content": "Kent College is a school with a famous running track."},
    {"id": "oslo", "title": "Oslo", "content": "Oslo is the capital of Norway, north of Kent College's twin town."},
    {"id": "rain", "title": "Rainfall", "content": "Heavy rainfall floods valleys; rivers overflow their banks."},
    {"id": "cats", "title": "Cats", "content": "Domestic cats purr when content and sleep most of the day."},
] + [{"id": f"filler{i}", "title": f"Note {i}", "content": f"Filler note number {i} about nothing much."}
     for i in range(10)]  # a KB of 16 chunks, so that a name in 3 of them is not "common"


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    d = tmp_path_factory.mktemp("strategies")
    return KnowledgeBase.build(d / "kb", [write_jsonl(d / "docs.jsonl", DOCS)])


@pytest.fixture(scope="module")
def dense_kb(tmp_path_factory):
    d = tmp_path_factory.mktemp("strategies-dense")
    return KnowledgeBase.build(d / "kb", [write_jsonl(d / "docs.jsonl", DOCS)], dense="minilm")


class Writer:
    """A generator that writes: replies are taken from `replies` in turn (the last one repeats)."""

    name, can_write, context_window = "writer", True, 4096

    def __init__(self, *replies):
        self.replies, self.seen = list(replies), []

    def count_tokens(self, text):
        return len(text.split())

    def stream(self, messages, max_tokens=256):
        self.seen.append(messages)
        yield self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def ids(hits):
    return [h.id for h in hits]


def test_plain_is_search_and_unknown_strategies_are_refused(kb):
    hits, msg = retrieve(kb, "who coached Ann Lee", "plain", None, k=3)
    assert ids(hits) == ids(kb.search("who coached Ann Lee", k=3))
    assert msg == {"role": "retrieval", "documents": msg["documents"]} and len(msg["documents"]) == len(hits) >= 1
    with pytest.raises(PicoragError, match="unknown strategy 'best'"):
        retrieve(kb, "x", "best", None)
    with pytest.raises(PicoragError, match="empty query"):
        retrieve(kb, " ", "multi-hop", None)


@pytest.mark.parametrize("strategy", ["hyde", "step-back"])
def test_writing_strategies_refuse_a_generator_that_only_quotes(kb, strategy):
    for gen in (ExtractiveGenerator(), None):
        with pytest.raises(PicoragError, match=f"--strategy {strategy} needs a generator that writes"):
            retrieve(kb, "who coached Ann Lee", strategy, gen)


def test_hyde_changes_the_dense_query_only(dense_kb, kb):
    question = "where do water levels rise"
    gen = Writer("Domestic cats purr when content and sleep most of the day.")
    hits, msg = retrieve(dense_kb, question, "hyde", gen, k=6, mode="dense")
    assert hits[0].id == "cats-0"  # the hypothetical text (question + it) steers the dense search
    assert msg["strategy"] == "hyde" and msg["hypothesis"].startswith("Domestic cats")
    assert retrieve(dense_kb, question, "plain", None, k=1, mode="dense")[0][0].id != "cats-0"
    # hybrid: BM25 still searches the raw question, so its best passage (rainfall) stays in the fused list
    hybrid = ids(retrieve(dense_kb, question, "hyde", Writer("Domestic cats purr."), k=3)[0])
    assert "rain-0" in hybrid and "cats-0" in hybrid
    assert "water levels" in gen.seen[0][-1]["content"]  # the generator was asked about the question
    with pytest.raises(PicoragError, match="has no vectors"):
        retrieve(kb, question, "hyde", gen)
    with pytest.raises(PicoragError, match="--mode bm25"):
        retrieve(dense_kb, question, "hyde", gen, mode="bm25")


def test_step_back_fuses_both_questions(kb):
    gen = Writer("What causes rivers to overflow?")
    hits, msg = retrieve(kb, "who coached Ann Lee", "step-back", gen, k=3)
    assert msg["step_back"] == "What causes rivers to overflow?" and 2 <= len(hits) <= 3
    assert {"ann-0", "rain-0"} <= set(ids(hits))  # one passage from each question, fused by RRF
    assert [d["id"] for d in msg["documents"]] == ids(hits)


def test_multi_hop_follows_the_bridge_without_a_generator(kb):
    hits, msg = retrieve(kb, "What is the hometown of the coach of Ann Lee?", "multi-hop", ExtractiveGenerator(),
                         max_hops=3, top_k_per_hop=1)
    hops = msg["hops"]
    assert msg["multi_hop"] and [h["hop"] for h in hops] == list(range(1, len(hops) + 1))
    assert hops[0]["documents"][0]["id"] == "ann-0" and hops[0]["query"].startswith("What is the hometown")
    assert hops[1]["via"] == "bridge" and "Bo Tran" in hops[1]["query"] and hops[1]["documents"][0]["id"] == "bo-0"
    assert len(set(ids(hits))) == len(hits) == sum(len(h["documents"]) for h in hops)  # no passage twice
    plain = ids(kb.search("What is the hometown of the coach of Ann Lee?", k=2))
    assert "bo-0" not in plain  # one hop of the same size does not reach it


def test_bridge_terms_skip_question_words_and_unique_terms(kb):
    ann = kb.search("Ann Lee sprinter", k=1)
    used = set(kb.analyzer.tokenize("Ann Lee sprinter"))
    terms = bridge_terms(kb, "Ann Lee sprinter", ann, used, n=3)
    # Bo Tran is in 2 chunks, Kent College in 3: the rarer name leads first; Ann Lee is in the question
    assert terms[:2] == ["Bo Tran", "Kent College"] and not any("Ann" in t for t in terms)


def test_multi_hop_with_a_writing_generator_and_early_stop(kb):
    gen = Writer("Query: Bo Tran birthplace", "DONE")
    hits, msg = retrieve(kb, "What is the hometown of the coach of Ann Lee?", "multi-hop", gen, max_hops=4,
                         top_k_per_hop=1)
    assert [h["via"] for h in msg["hops"]] == ["question", "generator"]
    assert msg["hops"][1]["query"] == "Bo Tran birthplace" and msg["stop"] == "done"
    assert "Context:\n[1]" in gen.seen[0][-1]["content"]  # it saw the passages found so far
    with pytest.raises(PicoragError, match="at least 1"):
        retrieve(kb, "x y", "multi-hop", None, max_hops=0)


def test_ask_with_multi_hop_numbers_citations_across_hops(kb):
    a = ask(kb, "What is the hometown of the coach of Ann Lee?", strategy="multi-hop", max_hops=2, top_k_per_hop=1)
    out = a.to_dict()
    assert [h["hop"] for h in out["hops"]] == [1, 2]
    assert [d["id"] for d in documents_of(a.messages)] == ["ann-0", "bo-0"]  # [1] hop 1, [2] hop 2
    assert a.citations and {c["id"] for c in a.citations} <= {"ann-0", "bo-0"}


def run(*args, stdin=None, timeout=120):
    p = subprocess.run([sys.executable, "-m", "picorag", *map(str, args)], capture_output=True, text=True,
                       input=stdin, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def test_search_strategy_command(kb, tmp_path):
    rc, out, err = run("search", kb.path, "What is the hometown of the coach of Ann Lee?", "--strategy", "multi-hop",
                       "--max-hops", "2", "--top-k-per-hop", "1", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["strategy"] == "multi-hop" and [h["id"] for h in res["hits"]] == ["ann-0", "bo-0"]
    assert res["retrieval"]["hops"][1]["documents"][0]["id"] == "bo-0"
    rc, out, err = run("search", kb.path, "What is the hometown of the coach of Ann Lee?", "--strategy", "multi-hop")
    assert rc == 0 and "hop 2 (bridge): Bo Tran" in out, err
    gold = tmp_path / "gold.jsonl"
    gold.write_text('{"query": "Where did Bo Tran grow up?", "gold": {"title": "Bo Tran"}}\n')
    rc, out, err = run("eval", kb.path, "--strategy", "multi-hop", "--dataset", gold, "--match", "title", "--json")
    assert rc == 0 and json.loads(out)["hit@5"] == 1.0, err
    rc, out, err = run("eval", kb.path, "--strategy", "step-back", "--dataset", gold, "--match", "title")
    assert rc == 1 and err.count("\n") == 1 and "needs a generator that writes" in err, err


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["ask", "{missing}", "q"], "knowledge base not found at"),
    (["ask", "{kb}", "  "], "empty question"),
    (["ask", "{kb}", "q", "--generator", "gpt"], "the gpt generator needs"),
    (["ask", "{kb}", "q", "--strategy", "hyde"], "only quotes"),
    (["search", "{kb}", "q", "--strategy", "step-back", "--generator", "openai", "--base-url", "http://127.0.0.1:9/v1",
      "--timeout", "2"], "cannot reach http://127.0.0.1:9/v1/chat/completions"),
])
def test_answer_errors_are_one_line(kb, tmp_path, args, message):
    rc, out, err = run(*[a.format(kb=kb.path, missing=tmp_path / "nokb") for a in args])
    assert rc == 1 and out == "" and err.count("\n") == 1 and message in err and "Traceback" not in err, err


@pytest.fixture
def silent_server():
    """Accepts connections and never answers: a hung endpoint."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()


def test_endpoint_that_never_answers_times_out_naming_the_url(silent_server):
    t0 = time.perf_counter()
    with pytest.raises(PicoragError, match=f"cannot reach {silent_server}/chat/completions .*timed out"):
        "".join(OpenAIGenerator(base_url=silent_server, timeout=1).stream([{"role": "user", "content": "x"}]))
    assert time.perf_counter() - t0 < 10


class SlowStream(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that streams one word a second, for a long time."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for _ in range(60):
                delta = {"choices": [{"delta": {"content": "word "}}]}
                self.wfile.write(f"data: {json.dumps(delta)}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def log_message(self, *a):
        pass


def test_ctrl_c_in_chat_stops_the_answer_not_the_session(kb):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), SlowStream)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    p = subprocess.Popen([sys.executable, "-m", "picorag", "chat", str(kb.path), "--generator", "openai",
                          "--base-url", url, "--model", "slow"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        p.stdin.write("Where was Bo Tran born?\n")
        p.stdin.flush()
        seen = ""
        while "word" not in seen:  # the answer is streaming
            ch = p.stdout.read(1)
            assert ch, f"chat ended before answering: {seen!r} {p.stderr.read()!r}"
            seen += ch
        p.send_signal(signal.SIGINT)
        out, err = p.communicate("quit\n", timeout=60)
    finally:
        p.kill()
        srv.shutdown()
    assert p.returncode == 0 and "(stopped)" in out and "Traceback" not in err, err
