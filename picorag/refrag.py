"""Multi-hop retrieval fine-tuning (REFRAG-style): the model writes each next query; REINFORCE with a baseline.

An episode for one question: hop 1 searches the question itself. After each hop without the gold passage the
model reads [system: write the next query, the `multi_hop` retrieval message so far, the question] (encoded
like every conversation, via `prompt.render`, its passages cut to the model's window by
`dataset.fit_conversation` as in RAG fine-tuning) and samples a query, which picks the next hop's passages
(ones already seen are skipped). The episode ends when the gold passage is retrieved or after `max_hops`.

Gold: a question's `doc_id` (and `evidence` text when given), or `gold`, a list of chunk ids that must all be
retrieved (a 2-hop question: the passage that names the bridge and the bridge's own passage). There is no
partial credit: with two gold passages the first is almost always found by the question itself, before the
model has written anything, so rewarding it would reward nothing the model did.

Reward: 1 when the gold passage(s) are found, less `hop_cost` for every hop after the first; 0 when never found.
The loss is REINFORCE: -(reward - baseline) * log p(sampled query tokens), with the baseline a running mean of
the reward of the episodes in which the model wrote a query, so queries that find the gold passage sooner than
usual become more likely.

>>> reward(1), reward(3), reward(None)
(1.0, 0.8, 0.0)
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .dataset import _is_gold, encode_conversation, fit_conversation, read_jsonl_objects, write_jsonl
from .model import GPT
from .prompt import Message, document
from .records import PicoragError
from .tokenizer import Tokenizer

NEXT_QUERY = ("The passages so far do not answer the question. Write one new search query that would find "
              "the missing passage.")


def reward(found_at: int | None, hop_cost: float = 0.1) -> float:
    """1 for finding the gold passage at hop 1, `hop_cost` less for each later hop, 0 for never."""
    return 0.0 if found_at is None else max(0.0, 1.0 - hop_cost * (found_at - 1))


@dataclass
class Episode:
    question: str
    hops: list[dict[str, Any]] = field(default_factory=list)  # the multi_hop retrieval message's hops
    prompts: list[list[int]] = field(default_factory=list)  # token ids the model read before each query
    queries: list[list[int]] = field(default_factory=list)  # the sampled query tokens (with the end token)
    found_at: int | None = None
    reward: float = 0.0
    golds_found: int = 0  # with a `gold` list: how many of its passages were retrieved


def has_gold(q: dict[str, Any]) -> bool:
    """A question refrag can score: a `doc_id`, or a non-empty `gold` list of chunk ids."""
    gold = q.get("gold")
    return isinstance(q.get("question"), str) and (
        isinstance(q.get("doc_id"), str) or (isinstance(gold, list) and bool(gold)
                                             and all(isinstance(g, str) for g in gold)))


def gold_hits(hits: list[Any], q: dict[str, Any]) -> set[str]:
    """The ids among `hits` that are gold for `q` (see the module docstring)."""
    if isinstance(q.get("gold"), list):
        return {h.id for h in hits if h.id in q["gold"]}
    return {h.id for h in hits if _is_gold(h, q)}


def _all_found(got: set[str], q: dict[str, Any]) -> bool:
    return set(q["gold"]) <= got if isinstance(q.get("gold"), list) else bool(got)


def query_messages(question: str, hops: list[dict[str, Any]]) -> list[Message]:
    """What the model reads before writing the next query (the episode prompt; warm-start data uses it too)."""
    return [{"role": "system", "content": NEXT_QUERY}, {"role": "retrieval", "multi_hop": True, "hops": hops},
            {"role": "user", "content": question}]


@torch.no_grad()
def run_episode(model: GPT, tok: Tokenizer, kb: Any, q: dict[str, Any], max_hops: int = 3, top_k_per_hop: int = 2,
                max_query_tokens: int = 16, hop_cost: float = 0.1, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> Episode:
    """Search, let the model write the next query, search again, ... (see the module docstring).
    temperature 0 writes greedily (evaluation)."""
    first_special = min(tok.special_tokens.values())
    ep = Episode(q["question"])
    query, seen, got = q["question"], set(), set()
    room = model.config.sequence_len - max_query_tokens
    for hop in range(1, max_hops + 1):
        hits = [h for h in kb.search(query, k=top_k_per_hop + len(seen)) if h.id not in seen][:top_k_per_hop]
        seen |= {h.id for h in hits}
        ep.hops.append({"hop": hop, "query": query, "documents": [document(h) for h in hits]})
        got |= gold_hits(hits, q)
        ep.golds_found = len(got)
        if _all_found(got, q):
            ep.found_at = hop
            break
        if hop == max_hops:
            break
        messages = query_messages(q["question"], ep.hops)
        # cut the passages (later ones first) rather than the front of the prompt, as RAG fine-tuning does;
        # -1 for the <|assistant_start|> the generation prompt adds
        messages = fit_conversation(tok, messages, room - 1) or messages
        ids, _ = encode_conversation(tok, messages, add_generation_prompt=True)
        ids = ids[-room:]  # only when even the cut passages do not fit: keep the question end
        out: list[int] = []
        for t in model.generate(ids, max_query_tokens, temperature=temperature, generator=generator):
            out.append(t)
            if t >= first_special:
                break
        ep.prompts.append(ids)
        ep.queries.append(out)
        query = tok.decode([t for t in out if t < first_special]).strip() or q["question"]
    ep.reward = reward(ep.found_at, hop_cost)
    return ep


def query_log_prob(model: GPT, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """log p(completion | prompt), summed over the completion's tokens (with gradient)."""
    device = model.wte.weight.device
    x = torch.tensor([prompt + completion[:-1]], device=device)
    logits = model(x)[0][0, len(prompt) - 1:]
    return F.log_softmax(logits, dim=-1).gather(1, torch.tensor(completion, device=device)[:, None]).sum()


def reinforce_loss(model: GPT, episodes: list[Episode], baseline: float) -> torch.Tensor | None:
    """-(reward - baseline) * log p(queries), averaged over episodes; None when no episode wrote a query."""
    terms = [-(ep.reward - baseline) * query_log_prob(model, p, c)
             for ep in episodes for p, c in zip(ep.prompts, ep.queries)]
    return torch.stack(terms).sum() / len(episodes) if terms else None


def refrag_finetune(kb_path: str, queries: str | Path, init: str | Path, out: str | Path, steps: int = 100,
                    batch_size: int = 4, lr: float = 1e-4, max_hops: int = 3, top_k_per_hop: int = 2,
                    hop_cost: float = 0.1, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """REINFORCE on the queries JSONL: {"question", "doc_id", "evidence"?} lines, as prepare-dataset writes,
    or {"question", "gold": [chunk ids]} (all must be found)."""
    from .kb import KnowledgeBase

    if max_hops < 2:
        raise PicoragError("--max-hops must be at least 2: the model writes the queries after the first hop")
    questions = [q for q in read_jsonl_objects(queries) if has_gold(q)]
    if not questions:
        raise PicoragError(f"{queries}: no {{\"question\", \"doc_id\"}} or {{\"question\", \"gold\": [ids]}} lines")
    model, tok, meta = load_checkpoint(init)
    opt = model.optimizer(lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    baseline, rows = None, []
    out, t0 = Path(out), time.perf_counter()
    with KnowledgeBase.open(kb_path) as kb:
        for step in tqdm(range(steps), desc="refrag", file=sys.stderr, disable=not progress):
            rng = np.random.default_rng([seed, step])
            batch = [questions[i] for i in rng.integers(0, len(questions), size=batch_size)]
            model.eval()
            episodes = [run_episode(model, tok, kb, q, max_hops, top_k_per_hop, hop_cost=hop_cost, generator=gen)
                        for q in batch]
            model.train()
            loss = reinforce_loss(model, episodes, baseline or 0.0)
            if loss is not None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            mean_r = float(np.mean([e.reward for e in episodes]))
            # the baseline follows the episodes the model wrote in: those found at hop 1 (reward 1, no query)
            # say nothing about its queries and would only lift the baseline above what a query earns
            wrote = [e.reward for e in episodes if e.queries]
            mean_w = float(np.mean(wrote)) if wrote else None
            if mean_w is not None:
                baseline = mean_w if baseline is None else 0.9 * baseline + 0.1 * mean_w
            rows.append({"step": step, "reward": round(mean_r, 4), "wrote": len(wrote),
                         "reward_wrote": None if mean_w is None else round(mean_w, 4),
                         "baseline": None if baseline is None else round(baseline, 4),
                         "hops": float(np.mean([len(e.hops) for e in episodes])),
                         "found": float(np.mean([e.found_at is not None for e in episodes])),
                         "golds_found": float(np.mean([e.golds_found for e in episodes]))})
    summary = {"stage": "refrag-finetune", "init": str(init), "step": steps, "max_hops": max_hops,
               "top_k_per_hop": top_k_per_hop, "hop_cost": hop_cost, "batch_size": batch_size, "lr": lr,
               "seconds": round(time.perf_counter() - t0, 1),
               "reward_first_10": round(float(np.mean([r["reward"] for r in rows[:10]])), 4),
               "reward_last_10": round(float(np.mean([r["reward"] for r in rows[-10:]])), 4),
               "reward_wrote_first_10": _mean_of(rows[:10], "reward_wrote"),
               "reward_wrote_last_10": _mean_of(rows[-10:], "reward_wrote")}
    save_checkpoint(out, model, tok, {**{k: v for k, v in meta.items() if k not in ("format", "version", "model")},
                                      **summary})
    write_jsonl(out / "refrag_log.jsonl", rows)
    return summary


def _mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    xs = [r[key] for r in rows if r[key] is not None]
    return round(float(np.mean(xs)), 4) if xs else None
