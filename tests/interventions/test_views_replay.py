"""Replay re-applies writes through views, exactly, and never touches the model's state.

For every model that writes in place (through views, into its input, into BatchNorm
running statistics, into ``torch.empty`` buffers; HF mixture-of-experts routing):

- an identity edit on the first floating op recomputes everything downstream and
  reproduces the output bit for bit;
- a real edit (upstream of the writes, so replay recomputes through them, and downstream)
  equals the same edit made with register_forward_hook, and a live tl.run;
- replay, and re-executing every op as tl.validate does, leave the model's parameters and
  buffers and the trace's payloads bit-identical;
- edits replay cannot reproduce (a view a later write goes through, a refresh op) are
  refused with an error that says what to edit instead.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import lens as tl
import lens.interventions as li
from lens.errors import ReplayError
from lens.replay.interpreter import Interpreter, is_stochastic
from tests.helpers import build
from tests.interventions._truth import run_with_hook
from tests.interventions._zoo import same, severing
from tests.models import ZOO, cases

CASES = [c.name for c in cases(include=("inplace",), exclude=("bench",))
         if c.tags & {"view_write", "train", "mutates_input", "moe", "internal_tensor"}]
CASES += ["buffer_reassigned"]


def _setup(name: str) -> tuple[Any, Any, Any]:
    return build(ZOO[name])


def _fresh(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Inputs copied for each run (some models write into their input)."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _capture(model: Any, args: Any, kwargs: Any) -> Any:
    torch.manual_seed(0)
    return tl.trace(model, *_fresh(args), input_kwargs=kwargs, intervention_ready=True)


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model: Any, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], v)
                                              for k, v in before.items())


def _payloads(tr: Any) -> list[tuple[Any, torch.Tensor | None]]:
    return [(op.payload, None if op.payload is None else op.payload.clone()) for op in tr.ops]


def _unchanged(tr: Any, snapshot: list[tuple[Any, torch.Tensor | None]]) -> bool:
    # bit-for-bit, NaN included: torch.empty's payload is whatever memory it got (freed
    # traces hand their memory straight back), and NaN != NaN
    return all(op.payload is p and (v is None or _same_bits(op.payload, v))
               for op, (p, v) in zip(tr.ops, snapshot, strict=True))


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype.is_floating_point or a.dtype.is_complex:
        return a.shape == b.shape and bool(torch.equal(a.isnan(), b.isnan())) and bool(
            torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))
    return torch.equal(a, b)


def _floating_module_calls(tr: Any) -> list[Any]:
    cut = severing(tr)
    found = []
    for call in tr.module_calls:
        outs = [tr.op_at_call(i) for i in call.output_ops]
        if outs and all(o is not None and o.dtype is not None and o.dtype.is_floating_point
                        and o.call_index not in cut for o in outs):
            found.append(call)
    return found


@pytest.mark.parametrize("name", CASES)
def test_identity_edit_on_the_first_floating_op_reproduces_the_output(name: str) -> None:
    model, args, kwargs = _setup(name)
    src = _capture(model, args, kwargs)
    cut = severing(src)
    first = next(op for op in src.ops if op.kind == "op" and op.call_index not in cut
                 and op.dtype is not None and op.dtype.is_floating_point)
    state, snapshot = _state(model), _payloads(src)
    fork = src.fork().intervene(first.label, li.action(lambda t, op: t.clone())).replay()
    assert same(fork.output, src.output)
    recomputed = [op for op in fork.ops if op.index > first.index and op.kind == "op"
                  and op.payload is not src.op_at_call(op.call_index).payload]
    assert recomputed, "the identity edit must recompute what lies downstream"
    assert _same_state(model, state) and _unchanged(src, snapshot)


@pytest.mark.parametrize("name", CASES)
def test_re_executing_every_op_never_writes_into_the_model_or_the_trace(name: str) -> None:
    model, args, kwargs = _setup(name)
    src = _capture(model, args, kwargs)
    state, snapshot = _state(model), _payloads(src)
    interp = Interpreter(src)
    checked = 0
    for op in src.ops:  # what tl.validate does per op
        if op.kind == "op" and not is_stochastic(op):
            interp.call_function(op)
            checked += 1
    assert checked and _same_state(model, state) and _unchanged(src, snapshot)


@pytest.mark.parametrize("name", CASES)
def test_real_edits_replayed_equal_hooks_and_live_runs(name: str) -> None:
    model, args, kwargs = _setup(name)
    src = _capture(model, args, kwargs)
    calls = _floating_module_calls(src)
    assert calls, "every case has a module with floating outputs"
    for call, edit in ((calls[0], li.scale(0.5)), (calls[-1], li.clamp(min=-0.1, max=0.2))):
        expected = run_with_hook(model, _fresh(args), kwargs, call.address, edit,
                                 call=call.call_num)
        torch.manual_seed(0)
        live = li.run(model, *_fresh(args), input_kwargs=kwargs,
                      intervene=li.when(call.key, edit))
        state = _state(model)  # runs of the model may move its state; replay may not
        fork = src.fork().intervene(call.key, edit).replay()
        assert _same_state(model, state)
        assert same(fork.output, expected), call.key
        assert same(live, expected), call.key


@pytest.mark.parametrize("name", [n for n in CASES if "view_write" in ZOO[n].tags])
def test_edits_that_would_cut_a_view_off_its_storage_are_refused(name: str) -> None:
    model, args, kwargs = _setup(name)
    src = _capture(model, args, kwargs)
    refresh = next(op for op in src.ops if op.func_name == "refresh")
    with pytest.raises(ReplayError, match="not a call the model made"):
        src.fork().intervene(refresh.label, li.scale(2.0)).replay()
    views = [src.op_at_call(ci) for ci in refresh.kwargs["views"]
             if src.op_at_call(ci) is not None and src.op_at_call(ci).func_name != "refresh"]
    for view in views:
        with pytest.raises(ReplayError, match="a view that ties"):
            src.fork().intervene(view.label, li.scale(2.0)).replay()
    assert views or name == "input_clamped_in_place"


def test_an_edit_upstream_of_a_view_write_is_recomputed_through_it() -> None:
    model, args, _ = _setup("view_setitem")
    src = _capture(model, args, {})
    edit = li.steer(torch.linspace(-1.0, 1.0, 6), alpha=0.3)
    expected = run_with_hook(model, args, {}, "fc", lambda v: edit(v))
    fork = src.fork().intervene("fc", edit).replay()
    assert same(fork.output, expected)
    assert not same(fork.output, src.output)  # the edit mattered
    refresh = next(op for op in fork.ops if op.func_name == "refresh")
    assert refresh.out is not src[refresh.label].out  # the write was re-applied
    assert torch.equal(refresh.out[0], torch.ones(6))  # h[0][:] = 1 survives the edit
