"""The model lab's GPT / Mamba / hybrid: scan vs loop, cache vs recompute, and that each kind learns."""

import pytest
import torch

from picorag.model import GPT, Cache, GPTConfig, ssm_loop, ssm_scan
from picorag.records import PicoragError

torch.set_num_threads(1)
PATTERNS = ["T,T", "M,M", "T,M"]


def tiny(pattern: str, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, sequence_len=64, n_layer=2, n_head=2, n_embd=32, block_pattern=pattern,
                         chunk_size=8, **kw))


@pytest.mark.parametrize("length,chunk", [(1, 8), (8, 8), (37, 8), (37, 64), (50, 7)])
def test_scan_equals_loop(length, chunk):
    g = torch.Generator().manual_seed(length)
    b, h, p, n = 2, 3, 4, 5
    X = torch.randn(b, length, h, p, generator=g)
    A = -torch.rand(b, length, h, generator=g) * 3  # dt*A <= 0, some strong decays
    B, C = torch.randn(b, length, n, generator=g), torch.randn(b, length, n, generator=g)
    h0 = torch.randn(b, h, p, n, generator=g)
    for start in (None, h0):
        y_loop, s_loop = ssm_loop(X, A, B, C, h=start)
        y_scan, s_scan = ssm_scan(X, A, B, C, chunk=chunk, h=start)
        torch.testing.assert_close(y_scan, y_loop, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(s_scan, s_loop, atol=1e-5, rtol=1e-4)


def test_scan_gradients_equal_loop():
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(1, 19, 2, 3, generator=g), -torch.rand(1, 19, 2, generator=g),
            torch.randn(1, 19, 4, generator=g), torch.randn(1, 19, 4, generator=g)]
    grads = []
    for fn in (lambda *a: ssm_loop(*a)[0], lambda *a: ssm_scan(*a, chunk=4)[0]):
        leaves = [a.clone().requires_grad_() for a in args]
        fn(*leaves).square().sum().backward()
        grads.append([x.grad for x in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_model_scan_equals_loop(pattern):
    model = tiny(pattern)
    ids = torch.randint(0, 64, (2, 21), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(ids)[0], model(ids, loop=True)[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_cache_equals_full_recompute(pattern):
    model = tiny(pattern)
    with torch.no_grad():  # make the SSM blocks matter: stronger weights than the init
        for p in model.parameters():
            p.mul_(3.0)
    ids = torch.randint(0, 64, (1, 30), generator=torch.Generator().manual_seed(2))
    full = model(ids)[0]
    cache = Cache(len(model.blocks))
    pieces = [model(ids[:, :11], cache=cache)[0]]  # a prefill of 11, then one token at a time, then 5 at once
    pieces += [model(ids[:, t:t + 1], cache=cache)[0] for t in range(11, 25)]
    pieces.append(model(ids[:, 25:], cache=cache)[0])
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)
    assert list(model.generate([5, 6, 7], 25)) == list(model.generate([5, 6, 7], 25, use_cache=False))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_overfits_a_tiny_batch(pattern):
    model = tiny(pattern)
    opt = model.optimizer(lr=1e-2, weight_decay=0.0)
    x = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(3))
    losses = []
    for _ in range(40):
        loss = model(x[:, :-1], x[:, 1:])[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.5 and losses[-1] < 0.3, losses[::10]


def test_ignored_targets_do_not_count():
    model = tiny("T,M")
    x = torch.randint(0, 64, (1, 10))
    t = x.clone()
    t[:, :5] = -1
    full = torch.nn.functional.cross_entropy(model(x)[0][0, 5:], x[0, 5:])
    torch.testing.assert_close(model(x, t)[1], full)


def test_sampling_is_seeded_and_respects_context():
    model = tiny("T,M")
    a = list(model.generate([1], 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0)))
    b = list(model.generate([1], 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0)))
    assert a == b and len(a) == 10
    assert len(list(model.generate(list(range(60)), 10))) == 4  # stops at sequence_len 64
    with pytest.raises(PicoragError, match="exceed"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_config_checks():
    with pytest.raises(PicoragError, match="block_pattern"):
        GPTConfig(n_layer=2, block_pattern="T,X")
    with pytest.raises(PicoragError, match="block_pattern"):
        GPTConfig(n_layer=3, block_pattern="T,M")
    with pytest.raises(PicoragError, match="unknown model config"):
        GPTConfig.from_dict({"n_layer": 2, "bogus": 1})
    cfg = GPTConfig(n_layer=2, block_pattern="t, m")
    assert cfg.kinds() == ["T", "M"] and GPTConfig.from_dict(cfg.to_dict()) == cfg
