"""Micro mode: a whole retrieval-augmented generator in one file, Python standard library only.

Read it top to bottom:
  1. an autograd engine whose values are whole matrices (lists of rows), not single numbers
  2. a bundled knowledge base: 8 Chinese facts, plus paraphrased questions that are never trained on
  3. the retriever: hashed character n-grams -> learned embeddings, trained with InfoNCE
  4. the generator: a tiny character-level GPT that answers from the retrieved document
  5. training, evaluation and the command line

    python -m picorag.micro --seed 0

MicroRAG (the seed of this file) differentiates one float at a time, so one training step builds
hundreds of thousands of Python objects. Here one node of the graph is a whole matrix and the inner
loops are `sum(map(mul, row, col))`, which runs in C: the same ideas, a few hundred times faster.
"""

import argparse
import functools
import json
import math
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from operator import add as _add
from operator import mul

# ----------------------------------------------------------------------------------------------
# 1. Autograd on matrices
# ----------------------------------------------------------------------------------------------
Rows = list[list[float]]


class Mat:
    """A matrix stored as a list of rows, plus how to send its gradient back to the inputs it came from."""

    __slots__ = ("data", "grad", "prev", "back")

    def __init__(self, data: Rows, prev: tuple["Mat", ...] = (), back: Callable[[Rows], None] | None = None):
        self.data, self.grad, self.prev, self.back = data, None, prev, back

    def acc(self, g: Rows) -> None:
        """Accumulate a gradient: a value used twice receives the sum of both contributions."""
        self.grad = g if self.grad is None else [list(map(_add, r, s)) for r, s in zip(self.grad, g)]


def _mm(a: Rows, b: Rows) -> Rows:
    # a @ b.T: every entry is a dot product of two rows, and sum(map(mul, ...)) does it in C.
    return [[sum(map(mul, r, s)) for s in b] for r in a]


def _t(a: Rows) -> Rows:
    return [list(c) for c in zip(*a)]


def _ew(a: Mat, f: Callable[[float], float], df: Callable[[float, float], float]) -> Mat:
    # Element-wise op y = f(x); df(x, y) is dy/dx, so the backward pass is a product per element.
    out = Mat([[f(x) for x in r] for r in a.data], (a,))
    out.back = lambda g: a.acc([[gi * df(x, y) for gi, x, y in zip(gr, xr, yr)]
                                for gr, xr, yr in zip(g, a.data, out.data)])
    return out


def matmul(a: Mat, b: Mat) -> Mat:
    """a @ b.T, with b stored [out, in] like torch's Linear.weight."""
    def back(g: Rows) -> None:
        a.acc(_mm(g, _t(b.data)))          # dL/da = g @ b
        b.acc(_mm(_t(g), _t(a.data)))      # dL/db = g.T @ a
    return Mat(_mm(a.data, b.data), (a, b), back)


def transpose(a: Mat) -> Mat:
    """a.T (attention needs weights @ values, i.e. matmul(weights, transpose(values)))."""
    return Mat(_t(a.data), (a,), lambda g: a.acc(_t(g)))


def add(a: Mat, b: Mat) -> Mat:
    """a + b, same shape (residual connections, token + position embeddings, summing losses)."""
    def back(g: Rows) -> None:
        a.acc(g)
        b.acc([r[:] for r in g])           # a copy, so a and b never share (and mutate) one list
    return Mat([list(map(_add, r, s)) for r, s in zip(a.data, b.data)], (a, b), back)


def scale(a: Mat, c: float) -> Mat:
    """c * a for a constant c."""
    return Mat([[c * x for x in r] for r in a.data], (a,), lambda g: a.acc([[c * x for x in r] for r in g]))


def gather(a: Mat, bags: list[list[int]]) -> Mat:
    """Row i is the mean of rows bags[i] of a: embedding lookup (bags of one) and n-gram pooling."""
    def back(g: Rows) -> None:
        if a.grad is None:
            a.grad = [[0.0] * len(a.data[0]) for _ in a.data]
        for bag, gr in zip(bags, g):
            w = 1.0 / len(bag)
            for j in bag:                  # only the rows that were used get a gradient
                a.grad[j] = [x + w * y for x, y in zip(a.grad[j], gr)]
    rows = [[sum(c) / len(bag) for c in zip(*(a.data[j] for j in bag))] for bag in bags]
    return Mat(rows, (a,), back)


def tanh(a: Mat) -> Mat:
    """tanh, element-wise."""
    return _ew(a, math.tanh, lambda x, y: 1.0 - y * y)


def gelu(a: Mat) -> Mat:
    """GELU (tanh approximation, as in GPT-2), element-wise: a smooth ReLU."""
    k = math.sqrt(2.0 / math.pi)

    def df(x: float, y: float) -> float:
        t = math.tanh(k * (x + 0.044715 * x ** 3))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3 * 0.044715 * x * x)
    return _ew(a, lambda x: 0.5 * x * (1.0 + math.tanh(k * (x + 0.044715 * x ** 3))), df)


def log(a: Mat) -> Mat:
    """Natural log, element-wise."""
    return _ew(a, math.log, lambda x, y: 1.0 / x)


def _unit_rows(a: Mat, mean: bool, eps: float) -> Mat:
    # y = x / sqrt(sum(x^2)/k + eps), with k = row length (RMSNorm) or 1 (unit length).
    # Backward: dx = (g - y * (g . y) / k) / sqrt(...): the part of g that would change the length is removed.
    k = len(a.data[0]) if mean else 1
    inv = [1.0 / math.sqrt(sum(map(mul, r, r)) / k + eps) for r in a.data]
    out = Mat([[x * s for x in r] for r, s in zip(a.data, inv)], (a,))
    out.back = lambda g: a.acc([[s * (gi - yi * m) for gi, yi in zip(gr, yr)]
                                for gr, yr, s in zip(g, out.data, inv) for m in [sum(map(mul, gr, yr)) / k]])
    return out


def rmsnorm(a: Mat) -> Mat:
    """Each row divided by its root-mean-square: keeps activations at unit scale, no parameters."""
    return _unit_rows(a, True, 1e-5)


def normalize(a: Mat) -> Mat:
    """Each row scaled to unit length, so a dot product of two rows is their cosine similarity."""
    return _unit_rows(a, False, 1e-24)


def softmax(a: Mat, causal: int | None = None) -> Mat:
    """Row-wise softmax. With causal=c, row i only sees columns 0..c+i (the rest get probability 0)."""
    rows = []
    for i, r in enumerate(a.data):
        n = len(r) if causal is None else causal + i + 1
        m = max(r[:n])                     # subtract the max so exp never overflows
        e = [math.exp(x - m) for x in r[:n]]
        s = sum(e)
        rows.append([x / s for x in e] + [0.0] * (len(r) - n))
    out = Mat(rows, (a,))                  # backward: dx = y * (g - g . y)
    out.back = lambda g: a.acc([[yi * (gi - d) for gi, yi in zip(gr, yr)]
                                for gr, yr in zip(g, out.data) for d in [sum(map(mul, gr, yr))]])
    return out


def pick(a: Mat, cols: list[int]) -> Mat:
    """Column vector of a[i][cols[i]]: the probability of the right answer in each row."""
    def back(g: Rows) -> None:            # the gradient goes to the picked entry, zero elsewhere
        a.acc([[gr[0] if j == c else 0.0 for j in range(len(r))] for r, c, gr in zip(a.data, cols, g)])
    return Mat([[r[c]] for r, c in zip(a.data, cols)], (a,), back)


def total(a: Mat) -> Mat:
    """Sum of all entries, as a 1x1 matrix (a loss)."""
    return Mat([[sum(map(sum, a.data))]], (a,), lambda g: a.acc([[g[0][0]] * len(r) for r in a.data]))


def cross_entropy(logits: Mat, targets: list[int]) -> Mat:
    """Mean negative log-probability of the targets, built from the ops above."""
    return scale(total(log(pick(softmax(logits), targets))), -1.0 / len(targets))


def backward(loss: Mat, grad: Rows | None = None) -> None:
    """Fill .grad of everything loss depends on (grad: the seed, 1 for a scalar loss). Nodes are visited
    in reverse topological order, so a node's gradient is complete before it is passed on."""
    order: list[Mat] = []
    seen: set[int] = set()

    def visit(t: Mat) -> None:
        if id(t) not in seen:
            seen.add(id(t))
            for p in t.prev:
                visit(p)
            order.append(t)
    visit(loss)
    loss.grad = grad or [[1.0]]
    for t in reversed(order):
        if t.back is not None and t.grad is not None:
            t.back(t.grad)


def param(rng: random.Random, rows: int, cols: int, std: float) -> Mat:
    """A trainable matrix drawn from N(0, std^2)."""
    return Mat([[rng.gauss(0.0, std) for _ in range(cols)] for _ in range(rows)])


class Adam:
    """Adam with bias correction. Rows with no gradient this step are skipped, like torch's SparseAdam:
    most rows of an embedding table are not used by a given batch, and skipping them saves most of the time."""

    def __init__(self, params: list[Mat], betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8):
        self.params, self.betas, self.eps, self.t = params, betas, eps, 0
        self.m = [[[0.0] * len(r) for r in p.data] for p in params]
        self.v = [[[0.0] * len(r) for r in p.data] for p in params]

    def step(self, lr: float) -> None:
        """Apply one update from the gradients in .grad, then clear them."""
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            for i, g in enumerate(p.grad or []):
                if not any(g):
                    continue
                m[i] = [b1 * x + (1.0 - b1) * y for x, y in zip(m[i], g)]
                v[i] = [b2 * x + (1.0 - b2) * y * y for x, y in zip(v[i], g)]
                p.data[i] = [w - lr * (a / c1) / (math.sqrt(b / c2) + self.eps)
                             for w, a, b in zip(p.data[i], m[i], v[i])]
            p.grad = None


# ----------------------------------------------------------------------------------------------
# 2. Knowledge base: (question, paraphrase never trained on, document, reference answer)
# ----------------------------------------------------------------------------------------------
FACTS = [
    ("太阳有多热？", "太阳的温度有多高？", "太阳表面约6000度，核心约1500万度。", "表面约6000度"),
    ("地球直径多少？", "地球的直径有多长？", "地球直径约12742公里，是岩石行星。", "约12742公里"),
    ("水的化学式是什么？", "水的分子式怎么写？", "水的化学式是H2O，由氢和氧组成。", "H2O"),
    ("光速是多少？", "光的速度有多快？", "光速约每秒30万公里，没有更快的。", "每秒30万公里"),
    ("谁发明了电话？", "电话是谁发明的？", "电话是贝尔在1876年发明的。", "贝尔"),
    ("地球到月亮多远？", "月亮离地球有多远？", "地球到月亮约38万公里。", "约38万公里"),
    ("氧气占空气多少？", "空气中有多少氧气？", "氧气约占空气的21%，氮气约占78%。", "约21%"),
    ("水的沸点是多少？", "水烧到多少度会沸腾？", "水在标准大气压下100摄氏度沸腾。", "100摄氏度"),
]
DOCS = [f[2] for f in FACTS]


# ----------------------------------------------------------------------------------------------
# 3. Retriever: text -> hashed character n-grams -> mean of their embeddings -> tanh(W x) -> cosine
# ----------------------------------------------------------------------------------------------
def ngrams(text: str, buckets: int, n_max: int = 3) -> list[int]:
    """Bucket ids of all 1..n_max character n-grams. crc32, not hash(): str hashes change per process."""
    grams = [text[i:i + n] for n in range(1, n_max + 1) for i in range(len(text) - n + 1)]
    return [zlib.crc32(g.encode()) % buckets for g in grams] or [0]


class Retriever:
    """Two encoders sharing one n-gram table, so a word learnt from a document already means something in
    a question; each side has its own projection. Both projections start as the identity, so before any
    training retrieval is already a noisy n-gram overlap: training only has to sharpen it."""

    def __init__(self, rng: random.Random, buckets: int = 1024, dim: int = 32):
        self.buckets = buckets
        # small init: n-grams never seen in training stay near zero and barely move a mean-pooled vector
        self.emb = param(rng, buckets, dim, 0.1)
        eye = [[float(i == j) for j in range(dim)] for i in range(dim)]
        self.wq, self.wd = Mat([r[:] for r in eye]), Mat([r[:] for r in eye])

    def encode(self, texts: list[str], query: bool) -> Mat:
        """Unit-length embeddings, one row per text."""
        pooled = gather(self.emb, [ngrams(t, self.buckets) for t in texts])
        return normalize(tanh(matmul(pooled, self.wq if query else self.wd)))

    def loss(self, queries: list[str], targets: list[int], docs: list[str], temperature: float) -> Mat:
        """InfoNCE: query i must pick document targets[i] among all the documents (softmax over
        cosine / temperature); every other document is a negative."""
        sims = matmul(self.encode(queries, True), self.encode(docs, False))
        return cross_entropy(scale(sims, 1.0 / temperature), targets)

    def search(self, question: str, docs: list[str]) -> tuple[int, float]:
        """Index and cosine of the best document."""
        sims = matmul(self.encode([question], True), self.encode(docs, False)).data[0]
        return max(enumerate(sims), key=lambda t: t[1])


# ----------------------------------------------------------------------------------------------
# 4. Generator: a character-level GPT reading "question <sep> document <sep>" and writing the answer
# ----------------------------------------------------------------------------------------------
SEP, EOS, UNK = 0, 1, 2
CHARS = sorted({c for f in FACTS for text in f for c in text})
STOI = {c: i + 3 for i, c in enumerate(CHARS)}


def encode(text: str) -> list[int]:
    """Characters to token ids (unknown characters share one id)."""
    return [STOI.get(c, UNK) for c in text]


def decode(ids: list[int]) -> str:
    """Token ids back to text."""
    return "".join(CHARS[i - 3] for i in ids if i > UNK)


# Prompts are right-aligned at position PROMPT_LEN (as if left-padded): the answer always starts at the
# same position and the document always sits just before it, whatever the question's length. Trained
# with damaged questions, the model learns to read the answer off the document, so it also answers
# paraphrases it has never seen. Longer questions are cut from the left.
PROMPT_LEN = 40


def prompt(doc: str, question: str) -> list[int]:
    """The generator's input: the question, then the retrieved document."""
    return (encode(question) + [SEP] + encode(doc) + [SEP])[-PROMPT_LEN:]


@dataclass
class GPTConfig:
    """Generator sizes: vocabulary, positions, width, heads, layers."""
    vocab: int = len(CHARS) + 3
    block: int = 56
    n_embd: int = 32
    n_head: int = 2
    n_layer: int = 1


class GPT:
    """Pre-norm transformer: x = emb + pos; x += attn(norm x); x += mlp(norm x); logits = lm(norm x)."""

    def __init__(self, cfg: GPTConfig, rng: random.Random):
        d, hd = cfg.n_embd, cfg.n_embd // cfg.n_head
        self.cfg = cfg
        self.wte, self.wpe = param(rng, cfg.vocab, d, 1.0), param(rng, cfg.block, d, 1.0)
        self.layers = [{
            "q": [param(rng, hd, d, d ** -0.5) for _ in range(cfg.n_head)],
            "k": [param(rng, hd, d, d ** -0.5) for _ in range(cfg.n_head)],
            "v": [param(rng, hd, d, d ** -0.5) for _ in range(cfg.n_head)],
            "o": [param(rng, d, hd, 0.5 * hd ** -0.5) for _ in range(cfg.n_head)],
            "fc": [param(rng, 4 * d, d, d ** -0.5)],
            "proj": [param(rng, d, 4 * d, 0.5 * (4 * d) ** -0.5)],
        } for _ in range(cfg.n_layer)]
        self.lm = param(rng, cfg.vocab, d, d ** -0.5)

    def params(self) -> list[Mat]:
        """Every trainable matrix."""
        return [self.wte, self.wpe, self.lm] + [p for lay in self.layers for ps in lay.values() for p in ps]

    def __call__(self, ids: list[int], n_out: int = 1, pos0: int = 0) -> Mat:
        """Logits for the last n_out positions. The last layer only computes those rows: the other
        positions are still needed as keys and values, but their own predictions would be thrown away."""
        n = len(ids)
        x = add(gather(self.wte, [[i] for i in ids]), gather(self.wpe, [[pos0 + p] for p in range(n)]))
        for li, lay in enumerate(self.layers):
            rows = n_out if li == len(self.layers) - 1 else n
            h = rmsnorm(x)
            hq = gather(h, [[p] for p in range(n - rows, n)])
            x = gather(x, [[p] for p in range(n - rows, n)])
            for wq, wk, wv, wo in zip(lay["q"], lay["k"], lay["v"], lay["o"]):
                # one head: scores = q k^T / sqrt(d_head); each row may only look at positions <= itself
                att = softmax(scale(matmul(matmul(hq, wq), matmul(h, wk)), len(wq.data) ** -0.5), n - rows)
                x = add(x, matmul(matmul(att, transpose(matmul(h, wv))), wo))
            x = add(x, matmul(gelu(matmul(rmsnorm(x), lay["fc"][0])), lay["proj"][0]))
        return matmul(rmsnorm(x), self.lm)

    def answer(self, doc: str, question: str, max_len: int = 16) -> str:
        """Greedy decoding until <eos>."""
        ids, out = prompt(doc, question), []
        pos0 = PROMPT_LEN - len(ids)
        while len(out) < max_len and pos0 + len(ids) < self.cfg.block:
            row = self(ids, 1, pos0).data[0]
            nxt = max(range(len(row)), key=row.__getitem__)
            if nxt == EOS:
                break
            ids.append(nxt)
            out.append(nxt)
        return decode(out)

    def loss(self, doc: str, question: str, answer: str) -> Mat:
        """Next-token loss on the answer (and <eos>) only: the model is never asked to predict the prompt."""
        p, a = prompt(doc, question), encode(answer) + [EOS]
        return cross_entropy(self((p + a)[:-1], len(a), PROMPT_LEN - len(p)), a)


# ----------------------------------------------------------------------------------------------
# 5. Training, evaluation, command line
# ----------------------------------------------------------------------------------------------
@dataclass
class Config:
    """Everything a run depends on; the defaults are the published figures."""
    seed: int = 0
    ret_steps: int = 60
    ret_lr: float = 0.05
    temperature: float = 0.1
    drop: float = 0.3                # chance of deleting each question character (augmentation)
    gen_steps: int = 120
    gen_batch: int = 4
    gen_lr: float = 0.01


def _lr(base: float, step: int, steps: int) -> float:
    # short warm-up, then linear decay to 10%: large steps early, small ones to settle the last digits
    return base * min(1.0, (step + 1) / 10) * (1.0 - 0.9 * step / steps)


def _drop(text: str, p: float, rng: random.Random) -> str:
    # Damaged questions teach both models to rely on the words that matter, not on one exact wording.
    kept = "".join(c for c in text if rng.random() >= p)
    return kept or text


def _span(doc: str, rng: random.Random) -> str:
    # A random piece of a document as a pseudo-question ("inverse cloze task", Lee et al. 2019): it
    # teaches the query encoder the document's own words, which paraphrases often reuse.
    n = rng.randint(3, min(8, len(doc)))
    start = rng.randint(0, len(doc) - n)
    return doc[start:start + n]


def train(cfg: Config, say: Callable[[str], None] = print) -> tuple[Retriever, GPT]:
    """Train the retriever, then the generator (on the gold document), from one seeded generator."""
    rng = random.Random(cfg.seed)
    t0 = time.perf_counter()
    ret = Retriever(rng)
    opt = Adam([ret.emb, ret.wq, ret.wd])
    for step in range(cfg.ret_steps):
        queries = [_drop(f[0], cfg.drop, rng) for f in FACTS] + [_span(d, rng) for d in DOCS]
        loss = ret.loss(queries, [*range(len(DOCS))] * 2, DOCS, cfg.temperature)
        backward(loss)
        opt.step(_lr(cfg.ret_lr, step, cfg.ret_steps))
        if step % 20 == 0 or step == cfg.ret_steps - 1:
            say(f"retriever step {step:4d} | InfoNCE {loss.data[0][0]:.4f} | {time.perf_counter() - t0:5.1f}s")
    gpt = GPT(GPTConfig(), rng)
    opt = Adam(gpt.params())
    order: list[int] = []
    for step in range(cfg.gen_steps):
        if len(order) < cfg.gen_batch:        # walk through the facts in shuffled epochs
            order += rng.sample(range(len(FACTS)), len(FACTS))
        batch, order = order[:cfg.gen_batch], order[cfg.gen_batch:]
        losses = [gpt.loss(FACTS[i][2], _drop(FACTS[i][0], cfg.drop, rng), FACTS[i][3]) for i in batch]
        loss = scale(functools.reduce(add, losses), 1.0 / len(batch))
        backward(loss)
        opt.step(_lr(cfg.gen_lr, step, cfg.gen_steps))
        if step % 20 == 0 or step == cfg.gen_steps - 1:
            say(f"generator step {step:4d} | loss {loss.data[0][0]:.4f} | {time.perf_counter() - t0:5.1f}s")
    return ret, gpt


def run(cfg: Config | None = None, say: Callable[[str], None] = print, ask: tuple[str, ...] = ()) -> dict:
    """Train, then answer every trained and paraphrased question (and any in `ask`): the figures and rows."""
    cfg = cfg or Config()
    t0, c0 = time.perf_counter(), time.process_time()
    ret, gpt = train(cfg, say)
    train_s = time.perf_counter() - t0
    rows = []
    for kind, col in (("trained", 0), ("paraphrased", 1)):
        say(f"\n--- {kind} questions ---")
        for i, f in enumerate(FACTS):
            best, sim = ret.search(f[col], DOCS)   # 1. retrieve   2. generate from what was retrieved
            got = gpt.answer(DOCS[best], f[col])
            rows.append({"kind": kind, "question": f[col], "doc": DOCS[best], "sim": round(sim, 4),
                         "hit": best == i, "answer": got, "reference": f[3], "exact": got == f[3]})
            r = rows[-1]
            say(f"问 {f[col]}\n   检索 {'✓' if r['hit'] else '✗'} {sim:.3f} {DOCS[best]}\n"
                f"   答 {'✓' if r['exact'] else '✗'} {got}" + ("" if r["exact"] else f"   (应为 {f[3]})"))

    for q in ask:                            # your own questions: no reference, so no score
        best, sim = ret.search(q, DOCS)
        rows.append({"kind": "asked", "question": q, "doc": DOCS[best], "sim": round(sim, 4),
                     "answer": gpt.answer(DOCS[best], q)})
        say(f"问 {q}\n   检索 {sim:.3f} {DOCS[best]}\n   答 {rows[-1]['answer']}")

    def count(kind: str, key: str) -> int:
        return sum(r[key] for r in rows if r["kind"] == kind)
    res = {"config": asdict(cfg), "n": len(FACTS), "train_seconds": round(train_s, 2),
           "seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2),
           "retrieval_trained": count("trained", "hit"), "retrieval_paraphrased": count("paraphrased", "hit"),
           "exact_trained": count("trained", "exact"), "exact_paraphrased": count("paraphrased", "exact"),
           "rows": rows}
    n = len(FACTS)
    say(f"\nretrieval {res['retrieval_trained']}/{n} trained, {res['retrieval_paraphrased']}/{n} paraphrased"
        f" (target {n}/{n}, >={n - 1}/{n}) | exact answers {res['exact_trained']}/{n} trained"
        f" (target {n}/{n}), {res['exact_paraphrased']}/{n} paraphrased | {res['seconds']:.1f}s (target < 60s)")
    return res


def main(argv: list[str] | None = None) -> int:
    """Command line: `picorag micro [--seed N] [--ret-steps N] [--gen-steps N] [--ask Q] [--json]`; 0 if the
    targets are met."""
    ap = argparse.ArgumentParser(prog="picorag micro", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ret-steps", type=int, default=Config.ret_steps, help="retriever training steps")
    ap.add_argument("--gen-steps", type=int, default=Config.gen_steps, help="generator training steps")
    ap.add_argument("--ask", action="append", default=[], help="also answer this question (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of text")
    args = ap.parse_args(argv)
    cfg = Config(seed=args.seed, ret_steps=args.ret_steps, gen_steps=args.gen_steps)
    res = run(cfg, say=(lambda s: None) if args.json else print, ask=tuple(args.ask))
    if args.json:
        print(json.dumps(res, ensure_ascii=False, indent=1))
    n = res["n"]
    ok = (res["retrieval_trained"] == n and res["retrieval_paraphrased"] >= n - 1 and res["exact_trained"] == n)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
