"""The model lab's language model: a GPT whose blocks can be attention (T) or Mamba (M), nanoGPT-style.

    T  causal self-attention (rotary positions, QK-norm, PyTorch SDPA) + a relu² MLP
    M  a selective state-space block (Mamba-2 style: input-dependent step dt, B and C; scalar decay per head)
       + the same MLP

`block_pattern` lists one letter per layer ("T,T,M,M"; empty means all T). Norms are parameter-free RMSNorm,
the token embedding is tied to the output layer, and there is no dropout (training is deterministic on CPU).
Generation keeps a `Cache`: keys/values for T blocks, the last conv inputs and the SSM state for M blocks.

The SSM recurrence, per head with state h (headdim x d_state):

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T        y_t = h_t C_t + D * x_t

`ssm_loop` runs it step by step (the reference and the generation step); `ssm_scan` computes the same thing
in chunks: quadratic attention-like work inside a chunk, the recurrence only between chunks (Mamba-2's SSD).

>>> cfg = GPTConfig(vocab_size=64, sequence_len=32, n_layer=2, n_head=2, n_embd=32, block_pattern="T,M")
>>> model = GPT(cfg)
>>> logits, loss = model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))
>>> tuple(logits.shape), round(loss.item(), 1) > 0
((1, 8, 64), True)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .records import PicoragError


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    sequence_len: int = 256  # longest context in tokens (rotary tables and the generator's window)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_pattern: str = ""  # "T,T,M,M": one letter per layer; "" = all attention
    d_state: int = 16  # M blocks: SSM state size per channel
    d_conv: int = 4  # M blocks: causal depthwise convolution width
    expand: int = 2  # M blocks: inner width = expand * n_embd
    headdim: int = 32  # M blocks: channels per SSM head
    chunk_size: int = 64  # M blocks: chunk length of the parallel scan

    def __post_init__(self) -> None:
        kinds = self.kinds()
        if len(kinds) != self.n_layer or set(kinds) - {"T", "M"}:
            raise PicoragError(f"block_pattern {self.block_pattern!r} must list {self.n_layer} blocks, each T or M")
        if "T" in kinds and self.n_embd % self.n_head:
            raise PicoragError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if "M" in kinds and (self.expand * self.n_embd) % self.headdim:
            raise PicoragError(f"expand*n_embd {self.expand * self.n_embd} is not divisible by headdim {self.headdim}")

    def kinds(self) -> list[str]:
        if not self.block_pattern.strip():
            return ["T"] * self.n_layer
        return [k.strip().upper() for k in self.block_pattern.split(",")]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise PicoragError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


# ----------------------------------------------------------------------------------------------- attention


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]  # (1, T, 1, head_dim/2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # rotate each (first half, second half) pair of channels by a position-dependent angle
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                state: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, self.head_dim) for t in self.c_attn(x).split(C, dim=2))
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))  # QK-norm keeps logits tame
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)
        if state is not None:  # generation: attend to every earlier token as well
            if "k" in state:
                k, v = torch.cat([state["k"], k], dim=2), torch.cat([state["v"], v], dim=2)
            state["k"], state["v"] = k, v
        Tq, Tk = q.size(2), k.size(2)
        if Tq == Tk:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new queries sit at the end: query i sees keys up to Tk - Tq + i
            mask = torch.ones(Tq, Tk, dtype=torch.bool, device=x.device).tril(diagonal=Tk - Tq)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


# ----------------------------------------------------------------------------------------------- mamba


def ssm_loop(X: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSM one step at a time. X (b,l,h,p) already times dt; A (b,l,h) = dt*A (<= 0); B, C (b,l,n).
    Returns y (b,l,h,p) and the last state (b,h,p,n)."""
    b, length, nh, p = X.shape
    if h is None:
        h = X.new_zeros(b, nh, p, B.size(-1))
    ys = []
    for t in range(length):
        h = torch.exp(A[:, t])[:, :, None, None] * h + X[:, t, :, :, None] * B[:, t, None, None, :]
        ys.append((h * C[:, t, None, None, :]).sum(-1))
    return torch.stack(ys, dim=1), h


def segsum(x: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = x[..., j+1] + ... + x[..., i] for j <= i, -inf above the diagonal (so exp() is 0).
    Summing masked copies, not differencing a cumsum, keeps it exact for long decays."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)  # [..., i, j] = x_i
    below = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    x = x.masked_fill(~below, 0).cumsum(dim=-2)
    return x.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), -torch.inf)


def ssm_scan(X: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int = 64,
             h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`ssm_loop`'s result computed chunk by chunk (Mamba-2's SSD algorithm); same arguments and results."""
    b, length, nh, p = X.shape
    pad = (-length) % chunk  # padded steps have dt = 0: no input, no decay, the state passes through
    if pad:
        X, A = F.pad(X, (0, 0, 0, 0, 0, pad)), F.pad(A, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    c = X.size(1) // chunk
    X = X.view(b, c, chunk, nh, p)
    B, C = B.view(b, c, chunk, -1), C.view(b, c, chunk, -1)
    A = A.view(b, c, chunk, nh).permute(0, 3, 1, 2)  # (b, h, c, l)
    A_cum = A.cumsum(dim=-1)
    # 1. inside each chunk: y_t = sum_{s<=t} (C_t . B_s) exp(A_{s+1} + ... + A_t) x_s
    decay = torch.exp(segsum(A))  # (b, h, c, l, s)
    Y_diag = torch.einsum("bcln,bcsn,bhcls,bcshp->bclhp", C, B, decay, X)
    # 2. the state each chunk builds from its own inputs
    to_end = torch.exp(A_cum[..., -1:] - A_cum)  # (b, h, c, l)
    states = torch.einsum("bcln,bhcl,bclhp->bchpn", B, to_end, X)
    # 3. the recurrence between chunks: the state entering chunk z, starting from h
    h0 = X.new_zeros(b, 1, nh, p, B.size(-1)) if h is None else h[:, None]
    states = torch.cat([h0, states], dim=1)
    across = torch.exp(segsum(F.pad(A_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", across, states)
    states, h_last = states[:, :-1], states[:, -1]
    # 4. what the entering state contributes inside each chunk
    Y_off = torch.einsum("bcln,bchpn,bhcl->bclhp", C, states, torch.exp(A_cum))
    return (Y_diag + Y_off).reshape(b, c * chunk, nh, p)[:, :length], h_last


class Mamba(nn.Module):
    """Selective SSM block: in_proj -> causal conv -> SSM with input-dependent dt, B, C -> gate -> out_proj."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.d_inner, self.d_state, self.d_conv = cfg.expand * cfg.n_embd, cfg.d_state, cfg.d_conv
        self.n_head, self.headdim, self.chunk = self.d_inner // cfg.headdim, cfg.headdim, cfg.chunk_size
        conv_dim = self.d_inner + 2 * self.d_state
        self.in_proj = nn.Linear(cfg.n_embd, self.d_inner + conv_dim + self.n_head, bias=False)  # z, xBC, dt
        self.conv_weight = nn.Parameter(torch.empty(conv_dim, 1, cfg.d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(conv_dim))
        self.dt_bias = nn.Parameter(torch.empty(self.n_head))
        self.A_log = nn.Parameter(torch.empty(self.n_head))
        self.D = nn.Parameter(torch.ones(self.n_head))
        self.out_proj = nn.Linear(self.d_inner, cfg.n_embd, bias=False)
        self.reset_ssm()

    def reset_ssm(self) -> None:
        # Mamba-2's init: dt log-uniform in [1e-3, 1e-1] (through softplus), decay rates A in [1, 16]
        nn.init.uniform_(self.conv_weight, -1 / math.sqrt(self.d_conv), 1 / math.sqrt(self.d_conv))
        with torch.no_grad():
            self.conv_bias.zero_()
            dt = torch.exp(torch.rand(self.n_head) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.A_log.copy_(torch.log(torch.linspace(1, 16, self.n_head)))
            self.D.fill_(1.0)

    def forward(self, u: torch.Tensor, state: dict[str, torch.Tensor] | None = None,
                loop: bool = False) -> torch.Tensor:
        Bsz, T, _ = u.shape
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.d_inner + 2 * self.d_state, self.n_head], dim=-1)
        # causal depthwise conv over time: prepend the last d_conv-1 inputs (zeros at the start)
        prev = state.get("conv") if state else None
        if prev is None:
            prev = xBC.new_zeros(Bsz, self.d_conv - 1, xBC.size(-1))
        xpad = torch.cat([prev, xBC], dim=1)
        xBC = F.silu(F.conv1d(xpad.transpose(1, 2), self.conv_weight, self.conv_bias, groups=xBC.size(-1)))
        x, Bm, Cm = xBC.transpose(1, 2).split([self.d_inner, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (b, l, h): the selective step size
        A = -torch.exp(self.A_log.float())
        x = x.view(Bsz, T, self.n_head, self.headdim)
        h = state.get("ssm") if state else None
        args = (x * dt[..., None], A * dt, Bm, Cm)
        y, h = ssm_loop(*args, h=h) if loop or T == 1 else ssm_scan(*args, chunk=self.chunk, h=h)
        if state is not None:
            state["conv"], state["ssm"] = xpad[:, -(self.d_conv - 1):], h
        y = (y + x * self.D[:, None]).reshape(Bsz, T, self.d_inner)
        return self.out_proj(norm(y * F.silu(z)))


# ----------------------------------------------------------------------------------------------- model


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())  # relu², as in nanochat


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.mix = CausalSelfAttention(cfg) if kind == "T" else Mamba(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, state: dict | None = None,
                loop: bool = False) -> torch.Tensor:
        if self.kind == "T":
            x = x + self.mix(norm(x), cos, sin, state)
        else:
            x = x + self.mix(norm(x), state, loop)
        return x + self.mlp(norm(x))


class Cache:
    """Generation state: how many tokens were seen, and one dict per block (k/v or conv/ssm tensors)."""

    def __init__(self, n_layer: int):
        self.pos = 0
        self.layers: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layer)]


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, kind) for kind in cfg.kinds())
        hd = cfg.n_embd // cfg.n_head
        cos, sin = rotary_tables(cfg.sequence_len, hd)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # residual projections scaled down with depth (GPT-2)
            if name.endswith("c_proj.weight") or name.endswith("out_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
        for block in self.blocks:
            if block.kind == "M":
                block.mix.reset_ssm()

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: Cache | None = None,
                loop: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (b, t, vocab) and, with targets, the mean cross-entropy over targets != -1.
        With a cache the tokens continue those seen before; `loop` runs M blocks step by step (for tests)."""
        T = idx.size(1)
        start = cache.pos if cache is not None else 0
        if start + T > self.config.sequence_len:
            raise PicoragError(f"{start + T} tokens exceed the model's context of {self.config.sequence_len}")
        cos, sin = self.cos[:, start:start + T], self.sin[:, start:start + T]
        x = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache.layers[i] if cache is not None else None, loop)
        if cache is not None:
            cache.pos += T
        logits = F.linear(norm(x), self.wte.weight).float()  # tied embedding
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, ids: list[int], max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None) -> Iterator[int]:
        """Token ids after `ids`, one at a time; temperature 0 is greedy. Without the cache every step
        recomputes the whole sequence (the reference the cache is tested against)."""
        device = self.wte.weight.device
        seq = torch.tensor([ids], dtype=torch.long, device=device)
        cache = Cache(len(self.blocks)) if use_cache else None
        inp = seq
        for _ in range(max_new_tokens):
            if seq.size(1) >= self.config.sequence_len:
                return
            logits = self(inp, cache=cache)[0][:, -1]
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -torch.inf)
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            seq = torch.cat([seq, nxt], dim=1)
            inp = nxt if use_cache else seq
            yield int(nxt)

    def optimizer(self, lr: float = 3e-3, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                  ) -> torch.optim.AdamW:
        """AdamW; matrices decay, vectors (SSM parameters, conv bias) do not."""
        decay = [p for p in self.parameters() if p.dim() >= 2]
        rest = [p for p in self.parameters() if p.dim() < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                  {"params": rest, "weight_decay": 0.0}], lr=lr, betas=betas)
