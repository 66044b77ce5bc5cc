"""Random composite ops, per-op modes, and operands that fool naive validation.

Each model here exercises one thing the graph must get exactly right: random ops that
draw inside composites (MHA dropout, gumbel-softmax, rrelu), autocast and no_grad regions
inside ``forward``, a forward that calls ``torch.autograd.grad``, ``1e20``-sized and NaN
operands, zero weights, uninitialised ``empty`` outputs, an input mutated in place and
state the forward reassigns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register


class MHADropout(nn.Module):
    """nn.MultiheadAttention with attention dropout (random in train mode) + dropout."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 2, dropout=0.3, batch_first=True)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        a, _ = self.attn(x, x, x)
        return self.fc(self.drop(a) + x)


class GumbelVQ(nn.Module):
    """Vector quantisation with a hard gumbel-softmax code choice (random in any mode)."""

    def __init__(self, d: int = 6, codes: int = 5) -> None:
        super().__init__()
        self.enc = nn.Linear(d, codes)
        self.codebook = nn.Parameter(torch.randn(codes, d))
        self.dec = nn.Linear(d, d)

    def forward(self, x):
        onehot = F.gumbel_softmax(self.enc(x), tau=0.7, hard=True)
        return self.dec(onehot @ self.codebook + x)


class Samplers(nn.Module):
    """bernoulli, multinomial, randperm, rand and RReLU (random in train mode)."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.act = nn.RReLU()
        self.out = nn.Linear(d, d)

    def forward(self, x):
        h = self.act(self.fc(x))
        mask = torch.bernoulli(torch.sigmoid(h))
        idx = torch.multinomial(F.softmax(h, dim=-1).abs().clamp_min(1e-3), 2)
        picked = h.gather(1, idx).sum(-1, keepdim=True)
        perm = torch.randperm(h.shape[-1])
        noise = torch.rand(h.shape) * 0.1
        return self.out(h * mask + picked + h[:, perm] + noise)


class AutocastRegion(nn.Module):
    """A bfloat16 CPU autocast region in the middle of the forward."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)
        self.c = nn.Linear(d, d)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = self.b(h) * 2
        return self.c(h.float() + x)


class NoGradRegion(nn.Module):
    """Statistics computed under torch.no_grad() inside the forward."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        h = self.fc(x)
        with torch.no_grad():
            centre = h.mean(0, keepdim=True)
        return self.out(h - centre)


class GradInForward(nn.Module):
    """A forward that calls torch.autograd.grad (an energy model's force)."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.energy = nn.Linear(d, 1)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        with torch.enable_grad():
            pos = x.detach().requires_grad_(True)
            e = torch.tanh(self.energy(pos)).sum()
            (force,) = torch.autograd.grad(e, pos)
        return self.out(x - force)


class HugeAndNaN(nn.Module):
    """1e20-sized operands, a NaN operand whose result is masked out, zero weights."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.dead = nn.Linear(d, d)
        with torch.no_grad():
            self.dead.weight.zero_()
        self.out = nn.Linear(d, d)

    def forward(self, x):
        h = self.fc(x)
        big = h * 1e20 + 1e20
        back = (big - 1e20) / 1e20
        shifted = h + 1e20  # h is absorbed at this magnitude
        gone = torch.nan_to_num(h * torch.full_like(h, float("nan")), nan=0.0)
        return self.out(back + gone + self.dead(h) + (shifted - 1e20) * 0.0)


class EmptyFilled(nn.Module):
    """torch.empty / empty_like filled in place."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        h = self.fc(x)
        buf = torch.empty_like(h)
        buf.copy_(h * 2)
        z = torch.empty(h.shape[0], 1)
        z.fill_(0.5)
        return buf + z


class MutatesInput(nn.Module):
    """x += 1 on the caller's input tensor."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        x += 1
        return self.fc(x)


class ReassignsState(nn.Module):
    """Reassigns a buffer and a plain attribute in forward (an online running mean)."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.register_buffer("running", torch.zeros(d))
        self.last = None

    def forward(self, x):
        h = self.fc(x)
        self.running = 0.5 * self.running + 0.5 * h.mean(0)
        self.last = h
        return h - self.running


def _build(model: nn.Module, *shape: int):
    torch.manual_seed(1)
    x = torch.randn(*shape)
    return model.eval(), (x,), {}


@register("mha_dropout", "attention", "random", "grad_mode_sensitive", "modes")
def mha_dropout():
    torch.manual_seed(0)
    return _build(MHADropout(), 2, 5, 8)


@register("gumbel_vq", "random", "modes")
def gumbel_vq():
    torch.manual_seed(0)
    return _build(GumbelVQ(), 4, 6)


@register("random_samplers", "random", "modes")
def random_samplers():
    torch.manual_seed(0)
    return _build(Samplers(), 4, 6)


@register("autocast_region", "modes")
def autocast_region():
    torch.manual_seed(0)
    return _build(AutocastRegion(), 3, 8)


@register("no_grad_region", "modes")
def no_grad_region():
    torch.manual_seed(0)
    return _build(NoGradRegion(), 4, 6)


@register("grad_in_forward", "modes", "autograd", "irregular")
def grad_in_forward():
    torch.manual_seed(0)
    return _build(GradInForward(), 3, 4)


@register("huge_and_nan", "modes", "internal_tensor", "nan", "irregular")
def huge_and_nan():
    torch.manual_seed(0)
    return _build(HugeAndNaN(), 3, 6)


@register("empty_filled", "modes", "inplace", "internal_tensor", "uninitialised",
          "irregular")
def empty_filled():
    torch.manual_seed(0)
    return _build(EmptyFilled(), 3, 6)


@register("mutates_input", "modes", "inplace", "mutates_input", "irregular")
def mutates_input():
    torch.manual_seed(0)
    return _build(MutatesInput(), 3, 6)


@register("reassigns_state", "modes", "buffer", "stateful", "irregular")
def reassigns_state():
    torch.manual_seed(0)
    return _build(ReassignsState(), 3, 6)
