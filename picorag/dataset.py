"""Training data for the model lab: token streams for pretraining, RAG conversations for fine-tuning.

Conversations are encoded from `prompt.render`, the function the answer pipeline uses, one message at a
time: render's role marker and `<|end|>` become the tokenizer's `<|role_start|>` / `<|role_end|>` special
tokens (so a passage that contains "<|end|>" stays text), and the loss mask covers the assistant's tokens
and its end token only.

RAG conversations are built with the real retriever: each question is searched in a picorag KB, the hits
become the retrieval message, and the answer cites the gold passage by number. With probability
`p_absent` the gold document is removed from the hits and the answer is "I don't know" (also when the
retriever misses it). A share of questions gets a two-hop `multi_hop` retrieval message instead (the
question, then the gold document's title as the follow-up query).

>>> from picorag.tokenizer import Tokenizer
>>> ids, mask = encode_conversation(Tokenizer(), [{"role": "user", "content": "hi"},
...                                               {"role": "assistant", "content": "yo"}])
>>> Tokenizer().decode(ids), mask
('<|bos|><|user_start|>hi<|user_end|><|assistant_start|>yo<|assistant_end|>', [0, 0, 0, 0, 0, 0, 1, 1, 1])
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .prompt import ROLE_MARK, Message, conversation, document, documents_of, fit_documents, render
from .records import PicoragError
from .tokenizer import Tokenizer

DONT_KNOW = "I don't know: the retrieved passages do not answer this."
DONT_KNOW_ZH = "资料中没有找到能回答这个问题的内容。"
END = "<|end|>"


# ----------------------------------------------------------------------------------------------- encoding


def encode_conversation(tok: Tokenizer, messages: Sequence[Message],
                        add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and a 0/1 mask of the tokens the model is trained to predict."""
    special = tok.special_tokens
    ids, mask = [special["<|bos|>"]], [0]
    for m in messages:
        text, mark = render([m], add_generation_prompt=False), ROLE_MARK[m["role"]]
        body = text[len(mark):-len(END)]  # render wraps every message as mark + body + <|end|>
        part = tok.encode_chat([{"role": m["role"], "content": body}])[1:]  # without the leading <|bos|>
        ids += part
        mask += [0] + [int(m["role"] == "assistant")] * (len(part) - 1)  # the start marker is given, not learned
    if add_generation_prompt:
        ids.append(special["<|assistant_start|>"])
        mask.append(0)
    return ids, mask


def fit_conversation(tok: Tokenizer, messages: list[Message], limit: int) -> list[Message] | None:
    """The conversation with its retrieved passages cut (`prompt.fit_documents`) so it encodes to at most
    `limit` tokens; None when that is impossible or would drop a passage the answer cites."""
    n = len(encode_conversation(tok, messages)[0])
    if n <= limit:
        return messages
    r = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "retrieval"), None)
    if r is None:
        return None
    docs = documents_of([messages[r]])
    own = len(encode_conversation(tok, [messages[r]])[0])
    budget = limit - (n - own) - 4
    kept = fit_documents(docs, budget, lambda s: len(tok.encode(s))) if budget > 0 else []
    answers = " ".join(m["content"] for m in messages[r + 1:] if m["role"] == "assistant")
    cited = [int(x) for x in re.findall(r"\[(\d+)\]", answers)]
    if any(c > len(kept) for c in cited):
        return None
    msg = dict(messages[r])
    if msg.get("multi_hop"):
        hops, left = [], list(kept)
        for hop in msg["hops"]:
            take, left = left[:len(hop["documents"])], left[len(hop["documents"]):]
            hops.append({**hop, "documents": take})
        msg["hops"] = hops
    else:
        msg["documents"] = kept
    out = [*messages[:r], msg, *messages[r + 1:]]
    return out if len(encode_conversation(tok, out)[0]) <= limit else None


# ----------------------------------------------------------------------------------------------- batches


class TokenData:
    """One long token stream (documents joined by <|bos|>); batches are random windows chosen by
    (seed, step), so a resumed run and a run split over processes see exactly the same batches."""

    def __init__(self, ids: np.ndarray, seq_len: int, batch_size: int, seed: int = 0, val_frac: float = 0.05):
        if len(ids) < 2 * (seq_len + 2):
            raise PicoragError(f"{len(ids)} tokens of text is too little for sequence length {seq_len}")
        n_val = max(seq_len + 2, int(len(ids) * val_frac))
        self.split = {"train": torch.from_numpy(ids[:-n_val].astype(np.int64)),
                      "val": torch.from_numpy(ids[-n_val:].astype(np.int64))}
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed

    def batch(self, step: int, split: str = "train", rank: int = 0, world: int = 1) -> tuple[torch.Tensor, ...]:
        data = self.split[split]
        rng = np.random.default_rng([self.seed, step, split == "val"])
        starts = rng.integers(0, len(data) - self.seq_len - 1, size=self.batch_size)[rank::world]
        rows = torch.stack([data[s:s + self.seq_len + 1] for s in starts])
        return rows[:, :-1], rows[:, 1:]


class ChatData:
    """Encoded conversations; a batch is (seed, step)-chosen examples, right-padded, targets -1 off the mask."""

    def __init__(self, examples: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, seed: int = 0,
                 val_frac: float = 0.1):
        if not examples:
            raise PicoragError("no training conversations (all empty or longer than the model's context)")
        order = np.random.default_rng(seed).permutation(len(examples))
        n_val = int(len(examples) * val_frac) if len(examples) >= 10 else 0
        self.split = {"train": [examples[i] for i in order[n_val:]], "val": [examples[i] for i in order[:n_val]]}
        if not self.split["val"]:
            self.split["val"] = self.split["train"]
        self.batch_size, self.pad_id, self.seed = batch_size, pad_id, seed

    def batch(self, step: int, split: str = "train", rank: int = 0, world: int = 1) -> tuple[torch.Tensor, ...]:
        pool = self.split[split]
        rng = np.random.default_rng([self.seed, step, split == "val"])
        picked = [pool[i] for i in rng.integers(0, len(pool), size=self.batch_size)[rank::world]]
        width = max(len(ids) for ids, _ in picked) - 1
        x = torch.full((len(picked), width), self.pad_id, dtype=torch.long)
        y = torch.full((len(picked), width), -1, dtype=torch.long)
        for i, (ids, mask) in enumerate(picked):
            t = torch.tensor(ids)
            x[i, :len(ids) - 1] = t[:-1]
            y[i, :len(ids) - 1] = torch.where(torch.tensor(mask[1:]) > 0, t[1:], -1)
        return x, y


# ----------------------------------------------------------------------------------------------- text sources


def read_texts(paths: Iterable[str] = (), kb: str | None = None) -> list[str]:
    """Documents as plain text: files/JSONL through picorag's readers, and/or a KB's live chunks."""
    from .ingest import read_paths

    texts = []
    for rec in read_paths(list(paths)):
        body = "\n".join(s.text for s in rec.sections)
        texts.append(f"{rec.title}\n{body}" if rec.title and not body.startswith(rec.title) else body)
    if kb:
        from .kb import KnowledgeBase

        with KnowledgeBase.open(kb) as k:
            for seg in k.segments:
                texts += [c["index_prefix"] + c["text"] for c in seg.store.iter_chunks() if seg.live[c["row"]]]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise PicoragError("no text to train on: give --from files/directories and/or --kb")
    return texts


# ----------------------------------------------------------------------------------------------- questions

EXAMPLE_DOCUMENTS = [
    ("policy_001", "Return Policy", "Customers can return items within 30 days of purchase with the original "
     "receipt. Refunds are processed within 5 business days. Opened software cannot be returned."),
    ("policy_002", "Shipping Information", "Orders over 50 dollars ship for free. Standard shipping takes 3 to 5 "
     "business days. Express shipping arrives the next day and costs 12 dollars."),
    ("faq_001", "Account Creation", "To create an account, click Sign Up and enter your email address. A "
     "confirmation email arrives within ten minutes. Accounts are free for personal use."),
    ("faq_002", "Password Reset", "Passwords are reset from the login page with the Forgot Password link. The "
     "reset link expires after 24 hours. Passwords must have at least 12 characters."),
    ("policy_003", "Warranty", "Every laptop has a two-year warranty covering hardware faults. Batteries are "
     "covered for one year. Water damage is not covered by the warranty."),
    ("store_001", "Store Hours", "The Lisbon store opens at 9 in the morning and closes at 8 in the evening. "
     "On Sundays it closes at 2 in the afternoon. It is closed on public holidays."),
    ("store_002", "Gift Cards", "Gift cards are sold in amounts from 10 to 500 dollars. They never expire. "
     "Gift cards cannot be exchanged for cash."),
    ("faq_003", "Payment Methods", "We accept credit cards, bank transfers and PayPal. Bank transfers take two "
     "days to clear. Cash is accepted only in our stores."),
    ("policy_004", "Price Match", "If a competitor sells the same item for less within 14 days, we refund the "
     "difference. The competitor must be a registered shop in the same country."),
    ("faq_004", "Loyalty Program", "Members earn one point for every dollar spent. One hundred points are worth "
     "five dollars off the next order. Points expire after two years."),
]
EXAMPLE_QUERIES = [
    ("How many days do customers have to return an item?", "Within 30 days of purchase, with the receipt.",
     "policy_001"),
    ("Can I return opened software?", "No, opened software cannot be returned.", "policy_001"),
    ("When is shipping free?", "Orders over 50 dollars ship for free.", "policy_002"),
    ("How much does express shipping cost?", "Express shipping costs 12 dollars.", "policy_002"),
    ("How do I create an account?", "Click Sign Up and enter your email address.", "faq_001"),
    ("Do accounts cost money?", "No, accounts are free for personal use.", "faq_001"),
    ("How long is a password reset link valid?", "The reset link expires after 24 hours.", "faq_002"),
    ("How long must a password be?", "At least 12 characters.", "faq_002"),
    ("How long is the laptop warranty?", "Two years, covering hardware faults.", "policy_003"),
    ("Is water damage covered?", "No, water damage is not covered by the warranty.", "policy_003"),
    ("When does the Lisbon store close on Sundays?", "At 2 in the afternoon.", "store_001"),
    ("Is the store open on public holidays?", "No, it is closed on public holidays.", "store_001"),
    ("Do gift cards expire?", "No, gift cards never expire.", "store_002"),
    ("Can I exchange a gift card for cash?", "No, gift cards cannot be exchanged for cash.", "store_002"),
    ("Which payment methods do you accept?", "Credit cards, bank transfers and PayPal.", "faq_003"),
    ("How long do bank transfers take?", "Bank transfers take two days to clear.", "faq_003"),
    ("What happens if a competitor is cheaper?", "We refund the difference within 14 days.", "policy_004"),
    ("Which competitors count for price matching?", "Registered shops in the same country.", "policy_004"),
    ("How many points do members earn?", "One point for every dollar spent.", "faq_004"),
    ("When do loyalty points expire?", "Points expire after two years.", "faq_004"),
]

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{3,}")
_STOP = frozenset("this that with from have will been were they their there which what when where about into "
                  "than then also only must each every such more most other some these those after before".split())


def template_questions(records: Iterable[Any], per_doc: int = 2, seed: int = 0) -> list[dict[str, str]]:
    """Questions made from documents by templates: {"question", "answer", "doc_id", "evidence"}, where
    evidence is text the gold passage contains (without it, any passage of the document counts).

    Statute articles (meta law/article) ask what the article says; other documents ask about the key words
    of one of their sentences, whose text is the answer."""
    from .analyze import detect_language
    from .chunk import _sentences

    rng = random.Random(seed)
    out = []
    for rec in records:
        for sec in rec.sections:
            text = sec.text.strip()
            law, article = sec.meta.get("law"), sec.meta.get("article")
            if law and article:
                body = re.sub(r"^第[^条\s]{1,12}条(之[一二三四五六七八九十]+)?[\s\u3000]*", "", text)
                first = body[: _sentences(body)[0][1]].strip() if body else ""
                short = re.sub(r"^中华人民共和国", "", law)
                if first:
                    out.append({"question": f"{short}{article}规定了什么？", "answer": first, "doc_id": rec.doc_id,
                                "evidence": text[:40]})
                continue
            spans = [text[s:e].strip() for s, e in _sentences(text)]
            spans = [s for s in spans if 20 <= len(s) <= 300]
            for sent in rng.sample(spans, min(per_doc, len(spans))):
                if detect_language(sent) == "zh":
                    key = sent[:12].rstrip("，,。")
                    q = f"关于“{key}”，{rec.title or '资料'}是怎么说的？"
                else:
                    words = [w for w in _WORD.findall(sent) if w.lower() not in _STOP]
                    if len(words) < 2:
                        continue
                    key = " ".join(sorted(rng.sample(words, min(3, len(words))), key=words.index))
                    q = f"What does {rec.title or 'the text'} say about {key}?"
                out.append({"question": q, "answer": sent, "doc_id": rec.doc_id, "evidence": sent[:30]})
    return out


def _is_gold(hit: Any, q: dict[str, str]) -> bool:
    """The gold passage: from the gold document, and holding the evidence text when there is one."""
    return hit.doc_id == q["doc_id"] and q.get("evidence", "") in hit.text


def rag_conversations(kb: Any, questions: Sequence[dict[str, str]], k: int = 3, p_absent: float = 0.2,
                      multi_hop: float = 0.2, top_k_per_hop: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """Training conversations [system, retrieval, user, assistant] retrieved from `kb` (a KnowledgeBase)."""
    from .analyze import detect_language

    rng = random.Random(seed)
    out = []
    for q in questions:
        absent = rng.random() < p_absent
        hop = rng.random() < multi_hop
        hits = [h for h in kb.search(q["question"], k=k + 5) if not (absent and _is_gold(h, q))]
        hits = hits[: top_k_per_hop if hop else k]
        messages = conversation(q["question"], hits)
        if hop:
            seen = {h.id for h in hits}
            title = next((h.meta.get("title") for h in hits if h.doc_id == q["doc_id"]), "")
            follow = f"{title} {q['question']}".strip()
            more = [h for h in kb.search(follow, k=k + 5) if not (absent and _is_gold(h, q)) and h.id not in seen]
            more = more[:top_k_per_hop]
            messages[-2] = {"role": "retrieval", "multi_hop": True, "hops": [
                {"hop": 1, "query": q["question"], "documents": [document(h) for h in hits]},
                {"hop": 2, "query": follow, "documents": [document(h) for h in more]}]}
            hits = hits + more
        best = next((n for n, h in enumerate(hits, 1) if _is_gold(h, q)), None)
        zh = detect_language(q["question"]) == "zh"
        answer = f"{q['answer']} [{best}]" if best else (DONT_KNOW_ZH if zh else DONT_KNOW)
        out.append({"messages": [*messages, {"role": "assistant", "content": answer}], "doc_id": q["doc_id"],
                    "answerable": best is not None, "multi_hop": hop, "reference": q["answer"]})
    return out


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl_objects(path: str | Path) -> list[dict[str, Any]]:
    """Every JSON object line of a file (one-line errors naming the line)."""
    from .ingest import json_object

    if not Path(path).is_file():
        raise PicoragError(f"no such file: {path}")
    with open(path, encoding="utf-8") as f:
        return [json_object(line, f"{path}:{n}") for n, line in enumerate(f, 1) if line.strip()]


def read_conversations(path: str | Path) -> list[list[Message]]:
    """The "messages" of every line of a conversations JSONL (as prepare-dataset writes)."""
    from .ingest import json_object

    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                obj = json_object(line, f"{path}:{n}")
                msgs = obj.get("messages")
                if not isinstance(msgs, list) or not all(isinstance(m, dict) and m.get("role") in ROLE_MARK
                                                          for m in msgs):
                    raise PicoragError(f"{path}:{n}: expected {{\"messages\": [{{\"role\": ...}}, ...]}}")
                out.append(msgs)
    return out


def prepare_dataset(mode: str, output: str, documents: Sequence[str] = (), k: int = 3, p_absent: float = 0.2,
                    multi_hop: float = 0.2, test_frac: float = 0.1, per_doc: int = 2, seed: int = 0,
                    warn: Any = None) -> dict[str, Any]:
    """`example`: example documents + queries; `build`: the user's documents + template questions.
    Both write documents.jsonl (example only), queries_{train,test}.jsonl, knowledge_base/ and
    conversations_{train,test}.jsonl under `output`. Questions are split into train and test before retrieval."""
    from .ingest import read_paths
    from .kb import KnowledgeBase

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if mode == "example":
        sources = [str(out / "documents.jsonl")]
        write_jsonl(out / "documents.jsonl", ({"id": i, "title": t, "content": c} for i, t, c in EXAMPLE_DOCUMENTS))
        questions = [{"question": q, "answer": a, "doc_id": d} for q, a, d in EXAMPLE_QUERIES]
    elif mode == "build":
        if not documents:
            raise PicoragError("--mode build needs --documents FILE_OR_DIR")
        sources = list(documents)
        questions = template_questions(read_paths(sources, warn), per_doc=per_doc, seed=seed)
    else:
        raise PicoragError(f"unknown mode {mode!r}; choose example or build")
    if not questions:
        raise PicoragError("no questions could be made from these documents")
    rng = random.Random(seed)
    rng.shuffle(questions)
    n_test = int(len(questions) * test_frac)
    split = {"test": questions[:n_test], "train": questions[n_test:]}
    kb_dir = out / "knowledge_base"
    if (kb_dir / "manifest.json").exists():
        kb = KnowledgeBase.open(kb_dir)
    else:
        kb = KnowledgeBase.build(kb_dir, sources, warn=warn)
    info = kb.info()
    stats: dict[str, Any] = {"output": str(out), "knowledge_base": str(kb_dir), "docs": info["docs"],
                             "chunks": info["chunks"]}
    with kb:
        for name, qs in split.items():
            write_jsonl(out / f"queries_{name}.jsonl", qs)
            convs = rag_conversations(kb, qs, k=k, p_absent=p_absent if name == "train" else 0.0,
                                      multi_hop=multi_hop, seed=seed + (name == "test"))
            stats[f"{name}_conversations"] = write_jsonl(out / f"conversations_{name}.jsonl", convs)
            stats[f"{name}_answerable"] = sum(c["answerable"] for c in convs)
    return stats
