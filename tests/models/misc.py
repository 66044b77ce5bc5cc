"""Miscellaneous tricky cases: in-place ops, dict I/O, multi-output ops,
identity modules, loop-grouping ground truth, conditional branches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register


class ResidualMLP(nn.Module):
    """``x = relu(linear(x)) + x``, ``depth`` times (not in the zoo): each layer saves
    three activations of ``x``'s size, so the payload volume is set by width and depth
    (streaming-capture tests and the streaming benchmark)."""

    def __init__(self, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers:
            x = torch.relu(lin(x)) + x
        return x


class SmallMLP(nn.Module):
    """``fc2(relu(fc1(x)))``, 4 -> 8 -> 3 (not in the zoo): the smallest model with two
    modules and an op between them, for tests of live rules."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class InplaceOps(nn.Module):
    """In-place ops on tensors computed inside the model (never on the input)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.fc(x)
        h.add_(1)
        h.relu_()
        h[:, 0] = 0  # __setitem__ on an internal tensor
        h.masked_fill_(h > 1.5, 1.5)
        z = torch.zeros(x.shape[0], 6)  # internal, buffer-free tensor
        z[:, 1:4] = h[:, 1:4]  # setitem with a tensor value
        z.mul_(2)
        z += h
        out = self.act(z - 1.0)  # nn.ReLU(inplace=True)
        return out


class DictIO(nn.Module):
    """Dict input, default & keyword-only args, nested dict/tuple/list output."""

    def __init__(self):
        super().__init__()
        self.fa = nn.Linear(4, 4)
        self.fb = nn.Linear(4, 4)

    def forward(self, inputs: dict, scale: float = 2.0, *, mask=None):
        a = self.fa(inputs["a"])
        b = self.fb(inputs["b"])
        s = (a + b) * scale
        if mask is not None:
            s = s * mask
        return {"sum": s, "pair": (a, [b, s.sum(dim=-1)])}


class MultiOutput(nn.Module):
    """Ops that return tuples: split, chunk, max(dim) (values+indices), unbind."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        a, b = torch.split(x, 4, dim=1)
        c1, c2 = torch.chunk(self.fc(x), 2, dim=1)
        vals, idx = x.max(dim=1)
        rows = torch.unbind(a, dim=0)
        out = a * c1 + b * c2
        out = out + vals.unsqueeze(1) + idx.unsqueeze(1).float()
        out = out + torch.stack(rows[::-1], dim=0)
        return out


class Passthrough(nn.Module):
    """A custom module that returns its input object unchanged."""

    def forward(self, x):
        return x


class IdentityModules(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.ident = nn.Identity()
        self.passthrough = Passthrough()
        self.drop = nn.Dropout(0.5)  # no-op in eval mode
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        x = self.ident(x)  # identity directly on the model input
        h = self.fc1(x)
        h = self.passthrough(h)
        h = self.drop(h)
        h = self.ident(h)
        return self.fc2(torch.relu(h))


def _xyz(x):
    return F.relu(x * 3 + 1)


class XYZ_A_XYZ(nn.Module):
    """XYZ, a different op A, XYZ again: the two XYZ must NOT be loop-grouped."""

    def forward(self, x):
        x = _xyz(x)
        x = torch.sin(x)  # A
        x = _xyz(x)
        return x


class XYZ_XYZ_XYZ(nn.Module):
    """The same XYZ three times back to back: grouped as 3 passes."""

    def forward(self, x):
        x = _xyz(x)
        x = _xyz(x)
        x = _xyz(x)
        return x


class ConditionalElse(nn.Module):
    """Data-dependent if whose *else* branch is taken for the zoo input."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def forward(self, x):
        if torch.sum(x) > 0:  # noqa: SIM108
            x = x * 2
        else:
            x = torch.exp(x) - 1
        return self.fc(x)


@register("inplace_ops", "inplace", "internal_tensor")
def inplace_ops():
    torch.manual_seed(0)
    model = InplaceOps().eval()
    return model, (torch.randn(4, 6),), {}


@register("dict_io", "dict_io", "kwargs")
def dict_io():
    torch.manual_seed(0)
    model = DictIO().eval()
    inputs = {"a": torch.randn(3, 4), "b": torch.randn(3, 4)}
    mask = (torch.rand(3, 4) > 0.3).float()
    return model, (inputs,), {"mask": mask}


@register("multi_output", "multi_output")
def multi_output():
    torch.manual_seed(0)
    model = MultiOutput().eval()
    return model, (torch.randn(4, 8),), {}


@register("identity_module", "identity")
def identity_module():
    torch.manual_seed(0)
    model = IdentityModules().eval()
    return model, (torch.randn(4, 6),), {}


@register("xyz_a_xyz", "grouping", "param_free")
def xyz_a_xyz():
    torch.manual_seed(0)
    return XYZ_A_XYZ().eval(), (torch.randn(3, 4),), {}


@register("xyz_xyz_xyz", "grouping", "param_free")
def xyz_xyz_xyz():
    torch.manual_seed(0)
    return XYZ_XYZ_XYZ().eval(), (torch.randn(3, 4),), {}


@register("conditional_else", "conditional")
def conditional_else():
    torch.manual_seed(0)
    model = ConditionalElse().eval()
    return model, (-torch.rand(5, 5),), {}
