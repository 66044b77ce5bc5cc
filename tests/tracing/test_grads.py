"""save_grads= and trace.log_backward: per-op gradients, checked against plain PyTorch
(register_full_backward_hook on modules, retain_grad on tensors, hand derivatives)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import lens as tl
from lens.tracing.grads import GradCapture
from tests.helpers import build, leaves
from tests.models import get


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def _mlp() -> tuple[nn.Module, tuple[Any, ...]]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 3)), (torch.randn(5, 4),)


def _cnn() -> tuple[nn.Module, tuple[Any, ...]]:
    torch.manual_seed(0)
    return SmallCNN(), (torch.randn(2, 2, 8, 8),)


def _zoo(name: str):
    def make() -> tuple[nn.Module, tuple[Any, ...]]:
        model, args, _ = build(get(name))
        return model, args
    return make


MODELS = {"mlp": _mlp, "cnn": _cnn, "recurrent_demo": _zoo("recurrent_demo"),
          "simple_recurrent": _zoo("simple_recurrent"), "lstm": _zoo("lstm")}


def _first(out: Any) -> torch.Tensor:
    return leaves(out)[0]


def _module_grads(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, list[torch.Tensor]],
                                                            torch.Tensor]:
    """grad_output of every module call, in call order, from full backward hooks."""
    grads: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_full_backward_hook(
                lambda m, gi, go, name=name: grads.setdefault(name, []).insert(0, go[0])))
    try:
        x = x.detach().clone().requires_grad_(True)
        _first(model(x)).sum().backward()
    finally:
        for h in handles:
            h.remove()
    assert x.grad is not None
    return grads, x.grad


@pytest.mark.parametrize("name", list(MODELS))
def test_module_output_grads_equal_full_backward_hooks(name):
    model, (x,) = MODELS[name]()
    expected, x_grad = _module_grads(model, x)
    xin = x.detach().clone().requires_grad_(True)
    tr = tl.trace(model, xin, save_grads=True)
    tr.log_backward(_first(tr.output).sum())
    checked = 0
    for address, per_call in expected.items():
        calls = tr.modules[address].calls
        assert len(calls) == len(per_call), address  # one gradient per pass
        for call, g in zip(calls, per_call, strict=True):
            if g is None:
                continue
            op = call.outputs[0]
            assert op.grad is not None and torch.equal(op.grad, g), (address, call.key)
            checked += 1
    assert checked >= 2
    assert torch.equal(tr["input_1"].grad, x_grad)


class Probe(nn.Module):
    """An MLP that, when asked, keeps its intermediate tensors with retain_grad()."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)
        self.kept: list[torch.Tensor] | None = None

    def forward(self, x):
        steps = []
        h = self.fc1(x)
        steps.append(h)
        a = torch.relu(h)
        steps.append(a)
        b = a * 2 + 1
        steps.append(b)
        y = self.fc2(b)
        steps.append(y)
        if self.kept is not None:
            for t in steps:
                t.retain_grad()
            self.kept.extend(steps)
        return y


def test_op_grads_equal_retain_grad_on_the_same_tensors():
    torch.manual_seed(0)
    model, x = Probe(), torch.randn(3, 4)
    model.kept = []
    (model(x) ** 2).sum().backward()
    kept = model.kept
    model.kept = None
    model.zero_grad()
    tr = tl.trace(model, x, save_grads=True)
    tr.log_backward((tr.output ** 2).sum())
    ops = [tr["linear_1_1"], tr["relu_1_2"], tr["add_1_4"], tr["linear_2_5"]]
    for op, t in zip(ops, kept, strict=True):
        assert torch.equal(op.grad, t.grad), op.label
    assert torch.equal(tr["mul_1_3"].grad, kept[2].grad)  # d(b)/d(a*2) is the identity


def test_selectors_narrow_which_ops_get_gradients():
    model, (x,) = _mlp()
    full = tl.trace(model, x, save_grads=True)
    full.log_backward(full.output.sum())
    for spec, expected in [
        (tl.func("relu"), {"relu_1_4"}),
        (tl.module("2"), {"linear_2_3"}),              # decided when the gradient arrives
        (["linear_3_5", "tanh_1_2"], {"linear_3_5", "tanh_1_2"}),   # final labels
        (tl.in_module("0") | tl.func("tanh"), {"linear_1_1", "tanh_1_2"}),
    ]:
        tr = tl.trace(model, x, save_grads=spec)
        tr.log_backward(tr.output.sum())
        got = {op.label for op in tr.ops if op.grad is not None}
        assert got == expected, spec
        for label in got:
            assert torch.equal(tr[label].grad, full[label].grad)


def test_several_backward_calls_accumulate_like_tensor_grad():
    model, (x,) = _mlp()
    tr = tl.trace(model, x, save_grads=True)
    loss = tr.output.sum()
    tr.log_backward(loss, retain_graph=True)
    once = {op.label: op.grad.clone() for op in tr.ops if op.grad is not None}
    tr.log_backward(loss)
    for label, g in once.items():
        assert torch.equal(tr[label].grad, g + g), label
    weight = model[0].weight.grad  # .grad of the parameters accumulated the same way
    assert weight is not None


def test_inplace_ops_get_the_gradient_of_the_value_they_produced():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            y = self.fc(x)
            y.mul_(3.0)
            return y

    tr = tl.trace(Scale(), torch.randn(2, 3), save_grads=True)
    tr.log_backward(tr.output.sum())
    assert torch.equal(tr["mul_1_2"].grad, torch.ones(2, 3))
    assert torch.equal(tr["linear_1_1"].grad, torch.full((2, 3), 3.0))


def test_log_backward_without_save_grads_or_graph_says_what_to_do():
    model, (x,) = _mlp()
    tr = tl.trace(model, x)
    with pytest.raises(tl.PayloadError, match="save_grads=True"):
        tr.log_backward(tr.output.sum())
    detached = tl.trace(model, x, save_grads=True, detach=True)
    with pytest.raises(tl.PayloadError, match="requires grad"):
        detached.log_backward(detached[detached.output_layers[0]].out.sum())
    with torch.no_grad():
        frozen = tl.trace(model, x, save_grads=True)
    assert all(op.grad is None for op in frozen.ops)


def test_grad_capture_is_an_interceptor_returning_values_unchanged():
    cap = GradCapture(tl.func("relu"))
    model, (x,) = _mlp()
    plain = model(x)
    tr = tl.trace(model, x, save_grads=tl.func("relu"))
    assert torch.equal(tr.output, plain)
    assert "relu" in repr(cap)
    assert all(op.grad is None for op in tr.ops)  # nothing until backward runs
