"""Recurrent facets: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` run as one fused op.

``output``, ``h_n`` and ``c_n`` are the fused op's own outputs. The per-step states
``h`` and ``c`` and the gates (LSTM ``i``, ``f``, ``g``, ``o``; GRU ``r``, ``z``, ``n``,
all after their nonlinearity) are rebuilt by unrolling the recurrence with the module's
weights (named in the op's argument template) and checked against the fused outputs.
Their layout is ``[layer, direction, batch, time, hidden]``, whatever ``batch_first``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..capture.records import ParamRef
from ._graph import FacetError, close, max_error, param, payload, records, ref, token
from ._registry import Carrier, FacetGroup, Owner, StructureIndex, owner_of

if TYPE_CHECKING:
    from ..tracing import Trace

GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn_tanh": (),
         "rnn_relu": ()}


@dataclass(frozen=True)
class RnnSpec:
    owner: Owner
    mode: str
    x: int
    hx: tuple[int, ...]
    params: tuple[str, ...]
    biases: bool
    layers: int
    bidirectional: bool
    batch_first: bool
    outputs: tuple[int, ...]  # output, h_n (, c_n)
    unrollable: bool


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
        direct = dict(zip(("output", "h_n", "c_n"), self.spec.outputs, strict=False))
        return Carrier(direct[name]) if name in direct else None

    def value(self, trace: Trace, name: str) -> Tensor:
        s = self.spec
        direct = dict(zip(("output", "h_n", "c_n"), s.outputs, strict=False))
        if name in direct:
            return payload(trace, direct[name], f"{name!r} of {s.owner.name()}")
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
        for name, ci in zip(("output", "h_n", "c_n"), s.outputs, strict=False):
            want = payload(trace, ci, what)
            if not records(trace)[ci].fired and not close(found[name], want):
                raise FacetError(
                    f"Unrolling {s.mode} of {s.owner.name()} with its weights does not "
                    f"reproduce the fused op's {name!r} (off by "
                    f"{max_error(found[name], want):.3g}); the per-step states and gates "
                    "are not available.")
        return found


def unroll(s: RnnSpec, x: Tensor, hx: list[Tensor], params: list[Tensor]) -> dict[str, Tensor]:
    """Run the recurrence step by step; every state and gate, and the fused outputs."""
    dirs = 2 if s.bidirectional else 1
    per = len(params) // (s.layers * dirs)
    seq = x.transpose(0, 1) if s.batch_first else x  # [T, B, F]
    steps = seq.shape[0]
    record: dict[str, list[Tensor]] = {}
    finals: dict[str, list[Tensor]] = {"h_n": [], "c_n": []}
    for layer in range(s.layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w = params[k * per:(k + 1) * per]
            w_ih, w_hh = w[0], w[1]
            b_ih, b_hh = (w[2], w[3]) if s.biases else (None, None)
            w_hr = w[-1] if per in (3, 5) else None
            state = {"h": hx[0][k], "c": hx[1][k] if len(hx) > 1 else hx[0][k]}
            pre = seq @ w_ih.t() + (b_ih if b_ih is not None else 0)
            order = range(steps) if d == 0 else range(steps - 1, -1, -1)
            trail: dict[str, list[Tensor | None]] = {}
            for t in order:
                got = _step(s.mode, pre[t], state, w_hh, b_hh, w_hr)
                for name, val in got.items():
                    trail.setdefault(name, [None] * steps)[t] = val
                state = {"h": got["h"], "c": got.get("c", state["c"])}
            for name, vals in trail.items():
                record.setdefault(name, []).append(torch.stack(vals, dim=1))  # type: ignore[arg-type]
            finals["h_n"].append(state["h"])
            finals["c_n"].append(state["c"])
            outs.append(torch.stack(trail["h"], dim=0))  # type: ignore[arg-type]
        seq = torch.cat(outs, dim=-1)
    found = {name: torch.stack(vals).reshape(s.layers, dirs, *vals[0].shape)
             for name, vals in record.items()}
    found["output"] = seq.transpose(0, 1) if s.batch_first else seq
    found["h_n"] = torch.stack(finals["h_n"])
    if s.mode == "lstm":
        found["c_n"] = torch.stack(finals["c_n"])
    return found


def _step(mode: str, pre: Tensor, state: dict[str, Tensor], w_hh: Tensor,
          b_hh: Tensor | None, w_hr: Tensor | None) -> dict[str, Tensor]:
    h = state["h"]
    rec = h @ w_hh.t() + (b_hh if b_hh is not None else 0)
    if mode == "lstm":
        i, f, g, o = (pre + rec).chunk(4, dim=-1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c = f * state["c"] + i * g
        h = o * c.tanh()
        if w_hr is not None:
            h = h @ w_hr.t()
        return {"h": h, "c": c, "i": i, "f": f, "g": g, "o": o}
    if mode == "gru":
        r_i, z_i, n_i = pre.chunk(3, dim=-1)
        r_h, z_h, n_h = rec.chunk(3, dim=-1)
        r, z = (r_i + r_h).sigmoid(), (z_i + z_h).sigmoid()
        n = (n_i + r * n_h).tanh()
        return {"h": (1 - z) * n + z * h, "r": r, "z": z, "n": n}
    act = torch.tanh if mode == "rnn_tanh" else torch.relu
    return {"h": act(pre + rec)}
