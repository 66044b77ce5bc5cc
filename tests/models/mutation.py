"""Models that write into tensors in place: through views, into inputs, into model state.

Each view-write model computes ``h`` with a Linear layer, writes into ``h`` through some
view, then reads ``h`` (and other views of the same storage) again, so a graph that
follows tensor objects instead of storage gets the later readers' parents wrong.

Tags: ``view_write`` (a write through a view reaches its base), ``train`` (``build``
returns the model in train mode: its buffers change on every run, its output does not
depend on them), ``mutates_input`` (forward writes into its input: every run needs a
fresh copy of the input, so generic zoo tests that run the model repeatedly skip it),
``irregular`` (see tests/models/__init__.py).
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register
from .cnn import BasicBlock, _randomize_bn


class ViewWrite(nn.Module):
    """``h = fc(x)``; ``write(h)`` writes through a view; then ``h`` and a view are read."""

    def __init__(self, write, width: int = 6):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.write = write

    def forward(self, x):
        h = self.fc(x)
        side = h[:, :2]  # another view, taken before the write
        self.write(h)
        return self.out(torch.tanh(h)) + side.sum(-1, keepdim=True)


def _slice_zero(h):
    y = h[1:3]
    y.zero_()


def _setitem(h):
    h[0][:] = 1.0


def _transpose_add(h):
    h.transpose(0, 1).add_(1.0)


def _unsqueeze_mul(h):
    h.unsqueeze(0).mul_(2.0)


def _chain_fill(h):
    h.view(2, -1)[1].narrow(0, 1, 3).fill_(-0.5)


def _copy_slice(h):
    h[:, 1:3].copy_(h[:, 3:5] * 3.0)


def _index_put(h):
    v = h[1:]
    v.index_put_((torch.tensor([0, 2]),), torch.full((6,), 0.25))


def _masked_fill(h):
    h.t()[2:].masked_fill_(h.t()[2:] > 0.1, 0.1)


VIEW_WRITES = {
    "view_slice_zero": _slice_zero,
    "view_setitem": _setitem,
    "view_transpose_add": _transpose_add,
    "view_unsqueeze_mul": _unsqueeze_mul,
    "view_chain_fill": _chain_fill,
    "view_copy_slice": _copy_slice,
    "view_index_put": _index_put,
    "view_masked_fill": _masked_fill,
}


def _view_case(write):
    def build():
        torch.manual_seed(0)
        return ViewWrite(write).eval(), (torch.randn(4, 6),), {}
    return build


for _name, _write in VIEW_WRITES.items():
    register(_name, "inplace", "view_write")(_view_case(_write))


class InputClamp(nn.Module):
    """Writes into its input (idempotently, so repeated runs agree)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        x.clamp_(-1.0, 1.0)
        x[:, 0].zero_()  # through a view of the input
        return self.fc(x) + x


@register("input_clamped_in_place", "inplace", "view_write")
def input_clamped_in_place():
    torch.manual_seed(0)
    return InputClamp().eval(), (torch.randn(3, 6).clamp(-1.0, 1.0),), {}


class InputIncrement(nn.Module):
    """``x += 1`` on the input: each run changes the caller's tensor."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        x += 1.0
        return self.fc(x) * x


@register("input_incremented", "inplace", "mutates_input", "irregular")
def input_incremented():
    torch.manual_seed(0)
    return InputIncrement().eval(), (torch.randn(3, 6),), {}


class BufferReassigned(nn.Module):
    """Reassigns a buffer in forward; the output depends only on the input."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.register_buffer("last_mean", torch.zeros(6))

    def forward(self, x):
        h = self.fc(x)
        self.last_mean = h.mean(0).detach()
        return h - self.last_mean


@register("buffer_reassigned", "buffer")
def buffer_reassigned():
    torch.manual_seed(0)
    return BufferReassigned().eval(), (torch.randn(4, 6),), {}


class BNCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.act(self.bn(self.conv(x)))
        return self.head(h.mean((2, 3)))


@register("bn_cnn_train", "cnn", "buffer", "inplace", "train")
def bn_cnn_train():
    torch.manual_seed(0)
    model = BNCNN()
    _randomize_bn(model)
    return model.train(), (torch.randn(4, 3, 6, 6),), {}


@register("resnet_block_train", "cnn", "buffer", "inplace", "train")
def resnet_block_train():
    torch.manual_seed(0)
    model = nn.Sequential(BasicBlock(3, 4, stride=2), BasicBlock(4, 4))
    _randomize_bn(model)
    return model.train(), (torch.randn(2, 3, 8, 8),), {}


class EmptyFilled(nn.Module):
    """``torch.empty``/``empty_like`` filled in place before being read."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        h = self.fc(x)
        buf = torch.empty(x.shape[0], 8)
        buf.fill_(0.5)
        buf[:, 1:7].copy_(h)
        like = torch.empty_like(h)
        like.copy_(h * 2.0)
        return buf[:, :6] + like


@register("empty_copied_into", "inplace", "internal_tensor", "uninitialised", "irregular")
def empty_copied_into():
    torch.manual_seed(0)
    return EmptyFilled().eval(), (torch.randn(3, 6),), {}
