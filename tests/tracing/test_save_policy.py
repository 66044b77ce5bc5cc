"""Selective saving (save=), halting (halt=) and payload options, on every zoo model.

Ground truth: the selector evaluated on the full trace (save=True) of the same input; a
sparse capture must keep exactly the payloads of the ops it matches (plus the graph
sources lens always keeps: inputs, buffers, constants), each equal to the full payload.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import lens as tl
from lens.selectors import Selector, coerce
from lens.tracing.record import pluck
from tests.helpers import UNINITIALISED, build, regular_cases

CASES = regular_cases()
FORCED = {"input", "buffer", "constant"}


def _trace(case: Any, **options: Any) -> tl.Trace:
    model, args, kwargs = build(case)
    torch.manual_seed(0)
    return tl.trace(model, *args, input_kwargs=kwargs, **options)


def _addresses(case: Any) -> list[str]:
    model, _, _ = build(case)
    return [n for n, _ in model.named_modules() if n]


def _specs(full: tl.Trace, addresses: list[str]) -> list[Any]:
    used = [a for a in addresses if a in full]  # modules that returned a recorded tensor
    mid = full.ops[len(full.ops) // 2]
    specs: list[Any] = [
        tl.func("relu"),
        tl.func("linear", "conv2d", "add"),
        tl.func("linear", "conv2d") & tl.followed_by(tl.everything()),
        ~tl.func("getitem") & tl.preceded_by(tl.func("linear", "add")),
        # a label substring must occur in this trace (else save= raises): mid's type does
        [mid.label, full.ops[1].label, -2, 1, mid.type],
        mid.short_label if mid.kind == "op" else mid.label,
    ]
    if used:
        specs += [tl.module(used[0]), tl.in_module(used[-1]), [used[0], -1],
                  tl.in_module(used[0]) & tl.followed_by(tl.func("add", "relu"))]
    return specs


def _expected(full: tl.Trace, spec: Any, addresses: list[str]) -> set[str]:
    sel: Selector = coerce(spec, module_addresses=set(addresses)).bind_ordinals(full.ops)
    return {op.label for op in full.ops if sel(op) or op.kind in FORCED}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_sparse_save_keeps_exactly_the_matched_payloads(case):
    full = _trace(case)
    addresses = _addresses(case)
    for spec in _specs(full, addresses):
        sparse = _trace(case, save=spec)
        assert sparse.labels == full.labels, spec
        kept = {op.label for op in sparse.ops if op.payload is not None}
        assert kept == _expected(full, spec, addresses), spec
        for op in sparse.ops:
            if op.payload is not None and op.func_name not in UNINITIALISED:
                assert torch.equal(op.payload, full[op.index].payload), (spec, op.label)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_lookback_window_decides_followed_by_within_the_window(case):
    full = _trace(case)
    window = 4
    spec = tl.func("linear", "conv2d", "add", "relu") & tl.followed_by(tl.everything())
    sparse = _trace(case, save=spec, lookback=window,
                    lookback_payload_policy="detached_raw")
    kept = {op.label for op in sparse.ops if op.payload is not None}
    # A window of n ops sees the children recorded at most n calls later.
    near = {op.label for op in full.ops if op.type in ("linear", "conv2d", "add", "relu")
            and any(c.call_index - op.call_index <= window for c in op.children)}
    forced = {op.label for op in full.ops if op.kind in FORCED}
    assert kept - forced == near - forced
    exact = _trace(case, save=spec)  # no window: decided on the finished pass (exact)
    assert {op.label for op in exact.ops if op.payload is not None} >= kept


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_halt_stops_right_after_the_first_match(case):
    full = _trace(case)
    ops = [op for op in full.ops if op.kind == "op"]
    if not ops:
        pytest.skip("no executed op")
    target = ops[len(ops) // 2]
    for sel in (tl.func(target.func_name),
                tl.in_module(target.module) if target.module else None):
        if sel is None:
            continue
        halted = _trace(case, halt=sel)
        assert halted.halted and not halted.output_layers
        first = min(op.call_index for op in full.ops if sel(op) and op.kind == "op")
        matched = [op for op in halted.ops if op.kind == "op" and sel(op)]
        assert matched and matched[0].call_index == first, sel
        stop_call = matched[0].call_id
        assert all(op.call_id <= stop_call for op in halted.ops if op.kind == "op"), sel
        compared = 0
        for op in halted.ops:  # everything up to the halt equals the full pass
            ref = full.op_at_call(op.call_index)
            if ref is not None and op.payload is not None \
                    and op.func_name not in UNINITIALISED:
                assert torch.equal(op.payload, ref.payload), op.label
                compared += 1
        assert compared >= 2


def test_module_halt_stops_after_the_module_returns():
    case = next(c for c in CASES if c.name == "alexnet_small")
    full = _trace(case)
    halted = _trace(case, halt=tl.module("features"), save=tl.module("features"))
    assert halted.halted
    assert not any(op.module == "classifier" for op in halted.ops)
    assert torch.equal(halted["features"].out, full["features"].out)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pluck_equals_the_full_trace_payload(case):
    full = _trace(case)
    model, args, kwargs = build(case)
    ops = [op for op in full.ops if op.kind == "op"]
    for op in ops[len(ops) // 3:: max(1, len(ops) // 3)]:
        torch.manual_seed(0)
        got = pluck(model, *args, op.label, input_kwargs=kwargs)
        assert torch.equal(got, op.out), op.label
        if op.num_passes > 1:  # a layer label without a pass: its first pass
            torch.manual_seed(0)
            got = pluck(model, *args, op.layer_label, input_kwargs=kwargs)
            assert torch.equal(got, op.layer.passes[0].out), op.layer_label


def test_reading_an_unsaved_payload_says_how_to_capture_it():
    case = next(c for c in CASES if c.name == "alexnet_small")
    sparse = _trace(case, save=tl.func("relu"))
    op = sparse["conv2d_2_4"]
    with pytest.raises(tl.PayloadError, match=r"save=True.*tl\.label\('conv2d_2_4'\).*pluck"):
        _ = op.out
    assert sparse["relu_2_5"].out is not None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_payload_options_detach_device_dtype(case):
    full = _trace(case)
    detached = _trace(case, detach=True)
    moved = _trace(case, device="cpu")
    half = _trace(case, dtype=torch.float16)
    for t in (detached, moved, half):  # payload options never add ops to the graph
        assert t.labels == full.labels
    for f, d, m, h in zip(full.ops, detached.ops, moved.ops, half.ops, strict=True):
        if f.payload is None or f.func_name in UNINITIALISED:
            continue
        assert not d.payload.requires_grad and d.payload.grad_fn is None
        assert torch.equal(d.payload, f.payload.detach())
        assert m.payload.device == torch.device("cpu") and torch.equal(m.payload, f.payload)
        if f.payload.is_floating_point():
            assert h.payload.dtype == torch.float16
            assert torch.equal(h.payload, f.payload.to(torch.float16)), f.label
        else:  # indices and masks keep their dtype: casting would lose values
            assert torch.equal(h.payload, f.payload), f.label
        assert h.dtype == f.dtype  # the recorded metadata is the op's own dtype


def test_a_layer_label_selects_every_pass_of_a_recurrent_layer():
    case = next(c for c in CASES if c.name == "simple_recurrent")
    full = _trace(case)
    layer = full["linear_1_1"]
    assert isinstance(layer, tl.Layer) and len(layer) > 1
    for spec in ("linear_1_1", "linear_1", tl.label("linear_1_1")):
        sparse = _trace(case, save=spec)
        kept = [op.label for op in sparse.ops if op.payload is not None and op.kind == "op"]
        assert kept == [op.label for op in layer], spec
        for op in layer:
            assert torch.equal(sparse[op.label].out, op.out)
    one = _trace(case, save="linear_1_1:2")
    assert [op.label for op in one.ops if op.payload is not None and op.kind == "op"] == [
        "linear_1_1:2"]
