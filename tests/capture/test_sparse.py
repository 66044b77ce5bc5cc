"""Selectors decided at module boundaries run on forward hooks alone, with the results of
full capture: tl.run outputs and tl.record(..., sparse=True) payloads equal the full
path's, and no op is recorded on the way (the function mode is never entered)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lens as tl
from lens.capture.engine import Recorder
from lens.selectors import Module
from lens.selectors._scope import scope_of
from tests.helpers import build, leaves
from tests.interventions._zoo import same
from tests.models import get

CASES = ["alexnet_small", "resnet_block", "tiny_transformer_2block", "identity_module",
         "multi_output", "nested_demo"]
_MODELS: dict[str, Any] = {}


def _case(name: str) -> tuple[Any, tuple[Any, ...], dict[str, Any], list[str]]:
    """Model, inputs, and the keys ('a:n') of module calls returning only floats."""
    if name not in _MODELS:
        model, args, kwargs = build(get(name))
        torch.manual_seed(0)
        tr = tl.trace(model, *args, input_kwargs=kwargs, save=False)
        keys = []
        for call in tr.module_calls:
            outs = [tr.op_at_call(i) for i in call.output_ops]
            if outs and all(o is not None and o.dtype is not None and o.dtype.is_floating_point
                            for o in outs):
                keys.append(call.key)
        _MODELS[name] = (model, args, kwargs, keys)
    return _MODELS[name]  # type: ignore[no-any-return]


@pytest.fixture
def mode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the ops the function mode intercepts (0: the mode was never entered)."""
    seen = [0]
    real = Recorder.__torch_function__

    def probe(self: Any, *a: Any, **k: Any) -> Any:
        seen[0] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(Recorder, "__torch_function__", probe)
    return seen


@st.composite
def module_selectors(draw: Any, keys: list[str]) -> Any:
    picked = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True))
    parts = [tl.module(k if draw(st.booleans()) else k.rpartition(":")[0]) for k in picked]
    sel = parts[0]
    for p in parts[1:]:
        sel = sel | p
    return sel


ACTIONS = [tl.zero_ablate(), tl.scale(0.5), tl.zero_ablate().at[0], tl.clamp(max=0.1)]
_SETTINGS = settings(max_examples=10, derandomize=True, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow,
                                            HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(data=st.data())
def test_run_on_hooks_equals_full_capture(data: Any, mode_calls: list[int]) -> None:
    model, args, kwargs, keys = _case(data.draw(st.sampled_from(CASES)))
    sel = data.draw(module_selectors(keys))
    assert scope_of(sel).kind == "boundary"
    rule = tl.when(sel, data.draw(st.sampled_from(ACTIONS)))
    torch.manual_seed(1)
    full = tl.trace(model, *args, input_kwargs=kwargs, intervene=rule, save=False).output
    before = mode_calls[0]
    torch.manual_seed(1)
    out = tl.run(model, *args, input_kwargs=kwargs, intervene=rule)
    assert mode_calls[0] == before  # the hook path: no op went through the function mode
    assert same(out, full)


@_SETTINGS
@given(data=st.data())
def test_sparse_record_equals_full_capture(data: Any, mode_calls: list[int]) -> None:
    model, args, kwargs, keys = _case(data.draw(st.sampled_from(CASES)))
    sel = data.draw(module_selectors(keys))
    halt = data.draw(st.none() | module_selectors(keys))
    torch.manual_seed(1)
    full = tl.trace(model, *args, input_kwargs=kwargs, save=sel, halt=halt)
    atoms = {node.address for node in sel.walk() if isinstance(node, Module)}
    expected: dict[str, list[torch.Tensor]] = {}
    for call in full.module_calls:
        if call.address not in atoms and call.key not in atoms:
            continue
        found = (full.op_at_call(i) for i in dict.fromkeys(call.output_ops))
        outs = [o for o in found if o is not None]
        kept = [o.payload for o in outs if o.payload is not None]
        if kept:
            expected[call.key] = kept
    before = mode_calls[0]
    torch.manual_seed(1)
    rec = tl.record(model, *args, input_kwargs=kwargs, save=sel, halt=halt, sparse=True)
    assert mode_calls[0] == before
    assert rec.halted == full.halted
    assert list(rec.payloads) == list(expected)
    for key, tensors in expected.items():
        assert len(rec[key]) == len(tensors)
        assert all(torch.equal(a, b) for a, b in zip(rec[key], tensors, strict=True))
    if not full.halted:
        assert same(rec.output, full.output)


def test_scope_of_sorts_selectors_by_mechanism() -> None:
    assert scope_of(tl.module("a") | tl.module("b.c:2")).calls == {
        "a": None, "b.c": frozenset({2})}
    assert scope_of(tl.nothing()).kind == "boundary"
    scoped = scope_of(tl.in_module("a") & tl.func("gelu") & ~tl.func("add"))
    assert (scoped.kind, scoped.modules) == ("scoped", frozenset({"a"}))
    assert scope_of(tl.in_module("a") | tl.module("b")).modules == frozenset({"a", "b"})
    for sel in (tl.func("relu"), ~tl.module("a"), tl.label("relu_1_1"),
                tl.module("a") & tl.func("relu"), tl.in_module("a") & tl.in_module("b"),
                tl.in_module("a") & tl.followed_by(tl.func("relu")), tl.module("a") | tl.func("x")):
        assert scope_of(sel).kind == "full", sel


def test_run_keeps_the_full_path_for_actions_that_read_the_op(mode_calls: list[int]) -> None:
    model, args, kwargs, keys = _case("alexnet_small")
    rule = tl.when(tl.module(keys[0]), tl.noise(0.1))  # noise seeds from the op's call index
    full = tl.trace(model, *args, input_kwargs=kwargs, intervene=rule, save=False).output
    out = tl.run(model, *args, input_kwargs=kwargs, intervene=rule)
    assert mode_calls[0] > 0
    assert same(out, full)


def test_sparse_rules_that_match_nothing_raise_as_the_full_path() -> None:
    model, args, kwargs, keys = _case("alexnet_small")
    address = keys[0].rpartition(":")[0]
    rule = tl.when(f"{address}:9", tl.zero_ablate())
    with pytest.raises(tl.InterventionError, match="matched no op"):
        tl.run(model, *args, input_kwargs=kwargs, intervene=rule)
    with pytest.warns(tl.InterventionWarning):
        tl.run(model, *args, input_kwargs=kwargs,
               intervene=tl.when(f"{address}:9", tl.zero_ablate(), strict=False))


def test_sparse_record_refuses_what_needs_ops_and_says_so() -> None:
    model, args, kwargs, keys = _case("alexnet_small")
    address = keys[0].rpartition(":")[0]
    with pytest.raises(tl.CaptureError, match="sparse=True"):
        tl.record(model, *args, save=tl.func("relu"), sparse=True)
    rec = tl.record(model, *args, save=address, sparse=True)
    assert rec[address] == [rec[keys[0]]]
    with pytest.raises(tl.CaptureError, match="to_trace"):
        rec.to_trace()
    with pytest.raises(tl.LookupKeyError, match="module call"):
        rec["nope:1"]


def test_hooks_are_removed_when_the_forward_raises() -> None:
    model, args, kwargs, keys = _case("alexnet_small")
    address = keys[0].rpartition(":")[0]
    sub = model.get_submodule(address)

    def boom(m: Any, a: Any, out: Any) -> None:
        raise RuntimeError("boom")

    h = sub.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            tl.run(model, *args, intervene=tl.when(address, tl.zero_ablate()))
    finally:
        h.remove()
    assert not sub._forward_hooks and not sub._forward_pre_hooks
    assert leaves(tl.run(model, *args, intervene=tl.when(address, tl.scale(1.0))))
