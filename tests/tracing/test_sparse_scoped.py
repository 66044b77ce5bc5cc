"""tl.record(..., sparse=True) with save=tl.in_module(a) & <function test>: a function mode
entered only while module ``a`` runs keeps exactly the payloads full capture keeps, op for
op and in order, and leaves nothing behind on the model or on torch's mode stack."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lens as tl
from lens.capture.engine import Recorder
from lens.capture.scoped import ScopedRun
from lens.selectors import InModule, Selector
from tests.helpers import build
from tests.models import get


def _full(model: nn.Module, args: tuple[Any, ...], sel: Selector, address: str,
          **opts: Any) -> list[tuple[str, str, torch.Tensor]]:
    """(call key, function name, payload) of each op a full trace keeps for the scoped
    selector ``sel`` (the innermost call of ``address`` the op ran in), in call order."""
    torch.manual_seed(0)
    tr = tl.trace(model, *args, save=sel, keep_orphans=True, **opts)
    found = []
    for op in tr.ops:
        if op.payload is None or not sel(op):
            continue
        call = [c for c in op.record.module_ctx if c.address == address][-1]
        found.append((call.key, op.func_name, op.payload))
    return found


def _sparse(model: nn.Module, args: tuple[Any, ...], sel: Selector, **opts: Any) -> Any:
    torch.manual_seed(0)
    return tl.record(model, *args, save=sel, sparse=True, **opts)


def _assert_same(rec: Any, expected: list[tuple[str, str, torch.Tensor]]) -> None:
    got = [(k.call, k.name, k.tensor) for k in rec.kept_ops]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for (_, _, a), (_, _, b) in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and a.requires_grad == b.requires_grad
        assert torch.equal(a, b)


@pytest.fixture
def engine_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of the full engine's mode; checks the scoped mode sees only calls
    made while a scope module runs."""
    seen = [0]
    full, scoped = Recorder.__torch_function__, ScopedRun.__torch_function__

    def probe(self: Any, *a: Any, **k: Any) -> Any:
        seen[0] += 1
        return full(self, *a, **k)

    def scoped_probe(self: ScopedRun, *a: Any, **k: Any) -> Any:
        assert self.calls.running, "the scoped mode saw a call outside every scope module"
        return scoped(self, *a, **k)

    monkeypatch.setattr(Recorder, "__torch_function__", probe)
    monkeypatch.setattr(ScopedRun, "__torch_function__", scoped_probe)
    return seen


CASES = [
    ("gpt2_tiny", tl.in_module("transformer.h.1") & tl.func("gelu", "tanh")),
    ("gpt2_tiny", tl.in_module("transformer.h.0") & (tl.func("add") | tl.func("softmax"))),
    ("alexnet_small", tl.in_module("features") & tl.func("relu", "conv2d")),
    ("resnet_block", tl.in_module("layer2") & tl.func("add", "relu", "batchnorm")),
    ("rnn_cell_loop", tl.in_module("cell") & tl.func("lstmcell")),  # 5 calls, tuple outputs
    ("albert_shared", tl.in_module("block") & tl.func("softmax", "gelu")),  # one block, reused
]


@pytest.mark.parametrize(("name", "sel"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_scoped_ops_equal_full_capture(name: str, sel: Selector,
                                       engine_calls: list[int]) -> None:
    model, args, kwargs = build(get(name))
    assert not kwargs
    address = next(p.address for p in sel.walk() if isinstance(p, InModule))
    expected = _full(model, args, sel, address)
    before = engine_calls[0]
    rec = _sparse(model, args, sel)
    assert engine_calls[0] == before  # the full engine never ran
    assert expected and len({e[0] for e in expected}) >= 1
    _assert_same(rec, expected)
    assert [t for _, t in rec.ops_in(address)] == [k.tensor for k in rec.kept_ops]
    first = expected[0][0]
    assert len(rec.ops_in(first)) == sum(e[0] == first for e in expected)
    assert torch.equal(leaf(rec.output), leaf(model(*args)))


def leaf(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def test_payload_options_apply_as_in_the_full_path() -> None:
    model, args, _ = build(get("alexnet_small"))
    sel = tl.in_module("features") & tl.func("relu")
    for opts in ({"detach": True, "dtype": torch.float64}, {}, {"device": "cpu"}):
        _assert_same(_sparse(model, args, sel, **opts), _full(model, args, sel, "features",
                                                              **opts))
    assert _sparse(model, args, sel).kept_ops[0].tensor.requires_grad  # as full capture


def test_module_outputs_and_scoped_ops_in_one_run() -> None:
    model, args, _ = build(get("gpt2_tiny"))
    scoped = tl.in_module("transformer.h.1") & tl.func("gelu", "tanh")
    rec = _sparse(model, args, tl.module("transformer.h.0.mlp") | scoped)
    _assert_same(rec, _full(model, args, scoped, "transformer.h.1"))
    hooked: list[torch.Tensor] = []
    h = model.get_submodule("transformer.h.0.mlp").register_forward_hook(
        lambda m, a, out: hooked.append(out.detach().clone()))
    try:
        model(*args)
    finally:
        h.remove()
    assert torch.equal(rec["transformer.h.0.mlp:1"][0], hooked[0])
    with pytest.raises(tl.LookupKeyError, match=r"ops_in\('transformer.h.1:1'\)"):
        rec["transformer.h.1:1"]
    with pytest.raises(tl.LookupKeyError, match="No op was kept"):
        rec.ops_in("transformer.h.0:1")


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, depth: int = 0) -> torch.Tensor:
        y = F.gelu(self.fc(x)) + 1
        return self(y, depth - 1) if depth > 0 else torch.tanh(y)


class _Shared(nn.Module):
    """One block under two names, called three times, once recursing into itself."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _Block()
        self.b = self.a
        self.boom = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        x = self.b(x, 2)
        if self.boom:
            raise RuntimeError("boom")
        return self.a(x.relu_())


def _clean(model: nn.Module) -> bool:
    return torch._C._len_torch_function_stack() == 0 and not any(
        m._forward_hooks or m._forward_pre_hooks or m._forward_hooks_always_called
        for m in model.modules())


def test_shared_reentrant_module_and_cleanup_on_error() -> None:
    torch.manual_seed(0)
    model, x = _Shared(), torch.randn(3, 6)
    sel = tl.in_module("a") & tl.func("gelu", "tanh", "relu")
    expected = _full(model, (x,), sel, "a")
    rec = _sparse(model, (x,), sel)
    _assert_same(rec, expected)
    assert [k.call for k in rec.kept_ops if k.name == "tanh"] == ["a:1", "a:4", "a:5"]
    assert _clean(model)
    model.boom = True
    with pytest.raises(RuntimeError, match="boom"):
        _sparse(model, (x,), sel)
    assert _clean(model)
    model.a.fc.register_forward_hook(_raise)  # raises inside the scope module
    with pytest.raises(RuntimeError, match="inner"):
        _sparse(model, (x,), sel)
    assert torch._C._len_torch_function_stack() == 0
    model.a.fc._forward_hooks.clear()
    assert _clean(model)


def _raise(*_: Any) -> None:
    raise RuntimeError("inner")


class _SpawnBlock(_Block):
    """On its first call, runs itself in another thread while its own call is running
    (so while the scope's mode is on this thread's stack)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def forward(self, x: torch.Tensor, depth: int = 0) -> torch.Tensor:
        out = super().forward(x)
        if not self.seen:
            self.seen.append(None)

            def other() -> None:
                self.seen.append((torch._C._len_torch_function_stack(), self(x)))

            t = threading.Thread(target=other)
            t.start()
            t.join()
        return out


def test_another_threads_forward_is_unaffected() -> None:
    torch.manual_seed(0)
    model, x = nn.Sequential(_SpawnBlock()), torch.randn(2, 6)
    rec = _sparse(model, (x,), tl.in_module("0") & tl.func("gelu", "tanh"))
    assert [(k.call, k.name) for k in rec.kept_ops] == [("0:1", "gelu"), ("0:1", "tanh")]
    depth, out = model[0].seen[1]
    assert depth == 0  # the other thread never saw the mode
    assert torch.equal(out, rec.output) and torch.equal(rec.kept_ops[1].tensor, out)
    assert _clean(model)


@pytest.mark.parametrize("save", [
    tl.in_module("features"), tl.in_module("features") & ~tl.func("relu"),
    tl.in_module("features") & tl.func("constant"), tl.func("relu"),
    tl.in_module("features") & tl.selectors.index(3), tl.in_module("features") | tl.func("relu"),
])
def test_selectors_not_decidable_inside_the_module_are_refused(save: Selector) -> None:
    model, args, _ = build(get("alexnet_small"))
    with pytest.raises(tl.CaptureError, match="sparse=True"):
        tl.record(model, *args, save=save, sparse=True)
    with pytest.raises(tl.CaptureError, match="halt"):
        tl.record(model, *args, save=tl.module("features"),
                  halt=tl.in_module("features") & tl.func("relu"), sparse=True)
    assert _clean(model)
