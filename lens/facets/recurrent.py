"""Recurrent facets: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` run as one fused op.

``output``, ``h_n`` and ``c_n`` are the fused op's own outputs. The per-step states
``h`` and ``c`` and the gates (LSTM ``i``, ``f``, ``g``, ``o``; GRU ``r``, ``z``, ``n``,
all after their nonlinearity) are rebuilt by unrolling the recurrence with the module's
weights (named in the op's argument template) and checked against the fused outputs.
Their layout is ``[layer, direction, batch, time, hidden]``, whatever ``batch_first``.

Every facet can be edited. ``output``/``h_n``/``c_n`` are edited at their op; a state or
gate is edited at one time step (``tl.facet('h', module='lstm', step=3)``) or at every
step, as the recurrence runs: lens reruns the recurrence from the edit on, through every
layer and direction (lens.facets._rnn_edit), and the fused op's outputs change only where
the edit reaches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..capture.fired import fired_on
from ..capture.records import ParamRef
from ..errors import FacetError
from ._graph import close, max_error, param, payload, records, ref, token
from ._registry import (
    Carrier,
    FacetGroup,
    StructureIndex,
    edit_lost,
    edited_value,
    owner_of,
    rewritten,
)
from ._rnn_edit import StepRewrite
from ._rnn_math import GATES, OUTPUTS, RnnSpec, unroll

if TYPE_CHECKING:
    from ..tracing import Trace

def detect(trace: Trace, index: StructureIndex) -> None:
    """The recurrent provider: one group per fused ``lstm``/``gru``/``rnn_*`` call."""
    recs = records(trace)
    for rec in recs:
        if rec is None or rec.func_name not in GATES or rec.out_index[:1] != (0,):
            continue
        owner = owner_of(rec)
        args = rec.args
        params = args[2] if len(args) > 2 else None
        if len(args) < 9 or type(params) not in (list, tuple) or not params or not all(
                isinstance(p, ParamRef) for p in params):
            index.note(owner, f"{rec.func_name} op #{rec.call_index} takes a packed "
                       "sequence, which lens does not unroll, so it has no facets")
            continue
        hx = args[1] if type(args[1]) in (list, tuple) else (args[1],)
        hx_ci = tuple(ref(h) for h in hx)
        x = ref(args[0])
        if x is None or None in hx_ci:
            continue
        outs = tuple(r.call_index for r in recs[rec.call_index:rec.call_index + 3]
                     if r.call_id == rec.call_id)
        train, dropout = bool(args[6]), float(args[5])
        spec = RnnSpec(owner, rec.func_name, x, hx_ci, tuple(p.name for p in args[2]),  # type: ignore[arg-type]
                       bool(args[3]), int(args[4]), bool(args[7]), bool(args[8]), outs,
                       not (train and dropout > 0 and int(args[4]) > 1))
        index.add(RecurrentGroup(spec), rec.call_index)


class RecurrentGroup(FacetGroup):
    kind = "recurrent"

    def __init__(self, spec: RnnSpec) -> None:
        self.spec = spec
        self.owner = spec.owner
        self._memo: tuple[tuple[int, ...], dict[str, Tensor]] | None = None

    def names(self) -> tuple[str, ...]:
        lstm = self.spec.mode == "lstm"
        base = ("output", "h_n", "c_n") if lstm else ("output", "h_n")
        if not self.spec.unrollable:
            return base
        return (*base, "h", *(("c",) if lstm else ()), *GATES[self.spec.mode])

    def sources(self) -> tuple[int, ...]:
        return (self.spec.x, *self.spec.hx, *self.spec.outputs)

    def info(self) -> dict[str, Any]:
        s = self.spec
        return {"mode": s.mode, "num_layers": s.layers, "bidirectional": s.bidirectional,
                "batch_first": s.batch_first}

    def describe(self) -> str:
        s = self.spec
        two = ", bidirectional" if s.bidirectional else ""
        return f"recurrent ({s.mode}, {s.layers} layer{'s' if s.layers > 1 else ''}{two})"

    def carrier(self, trace: Trace, name: str) -> Carrier | None:
        found = self.carriers(trace, name)
        return found[0] if found else None

    def carriers(self, trace: Trace, name: str) -> tuple[Carrier, ...]:
        """``output``/``h_n``/``c_n`` are edited at their own op; a per-step state or gate
        at every output op of the fused call (an edit at step t changes them all)."""
        outs = self.spec.outputs
        direct = dict(zip(OUTPUTS, outs, strict=False))
        if name in direct:
            return (Carrier(direct[name]),)
        if self.step_dim(name) is None:
            return ()
        return tuple(Carrier(ci, StepRewrite(self.spec, p)) for p, ci in enumerate(outs))

    def step_dim(self, name: str) -> int | None:
        return 3 if name in self.names() and name not in OUTPUTS else None

    def value(self, trace: Trace, name: str) -> Tensor:
        s = self.spec
        direct = dict(zip(OUTPUTS, s.outputs, strict=False))
        if name in direct:
            return payload(trace, direct[name], f"{name!r} of {s.owner.name()}")
        for ci in s.outputs:  # a per-step edit reran the recurrence: its states, as edited
            if rewritten(trace, ci, s.owner):
                got = edited_value(trace, ci, s.owner, name)
                if got is not None:
                    return got
        if any(rewritten(trace, ci, s.owner) for ci in s.outputs):
            raise FacetError(edit_lost(s.owner, name, s.outputs[0]))
        tok = token(trace, self.sources())
        if self._memo is None or self._memo[0] != tok:
            self._memo = (tok, self._unroll(trace))
        return self._memo[1][name]

    def _unroll(self, trace: Trace) -> dict[str, Tensor]:
        s = self.spec
        what = f"the states of {s.owner.name()}"
        x = payload(trace, s.x, what)
        hx = [payload(trace, ci, what) for ci in s.hx]
        with torch.no_grad():
            found = unroll(s, x, hx, [param(trace, n) for n in s.params])
        for name, ci in zip(OUTPUTS, s.outputs, strict=False):
            want = payload(trace, ci, what)
            if not fired_on(records(trace)[ci]) and not close(found[name], want):
                raise FacetError(
                    f"Unrolling {s.mode} of {s.owner.name()} with its weights does not "
                    f"reproduce the fused op's {name!r} (off by "
                    f"{max_error(found[name], want):.3g}); the per-step states and gates "
                    "are not available.")
        return found


