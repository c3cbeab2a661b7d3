"""`picorag tune`: adapt dense retrieval to a KB's own corpus, with no labels.

    1. pseudo-queries   sentences cut from each chunk, with their rarest words dropped (so a query must
                        be found by meaning, not by the chunk's key terms), positive = that chunk
    2. query vectors    the KB's own encoder embeds them as queries (the slow part: minutes on 2 cores)
    3. adapter          a linear map W on query vectors, q' = normalise(q W), W starts at the identity;
                        trained with InfoNCE against every live chunk's frozen vector (all chunks are
                        negatives, so the hardest ones are always present), L2 pull towards identity,
                        best step chosen on held-out pseudo-queries; 4 such adapters averaged
    4. stored           KB/tuned-<hash>.npy (float32 W) + KB/tuned.json, committed by os.replace after fsync

Search, ask and eval apply W to the query vector automatically (`--no-tuned` or Options(tuned=False)
to compare); chunk vectors never change, so `add`/`delete`/`compact` keep working and a tune can be
re-run at any time. W is refused (with a warning) if the KB's encoder or dimension changed.

>>> from picorag.kb import KnowledgeBase                            # doctest: +SKIP
>>> kb = KnowledgeBase.open("kb")                                  # doctest: +SKIP
>>> report = tune(kb, TuneConfig(steps=200))                       # doctest: +SKIP
>>> kb.search("my neighbour's dog bit my child", mode="dense")      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .integrity import load_array
from .records import PicoragError

if TYPE_CHECKING:
    from .kb import KnowledgeBase

TUNED = "tuned.json"
FORMAT = "picorag-tuned"
VERSION = 1
Progress = Callable[[str], Any]

# Sentence ends (CJK and Latin) and line breaks; a statute's leading "第十条" label is not content.
_SENT = re.compile(r"(?<=[。！？；!?;])|\n+|(?<=[.])\s+")
_LABEL = re.compile(r"^\s*第[零〇一二三四五六七八九十百千万\d]+[条章节编款项](之[一二三四五六七八九十]+)?\s*")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


@dataclass
class TuneConfig:
    """Knobs of `tune`; the defaults were chosen on the vague law dev set (see docs/TUNE.md)."""

    steps: int = 300
    budget_minutes: float = 10.0  # wall-clock cap for the whole tune, embedding included
    per_chunk: int = 1  # sentences per chunk, each asked whole and with its rare words dropped
    drop: float = 0.4  # share of a sentence's words dropped in its second form, rarest first
    max_queries: int = 6000  # cap on pseudo-queries (embedding them is the slow part)
    batch: int = 256
    lr: float = 2e-3
    temperature: float = 0.05
    reg: float = 0.1  # weight of ||W - I||^2
    holdout: float = 0.1  # share of pseudo-queries kept aside to pick the best step
    ensemble: int = 4  # adapters trained on different splits and seeds, then averaged (W stays linear)
    seed: int = 0
    device: str = "auto"  # auto: cuda when torch sees a GPU, else cpu


# -- pseudo-queries -------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Surface words in order: jieba words for CJK runs, whitespace words otherwise."""
    if _CJK.search(text):
        from .analyze import _jieba

        return [w for w in _jieba().lcut(text) if w.strip()]
    return text.split()


def _join(words: list[str]) -> str:
    return "".join(words) if any(_CJK.search(w) for w in words) else " ".join(words)


def sentences(text: str, min_chars: int = 8) -> list[str]:
    """Sentences of a chunk worth asking with: a leading article label is removed, short bits dropped.

    >>> sentences("第十条 A cat sat on the mat. It purred loudly today.")
    ['A cat sat on the mat.', 'It purred loudly today.']
    """
    out = []
    for s in _SENT.split(_LABEL.sub("", text)):
        s = _LABEL.sub("", s).strip()
        if len(s) >= min_chars:
            out.append(s)
    return out


def drop_rare(text: str, rarity: Callable[[str], float], drop: float, rng: np.random.Generator) -> str:
    """`text` without its rarest words (share `drop`; ties broken at random), order kept. The rare
    words are what BM25 and the embedder match on most easily; vague questions lack them.

    >>> drop_rare("a b c d", {"a": 0, "b": 3, "c": 1, "d": 2}.get, 0.5, np.random.default_rng(0))
    'a c'
    """
    words = _words(text)
    n_drop = int(round(len(words) * drop))
    if n_drop == 0 or len(words) - n_drop < 2:
        return text
    scores = np.array([rarity(w) + rng.random() * 1e-3 for w in words])
    gone = set(np.argsort(-scores)[:n_drop].tolist())
    return _join([w for i, w in enumerate(words) if i not in gone])


def pseudo_queries(kb: KnowledgeBase, cfg: TuneConfig) -> tuple[list[str], np.ndarray]:
    """(queries, global row of the positive chunk) for every live chunk of the KB, `per_chunk` sentences each.
    Global rows count segments in manifest order; rarity is the word's BM25 idf in this KB."""
    rng = np.random.default_rng(cfg.seed)
    n_rows = sum(s.n for s in kb.segments)

    def rarity(word: str) -> float:
        terms = kb.analyzer.tokenize(word)
        if not terms:
            return -1.0  # stopwords and punctuation: never the ones to drop
        df = max(sum(s.postings.df(t) for s in kb.segments) for t in terms)
        return math.log((n_rows + 1) / (df + 0.5))

    queries: list[str] = []
    rows: list[int] = []
    base = 0
    for seg in kb.segments:
        for c in seg.store.iter_chunks():
            if not seg.live[c["row"]]:
                continue
            sents = sentences(c["text"]) or [c["text"].strip()]
            for i in rng.permutation(len(sents))[: cfg.per_chunk]:
                # The whole sentence and, when drop > 0, a copy without its rarest words: on the dev set
                # the mix beat either kind alone (dense hit@5 0.43-0.44 vs 0.41-0.43 whole, 0.32-0.41
                # dropped; docs/TUNE.md).
                forms = [sents[i]] + ([drop_rare(sents[i], rarity, cfg.drop, rng)] if cfg.drop > 0 else [])
                for q in dict.fromkeys(f for f in forms if f.strip()):
                    queries.append(q)
                    rows.append(base + c["row"])
        base += seg.n
    if len(queries) > cfg.max_queries:
        keep = np.sort(rng.choice(len(queries), cfg.max_queries, replace=False))
        queries, rows = [queries[i] for i in keep], [rows[i] for i in keep]
    return queries, np.asarray(rows, dtype=np.int64)


def passage_matrix(kb: KnowledgeBase) -> tuple[np.ndarray, np.ndarray]:
    """All chunk vectors (float32, global rows) and the live mask."""
    if not kb.manifest.get("dense") or any(s.vectors is None for s in kb.segments):
        raise PicoragError(f"{kb.path} has no vectors, and tune adapts dense retrieval; add them first with: "
                           f"picorag add {kb.path} --dense auto")
    vecs = np.concatenate([np.asarray(s.vectors.vectors, dtype=np.float32) for s in kb.segments])
    live = np.concatenate([s.live for s in kb.segments])
    return vecs, live


def embed_queries(kb: KnowledgeBase, queries: list[str], batch: int = 64, deadline: float | None = None,
                  progress: bool = True) -> np.ndarray:
    """Query vectors in batches with a progress bar; stops early (returns fewer rows) at `deadline`."""
    from tqdm import tqdm

    enc = kb.encoder()
    out = []
    with tqdm(total=len(queries), desc="embedding pseudo-queries", unit="q", disable=None if progress else True,
              leave=False) as bar:
        for s in range(0, len(queries), batch):
            out.append(enc.encode(queries[s : s + batch], kind="query"))
            bar.update(len(out[-1]))
            if deadline is not None and time.monotonic() > deadline:
                break
    return np.concatenate(out) if out else np.zeros((0, enc.dim), np.float32)


# -- training -------------------------------------------------------------------------------------


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def ranks(q: np.ndarray, p: np.ndarray, pos: np.ndarray, live: np.ndarray) -> np.ndarray:
    """1-based rank of each query's positive among the live chunks (exact, by dot product)."""
    s = q @ p.T
    s[:, ~live] = -np.inf
    return 1 + (s > s[np.arange(len(pos)), pos][:, None]).sum(1)


def mrr10(r: np.ndarray) -> float:
    return float(np.where(r <= 10, 1.0 / r, 0.0).mean()) if len(r) else 0.0


def train_adapter(q: np.ndarray, p: np.ndarray, pos: np.ndarray, live: np.ndarray, cfg: TuneConfig,
                  deadline: float | None = None, progress: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Learn W (dim x dim) so that normalise(q W) ranks each query's positive chunk first.

    Returns W and a report with the held-out MRR@10 before (W = I) and after; if no step beats the
    identity on held-out queries, W = I is returned (tune never makes its own validation worse)."""
    import torch
    from tqdm import tqdm

    # Few threads: the matrices are small, and on a busy 2-core machine torch's default pool spins
    # and slows training tenfold (measured: 100 steps 28 s with 1 thread, minutes with the default).
    torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) // 2)))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = _device(cfg.device)
    n, dim = q.shape
    order = rng.permutation(n)
    n_val = min(max(int(n * cfg.holdout), 1), 2000) if n >= 20 else 0
    val, tr = order[:n_val], order[n_val:]
    qt = torch.tensor(q, device=dev)
    pt = torch.tensor(p, device=dev)
    post = torch.tensor(pos, device=dev)
    dead = torch.tensor(~live, device=dev)
    eye = torch.eye(dim, device=dev)
    w = torch.nn.Parameter(eye.clone())
    opt = torch.optim.Adam([w], lr=cfg.lr)

    def val_mrr(wm: np.ndarray) -> float | None:
        if not n_val:
            return None
        qv = q[val] @ wm
        qv /= np.maximum(np.linalg.norm(qv, axis=1, keepdims=True), 1e-12)
        return mrr10(ranks(qv, p, pos[val], live))

    before = val_mrr(np.eye(dim, dtype=np.float32))
    best, best_w, best_step = before, np.eye(dim, dtype=np.float32), 0
    check = max(cfg.steps // 10, 10)
    steps_done = 0
    with tqdm(total=cfg.steps, desc="training adapter", unit="step", disable=None if progress else True,
              leave=False) as bar:
        for step in range(1, cfg.steps + 1):
            idx = torch.tensor(rng.choice(tr, min(cfg.batch, len(tr)), replace=False), device=dev)
            qb = torch.nn.functional.normalize(qt[idx] @ w, dim=1)
            logits = (qb @ pt.T) / cfg.temperature
            logits = logits.masked_fill(dead, float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, post[idx]) + cfg.reg * ((w - eye) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps_done = step
            bar.update(1)
            if step % check == 0 or step == cfg.steps:
                wm = w.detach().cpu().numpy().astype(np.float32)
                m = val_mrr(wm)
                bar.set_postfix(loss=f"{loss.item():.3f}", val_mrr10=m)
                if m is None or best is None or m > best:
                    best, best_w, best_step = m, wm, step
            if deadline is not None and time.monotonic() > deadline:
                break
    return best_w, {"val_queries": int(n_val), "val_mrr10_before": before, "val_mrr10_after": best,
                    "best_step": best_step, "steps": steps_done, "device": dev}


def train_ensemble(q: np.ndarray, p: np.ndarray, pos: np.ndarray, live: np.ndarray, cfg: TuneConfig,
                   deadline: float | None = None, progress: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """The mean of `cfg.ensemble` adapters, each with its own seed and held-out split. One adapter's
    effect on vague questions swings with the seed (dev hit@5 0.35-0.44 over seeds 0-3); the mean of
    four gave 0.41 with MRR@5 0.29, steadier than any single one (docs/TUNE.md)."""
    from dataclasses import replace

    ws, reps = [], []
    for i in range(max(1, cfg.ensemble)):
        w, rep = train_adapter(q, p, pos, live, replace(cfg, seed=cfg.seed + i), deadline, progress)
        ws.append(w)
        reps.append(rep)
        if deadline is not None and time.monotonic() > deadline:
            break
    mean = lambda key: (None if any(r[key] is None for r in reps)  # noqa: E731
                        else float(np.mean([r[key] for r in reps])))
    return np.mean(ws, axis=0).astype(np.float32), {
        "val_queries": reps[0]["val_queries"], "val_mrr10_before": mean("val_mrr10_before"),
        "val_mrr10_after": mean("val_mrr10_after"), "best_step": [r["best_step"] for r in reps],
        "steps": sum(r["steps"] for r in reps), "adapters": len(ws), "device": reps[0]["device"]}


# -- the tuned component: storing, loading, applying ----------------------------------------------


@dataclass
class Tuned:
    """A trained query adapter and where it came from."""

    w: np.ndarray
    meta: dict[str, Any]

    def apply(self, vecs: np.ndarray) -> np.ndarray:
        out = np.asarray(vecs, dtype=np.float32) @ self.w
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def save_tuned(path: Path, w: np.ndarray, meta: dict[str, Any]) -> None:
    """Write W under a content-named file, then commit tuned.json (temp, fsync, os.replace, dir fsync);
    a reader sees the old adapter or the new one, never half of one. Older W files are removed after."""
    from .segment import fsync_dir

    w = np.ascontiguousarray(w, dtype=np.float32)
    name = f"tuned-{hashlib.sha256(w.tobytes()).hexdigest()[:16]}.npy"
    with open(path / name, "wb") as f:
        np.save(f, w, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    tmp = path / f".{TUNED}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, "version": VERSION, **meta, "file": name}, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / TUNED)
    fsync_dir(str(path))
    for old in path.glob("tuned-*.npy"):
        if old.name != name:
            old.unlink(missing_ok=True)


def read_tuned(path: Path, dense: dict[str, Any] | None) -> Tuned | None:
    """The KB's adapter, or None when it has none. One that does not fit the KB's encoder (rebuilt
    with another model) is ignored with a warning on stderr rather than applied."""
    f = Path(path) / TUNED
    for attempt in range(3):
        if not f.is_file():
            return None
        try:
            meta = json.loads(f.read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
                raise ValueError(f"not a {FORMAT} v{VERSION} file")
            w = load_array(Path(path) / meta["file"], allow_pickle=False)
            break
        except FileNotFoundError:
            if attempt == 2:  # a tune committed and removed the old W between our two reads: retry
                raise PicoragError(f"{f} names a missing file; re-run: picorag tune {path}") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PicoragError(f"{f} is damaged ({e}); re-run: picorag tune {path}") from None
    if not dense or meta.get("model") != dense.get("model") or w.shape != (dense["dim"], dense["dim"]):
        import sys

        print(f"picorag: warning: {f} was trained for encoder {meta.get('model')!r}, not the KB's "
              f"{(dense or {}).get('model')!r}; ignored (re-run picorag tune)", file=sys.stderr)
        return None
    return Tuned(w.astype(np.float32), meta)


def tuned_of(kb: KnowledgeBase) -> Tuned | None:
    """The adapter of an open KB, read once per KnowledgeBase object."""
    if "_tuned" not in kb.__dict__:
        kb.__dict__["_tuned"] = read_tuned(kb.path, kb.manifest.get("dense"))
    return kb.__dict__["_tuned"]


def remove_tuned(path: Path) -> bool:
    """Drop the adapter (search goes back to the plain encoder). True when there was one."""
    from .kb import write_lock

    with write_lock(Path(path)):
        return discard_tuned(path)


def discard_tuned(path: Path) -> bool:
    """Delete the adapter's files; the caller holds the KB's write lock. True when there was one."""
    from .segment import fsync_dir

    f = Path(path) / TUNED
    had = f.is_file()
    f.unlink(missing_ok=True)  # tuned.json is the adapter's commit point: it goes first
    fsync_dir(str(path))
    for old in Path(path).glob("tuned-*.npy"):
        old.unlink(missing_ok=True)
    return had


# -- the command ----------------------------------------------------------------------------------


def tune(kb: KnowledgeBase, cfg: TuneConfig | None = None, say: Progress = lambda m: None,
         progress: bool = True) -> dict[str, Any]:
    """Make pseudo-queries from the KB, embed them, train the adapter, store it in the KB.
    Returns a report (counts, held-out MRR@10 before/after, seconds)."""
    from .kb import write_lock

    cfg = cfg or TuneConfig()
    if cfg.steps < 1 or cfg.budget_minutes <= 0 or cfg.per_chunk < 1 or not 0 <= cfg.drop < 1:
        raise PicoragError("need --steps >= 1, --budget-minutes > 0, per_chunk >= 1 and 0 <= drop < 1")
    t0 = time.monotonic()
    deadline = t0 + cfg.budget_minutes * 60
    p, live = passage_matrix(kb)
    if live.sum() < 2:
        raise PicoragError(f"{kb.path} has {int(live.sum())} live chunk(s); tune needs at least 2")
    say(f"making pseudo-queries from {int(live.sum())} chunks")
    queries, pos = pseudo_queries(kb, cfg)
    if len(queries) < 2:
        raise PicoragError(f"{kb.path}: too little text to make pseudo-queries from")
    # Embedding gets at most 80% of the budget: training needs the rest.
    q = embed_queries(kb, queries, deadline=t0 + 0.8 * cfg.budget_minutes * 60, progress=progress)
    pos = pos[: len(q)]
    say(f"embedded {len(q)} pseudo-queries in {time.monotonic() - t0:.0f} s; training")
    w, report = train_ensemble(q, p, pos, live, cfg, deadline=deadline, progress=progress)
    dense = kb.manifest["dense"]
    meta = {"method": "query-adapter", "model": dense["model"], "dim": dense["dim"],
            "trained_on": {"generation": kb.manifest.get("generation"), "chunks": int(live.sum()),
                           "pseudo_queries": len(q)},
            "config": asdict(cfg), "report": report,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with write_lock(kb.path):
        save_tuned(kb.path, w, meta)
    kb.__dict__.pop("_tuned", None)
    return {**report, "pseudo_queries": len(q), "seconds": round(time.monotonic() - t0, 1),
            "identity": bool(np.array_equal(w, np.eye(len(w), dtype=np.float32)))}

