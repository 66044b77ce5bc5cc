"""Replaying a fork: recompute what the edits change, from recorded functions only.

:class:`ForkInterpreter` extends the replay interpreter with two things edits need:

- versions: an edit made at a module's exit is seen only by ops that ran after the
  module returned (ops inside the module consumed the unedited value, as with a forward
  hook), so a site's value depends on which op asks for it;
- randomness: a random op downstream of an edit (dropout in training mode) must draw
  the numbers it drew at capture. Capture with ``intervention_ready=True`` records the
  generators' state before the forward pass; replay restores it and re-runs the recorded
  random ops in call order on their saved inputs (their draws depend only on shapes), so
  the generator reaches each random op in the cone in exactly the state it had at
  capture. Without that record, dropout falls back to the mask read off its saved input
  and output (exact where the saved input is non-zero); other random ops refuse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..capture import storage
from ..capture.records import OP, ParamRef, Ref
from ..errors import PayloadError, ReplayError
from ..replay.interpreter import Interpreter, is_stochastic
from ..trace import Op, Trace
from ._match import get_rng, preserved_rng, set_rng
from ._sites import describe

_INF = float("inf")


class ForkInterpreter(Interpreter):
    """An :class:`Interpreter` whose edited sites hold several versions (see module doc)."""

    def __init__(self, trace: Trace, values: Mapping[int, Tensor] | None = None) -> None:
        super().__init__(trace, values)
        self.versions: dict[int, list[tuple[float, Tensor]]] = {}
        self.current = -1  # call index of the op being computed
        self._rng: _RandomStream | None = None

    def seen_by(self, ci: int, consumer: int) -> Tensor:
        """The value of op ``ci`` as op ``consumer`` sees it."""
        versions = self.versions.get(ci)
        if versions is not None:
            for boundary, value in versions:
                if consumer <= boundary:
                    return value
        return self.value(ci)

    def changed_for(self, ci: int, consumer: int, base: Mapping[int, Tensor]) -> bool:
        if ci in self.env:
            return True
        versions = self.versions.get(ci)
        return versions is not None and self.seen_by(ci, consumer) is not base[ci]

    def value(self, call_index: int) -> Tensor:
        if call_index in self.versions and self.current >= 0:
            return self.seen_by(call_index, self.current)
        return super().value(call_index)

    def run_op(self, op: Op) -> Tensor:
        self.current = op.call_index
        try:
            return super().run_op(op)
        finally:
            self.current = -1

    def call_function(self, op: Op) -> Tensor:
        if op.kind == OP and is_stochastic(op):
            if self._rng is None:
                self._rng = _RandomStream(self.trace)
            return self._rng.run(op, lambda: Interpreter.call_function(self, op), self)
        return super().call_function(op)


class _RandomStream:
    """The default generators walked through the capture's random ops, in call order."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.state: dict[str, Any] | None = trace.options.get("rng_state")
        self.records = list(trace.ops[0]._ops) if trace.ops else []
        self.random = [r for r in self.records if r.kind == OP and is_stochastic(r)]
        self.pos = 0

    def run(self, op: Op, compute: Any, interp: ForkInterpreter) -> Tensor:
        if self.state is None:
            return _dropout_from_payloads(op, interp)
        with preserved_rng(self.state):
            done: set[int] = set()
            while self.pos < len(self.random) and self.random[self.pos].call_index < op.call_index:
                rec = self.random[self.pos]
                if rec.call_id not in done:  # a multi-output call draws once
                    done.add(rec.call_id)
                    self._redraw(rec)
                self.pos += 1
            out: Tensor = compute()
            while self.pos < len(self.random) and self.random[self.pos].call_id == op.call_id:
                self.pos += 1
            self.state = get_rng()
        return out

    def _redraw(self, rec: Any) -> None:
        """Re-run a random op on its saved inputs, only to advance the generator."""
        def value(t: Any) -> Any:
            if isinstance(t, Ref):
                p = self.records[t.op].payload
                if p is None:
                    raise PayloadError(
                        f"Replaying random ops needs the saved inputs of {describe(rec)}; "
                        "re-capture with tl.trace(model, x, intervention_ready=True).")
                return p.clone() if rec.mutates is not None else p
            if isinstance(t, ParamRef):
                return self.trace.param_values[t.name]
            if type(t) in (tuple, list):
                return type(t)(value(x) for x in t)
            return t
        rec.func(*value(rec.args), **{k: value(v) for k, v in rec.kwargs.items()})


def _dropout_from_payloads(op: Op, interp: ForkInterpreter) -> Tensor:
    """Dropout recomputed with the mask it drew at capture, read off its saved input and
    output (exact where the saved input is non-zero)."""
    how = ("re-capture the source with tl.trace(model, x, intervention_ready=True), which "
           "records the random state replay needs")
    if "dropout" not in op.func_name or op.func_name.endswith("_") or not op.args:
        raise ReplayError(
            f"{describe(op)} draws random numbers and lies downstream of an edit; to redraw "
            f"them as at capture, {how}.")
    first = op.args[0]
    src_in = interp.trace._by_call[first.op].payload if isinstance(first, Ref) else None
    src_out = op.payload
    if src_in is None or src_out is None or bool((src_in == 0).any()):
        raise ReplayError(
            f"{describe(op)} (dropout in training mode) lies downstream of an edit and its "
            f"mask cannot be read off the saved values (some inputs are 0); {how}.")
    p = op.kwargs.get("p", op.args[1] if len(op.args) > 1 else 0.5)
    scale = torch.ones((), dtype=src_out.dtype, device=src_out.device).div_(1 - p)
    noise = (src_out != 0).to(src_out.dtype) * scale
    new_in = interp.value(first.op)
    return new_in * noise


def refuse_severing_edits(trace: Trace, edited: Iterable[int]) -> None:
    """Refuse edits replay cannot reproduce: a view that a later write goes through (a live
    edit hands the model a new tensor, which the write then misses), or a refresh op."""
    records = list(trace.ops[0]._ops) if trace.ops else []
    for ci, refresh_ci in storage.severing_edits(records, edited):
        rec, ref = records[ci], records[refresh_ci]
        if ci == refresh_ci:
            why = (f"{describe(rec)} is lens's record of a tensor after a write through "
                   "another view of its storage, not a call the model made")
        else:
            why = (f"{describe(rec)} is a view that ties {describe(ref)} to a storage written "
                   "in place: an edit replaces the view with a new tensor, so the write "
                   "would no longer reach it, which replay cannot reproduce")
        raise ReplayError(
            f"Cannot replay this edit: {why}. Edit the in-place write itself, the op that "
            "made the storage, or an op that reads the tensor after the write.")


def output_structure(source_output: Any, trace: Trace, values: Mapping[int, Tensor]) -> Any:
    """``source_output`` with the tensors of replayed output ops swapped in."""
    from ..capture.engine import _rebuild, _tensor_leaves

    outs = [op for op in trace.ops if op.is_output]
    leaves = list(_tensor_leaves(source_output, ()))
    if len(outs) != len(leaves):
        return source_output
    replaced = {path: values[op.call_index] for (path, _), op in zip(leaves, outs, strict=True)
                if op.call_index in values}
    if not replaced:
        return source_output
    return _rebuild(source_output, (), replaced)


__all__ = ["ForkInterpreter", "output_structure", "set_rng", "_INF"]
