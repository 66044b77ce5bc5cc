"""Attention models: nn.MultiheadAttention, hand-written attention, tiny transformers."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._registry import register

VOCAB = 50


class MHASelfAttn(nn.Module):
    """nn.MultiheadAttention self-attention + residual + LayerNorm.

    Numerics note: in eval mode under ``torch.no_grad()`` (and with no
    ``__torch_function__`` mode active) MHA takes the fused fast path
    (``torch._native_multi_head_attention``), whose output differs from the
    regular ``F.multi_head_attention_forward`` path by ~1 ulp.  Any active
    TorchFunctionMode disables the fast path.  Compare with a tolerance, or
    run the reference with grad enabled.
    """

    def __init__(self, d=16, heads=4):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim=d, num_heads=heads, batch_first=True)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        attn_out, _weights = self.attn(x, x, x)
        return self.norm(x + attn_out)


class Mixer(nn.Module):
    """Hand-written multi-head attention under a deliberately unusual name."""

    def __init__(self, d=16, heads=4, causal=False):
        super().__init__()
        assert d % heads == 0
        self.heads, self.head_dim, self.causal = heads, d // heads, causal
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _split(self, t, b, s):
        return t.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        b, s, d = x.shape
        q = self._split(self.q(x), b, s)
        k = self._split(self.k(x), b, s)
        v = self._split(self.v(x), b, s)
        scores = q @ k.transpose(-2, -1) * self.scale
        if self.causal:
            keep = torch.tril(torch.ones(s, s, dtype=torch.bool))
            scores = scores.masked_fill(~keep, float("-inf"))
        attn = scores.softmax(dim=-1)
        ctx = attn @ v
        ctx = ctx.transpose(1, 2).reshape(b, s, d)
        return self.out(ctx)


class Block(nn.Module):
    """Pre-LN transformer block: LN, attention, add, LN, GELU MLP, add."""

    def __init__(self, d=16, heads=4, causal=True):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Mixer(d, heads, causal=causal)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return x


class TinyTransformer(nn.Module):
    """Embedding + two distinct blocks + final LN + unembedding."""

    def __init__(self, vocab=VOCAB, d=16, heads=4, max_len=16, n_blocks=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.1)
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(n_blocks)])
        self.ln_f = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_f(x))


class AlbertShared(nn.Module):
    """ALBERT-style: ONE block module applied ``n_repeats`` times in a loop."""

    def __init__(self, vocab=VOCAB, d=16, heads=4, max_len=16, n_repeats=3):
        super().__init__()
        self.n_repeats = n_repeats
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.1)
        self.block = Block(d, heads, causal=False)
        self.ln_f = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for _ in range(self.n_repeats):
            x = self.block(x)
        return self.unembed(self.ln_f(x))


@register("mha", "attention", "grad_mode_sensitive")
def mha():
    torch.manual_seed(0)
    model = MHASelfAttn().eval()
    return model, (torch.randn(2, 5, 16),), {}


@register("custom_attention", "attention")
def custom_attention():
    torch.manual_seed(0)
    model = Mixer(16, 4).eval()
    return model, (torch.randn(2, 5, 16),), {}


@register("tiny_transformer_2block", "attention", "transformer", "internal_tensor")
def tiny_transformer_2block():
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    return model, (torch.randint(0, VOCAB, (2, 6)),), {}


@register("albert_shared", "attention", "transformer", "recurrent", "loop")
def albert_shared():
    torch.manual_seed(0)
    model = AlbertShared().eval()
    return model, (torch.randint(0, VOCAB, (2, 6)),), {}
