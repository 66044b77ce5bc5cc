"""Zoo helpers for the intervention tests: cases, sites, corrupted inputs, comparisons."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import lens as tl
from tests.helpers import build, leaves
from tests.models import ZooCase, cases

# Irregular cases are checked in tests/replay/test_zoo_exact.py. Actions rotate over the
# cases by position: later additions go last so each earlier case keeps its action.
_NEWER = ("tests.models.mutation", "tests.models.random_modes")
ZOO = sorted(cases(exclude=("bench", "irregular", "mutates_input")),
             key=lambda c: c.build.__module__ in _NEWER or "moe" in c.tags)
IDS = [c.name for c in ZOO]


def setup(case: ZooCase) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    return build(case)


def capture(model: Any, args: Any, kwargs: Any, seed: int = 0, **options: Any) -> Any:
    torch.manual_seed(seed)
    options.setdefault("intervention_ready", True)
    return tl.trace(model, *args, input_kwargs=kwargs, **options)


def same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of every tensor leaf (NaNs equal to NaNs)."""
    la, lb = leaves(a), leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb, strict=True):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not torch.equal(x, y) and not (
                x.is_floating_point() and torch.equal(x.isnan(), y.isnan())
                and torch.equal(x.nan_to_num(), y.nan_to_num())):
            return False
    return True


def module_site(trace: Any, at: float = 0.4) -> tuple[str, str, int, Any]:
    """(call key 'addr:n', address, n, first output op) of a module call whose outputs
    are all floating and of one shape (an action built for the first fits them all),
    near position ``at`` of the trace."""
    best = None
    n = len(trace.ops)
    for call in trace.module_calls:
        outs = [trace.op_at_call(i) for i in call.output_ops]
        if not outs or any(o is None or o.dtype is None or not o.dtype.is_floating_point
                           or o.shape != outs[0].shape for o in outs):
            continue
        pos = abs(outs[0].index / n - at)
        if best is None or pos < best[0]:
            best = (pos, call)
    assert best is not None, "no module with floating outputs"
    call = best[1]
    return call.key, call.address, call.call_num, trace.op_at_call(call.output_ops[0])


def severing(trace: Any) -> set[int]:
    """Ops whose edit replay refuses: refresh ops and the views a write goes through
    (tests/interventions/test_views_replay.py checks the refusal)."""
    return {ci for r in trace.record_table if r.func_name == "refresh"
            for ci in (r.call_index, *r.kwargs["views"])}


def function_site(trace: Any, at: float = 0.6) -> tuple[Any, str, int]:
    """(op, func name, k): an op whose output can be edited by counting calls of its
    function (single tensor output, floating, not in place), near position ``at``."""
    records = trace.record_table
    multi = {r.func_name for r in records if r.out_index}
    best = None
    n = len(trace.ops)
    cut = severing(trace)
    for op in trace.ops:
        if (op.kind != "op" or op.out_index or op.mutates is not None or op.call_index in cut
                or op.func_name in multi or op.func_name.startswith("__get")
                or op.dtype is None or not op.dtype.is_floating_point):
            continue
        pos = abs(op.index / n - at)
        if best is None or pos < best[0]:
            best = (pos, op)
    assert best is not None
    op = best[1]
    k = sum(1 for r in records[: op.call_index + 1]
            if r.kind == "op" and r.func_name == op.func_name)
    return op, op.func_name, k


def corrupt(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Other inputs of the same structure: every tensor rolled by one along its last
    dimension (keeps token ids valid and sums, hence data-dependent branches, unchanged)."""
    def roll(x: Any) -> Any:
        if isinstance(x, Tensor):
            return x.roll(1, dims=-1) if x.dim() else x
        if isinstance(x, (tuple, list)):
            return type(x)(roll(v) for v in x)
        if isinstance(x, dict):
            return {k: roll(v) for k, v in x.items()}
        return x
    return roll(args), roll(kwargs)


def editable(trace: Any) -> Any:
    """A selector for every op a live run can edit (no graph sources or sinks) and replay
    can reproduce (no refresh ops, no views a later write goes through)."""
    cut = [op.label for op in trace.ops if op.call_index in severing(trace)]
    sel = ~tl.func("input", "output", "buffer", "constant")
    return sel & ~tl.label(*cut) if cut else sel
