"""Micro mode: every autograd op against finite differences and PyTorch, then the full run's targets."""

import ast
import json
import random
import sys
from pathlib import Path

import pytest

from picorag import micro as m

RNG = random.Random(1234)


def rand(rows: int, cols: int, lo: float = -1.5, hi: float = 1.5) -> list[list[float]]:
    return [[RNG.uniform(lo, hi) for _ in range(cols)] for _ in range(rows)]


BAGS = [[0], [2, 0], [1, 2, 3], [3, 3]]
COLS = [2, 0, 3]

# name -> (shapes of the inputs, our op, the same op in torch, input range)
OPS = {
    "matmul": ([(3, 4), (5, 4)], lambda a, b: m.matmul(a, b), lambda t, a, b: a @ b.T, None),
    "transpose": ([(3, 4)], m.transpose, lambda t, a: a.T, None),
    "add": ([(3, 4), (3, 4)], m.add, lambda t, a, b: a + b, None),
    "scale": ([(3, 4)], lambda a: m.scale(a, -0.7), lambda t, a: -0.7 * a, None),
    "gather": ([(4, 5)], lambda a: m.gather(a, BAGS),
               lambda t, a: t.stack([a[bag].mean(0) for bag in BAGS]), None),
    "tanh": ([(3, 4)], m.tanh, lambda t, a: t.tanh(a), None),
    "gelu": ([(3, 4)], m.gelu, lambda t, a: t.nn.functional.gelu(a, approximate="tanh"), None),
    "log": ([(3, 4)], m.log, lambda t, a: t.log(a), (0.2, 3.0)),
    "rmsnorm": ([(3, 6)], m.rmsnorm, lambda t, a: t.nn.functional.rms_norm(a, (6,), eps=1e-5), None),
    "normalize": ([(3, 6)], m.normalize, lambda t, a: a / a.norm(dim=1, keepdim=True), None),
    "softmax": ([(3, 5)], m.softmax, lambda t, a: t.softmax(a, dim=1), None),
    "softmax_causal": ([(3, 5)], lambda a: m.softmax(a, causal=1),
                       lambda t, a: t.softmax(a.masked_fill(t.ones(3, 5).triu(2).bool(), float("-inf")), 1), None),
    "pick": ([(3, 4)], lambda a: m.pick(a, COLS), lambda t, a: a[range(3), COLS].unsqueeze(1), None),
    "total": ([(3, 4)], m.total, lambda t, a: a.sum().reshape(1, 1), None),
    "cross_entropy": ([(3, 5)], lambda a: m.cross_entropy(a, COLS),
                      lambda t, a: t.nn.functional.cross_entropy(a, t.tensor(COLS)).reshape(1, 1), None),
}


def make_case(name: str) -> tuple[list[list[list[float]]], list[list[float]]]:
    shapes, op, _, span = OPS[name]
    inputs = [rand(r, c, *(span or (-1.5, 1.5))) for r, c in shapes]
    out = op(*[m.Mat([row[:] for row in x]) for x in inputs])
    seed = rand(len(out.data), len(out.data[0]))  # weights of the scalar we differentiate: sum(seed * out)
    return inputs, seed


def ours(name: str, inputs, seed):
    mats = [m.Mat([row[:] for row in x]) for x in inputs]
    out = OPS[name][1](*mats)
    m.backward(out, [row[:] for row in seed])
    return out.data, [x.grad for x in mats]


@pytest.mark.parametrize("name", OPS)
def test_op_matches_finite_differences(name: str) -> None:
    inputs, seed = make_case(name)
    _, grads = ours(name, inputs, seed)

    def f(xs) -> float:
        out = OPS[name][1](*[m.Mat(x) for x in xs]).data
        return sum(s * o for sr, orow in zip(seed, out) for s, o in zip(sr, orow))

    h = 1e-6
    for k, x in enumerate(inputs):
        for i in range(len(x)):
            for j in range(len(x[0])):
                plus = [[row[:] for row in y] for y in inputs]
                minus = [[row[:] for row in y] for y in inputs]
                plus[k][i][j] += h
                minus[k][i][j] -= h
                numeric = (f(plus) - f(minus)) / (2 * h)
                assert grads[k][i][j] == pytest.approx(numeric, rel=1e-5, abs=1e-7), (name, k, i, j)


@pytest.mark.parametrize("name", OPS)
def test_op_matches_torch(name: str) -> None:
    torch = pytest.importorskip("torch")
    inputs, seed = make_case(name)
    out, grads = ours(name, inputs, seed)
    ts = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs]
    tout = OPS[name][2](torch, *ts)
    tout.backward(torch.tensor(seed, dtype=torch.float64))
    assert torch.allclose(torch.tensor(out, dtype=torch.float64), tout.detach(), rtol=1e-10, atol=1e-12)
    for g, t in zip(grads, ts):
        assert torch.allclose(torch.tensor(g, dtype=torch.float64), t.grad, rtol=1e-9, atol=1e-12), name


def test_adam_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    w0, grads = rand(3, 4), [rand(3, 4) for _ in range(3)]
    p = m.Mat([r[:] for r in w0])
    opt = m.Adam([p])
    tp = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    topt = torch.optim.Adam([tp], lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    for g in grads:
        p.grad = [r[:] for r in g]
        opt.step(0.01)
        tp.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
    assert torch.allclose(torch.tensor(p.data, dtype=torch.float64), tp.detach(), rtol=1e-10, atol=1e-12)


def _check_model_grads(loss_fn, params: list[m.Mat], rng: random.Random, per_param: int = 3) -> None:
    # A whole model's gradient, checked at a few random entries of every parameter.
    m.backward(loss_fn())
    grads = [[r[:] for r in p.grad] for p in params if p.grad is not None]
    assert len(grads) == len(params)
    h = 1e-6
    for p, g in zip(params, grads):
        for _ in range(per_param):
            i, j = rng.randrange(len(p.data)), rng.randrange(len(p.data[0]))
            old = p.data[i][j]
            p.data[i][j] = old + h
            up = loss_fn().data[0][0]
            p.data[i][j] = old - h
            down = loss_fn().data[0][0]
            p.data[i][j] = old
            assert g[i][j] == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-7)


def test_gpt_gradient_end_to_end() -> None:
    rng = random.Random(0)
    gpt = m.GPT(m.GPTConfig(n_embd=8, n_head=2, n_layer=2), rng)
    q, _, doc, ans = m.FACTS[0]
    _check_model_grads(lambda: gpt.loss(doc, q, ans), gpt.params(), rng)


def test_retriever_gradient_end_to_end() -> None:
    rng = random.Random(0)
    ret = m.Retriever(rng, buckets=64, dim=8)
    qs = [f[0] for f in m.FACTS]
    _check_model_grads(lambda: ret.loss(qs, list(range(8)), m.DOCS, 0.1), [ret.wq, ret.wd], rng)
    # the embedding table: check rows that are actually used
    used = sorted({b for q in qs for b in m.ngrams(q, 64)})
    ret.emb.grad = None
    m.backward(ret.loss(qs, list(range(8)), m.DOCS, 0.1))
    g = ret.emb.grad
    for i in used[:5]:
        old = ret.emb.data[i][0]
        ret.emb.data[i][0] = old + 1e-6
        up = ret.loss(qs, list(range(8)), m.DOCS, 0.1).data[0][0]
        ret.emb.data[i][0] = old - 1e-6
        down = ret.loss(qs, list(range(8)), m.DOCS, 0.1).data[0][0]
        ret.emb.data[i][0] = old
        assert g[i][0] == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-7)


def test_standard_library_only() -> None:
    tree = ast.parse(Path(m.__file__).read_text(encoding="utf-8"))
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)
    assert len(Path(m.__file__).read_text(encoding="utf-8").splitlines()) <= 500


def test_ngram_hash_is_stable_across_processes() -> None:
    # crc32, not hash(): the same text must land in the same buckets in every process
    assert m.ngrams("太阳", 1024) == [zlib_bucket("太"), zlib_bucket("阳"), zlib_bucket("太阳")]


def zlib_bucket(s: str) -> int:
    import zlib

    return zlib.crc32(s.encode()) % 1024


def test_short_run_is_deterministic_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--seed", "3", "--ret-steps", "3", "--gen-steps", "2", "--json"]
    assert m.main(argv) in (0, 1)
    first = json.loads(capsys.readouterr().out)
    m.main(argv)
    second = json.loads(capsys.readouterr().out)
    assert first["rows"] == second["rows"]


def test_full_run_meets_targets() -> None:
    res = m.run(m.Config(seed=0), say=lambda s: None)
    n = res["n"]
    assert n >= 8
    assert res["retrieval_trained"] == n
    assert res["retrieval_paraphrased"] >= n - 1
    assert res["exact_trained"] == n
    # CPU time, not wall time: the machine running the tests may be busy with other work
    assert res["cpu_seconds"] < 60
