"""Residual-stream facets of transformer-style blocks, found from the graph.

A module call is a block when, following the residual stream from its input (through
casts, dropout and, for post-norm blocks, ``layer_norm``), exactly two ``add`` ops join the
stream with a branch computed inside the call, and no smaller module call holds both.
Its facets are the ops themselves:

- ``resid_pre``: the block input; ``resid_mid``: after the first add (``resid_pre +
  attn_out``); ``resid_post``: after the second add (``resid_mid + mlp_out``);
- ``attn_out`` and ``mlp_out``: the two branches joining the stream (named
  ``branch1_out``/``branch2_out`` when the first branch holds no attention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..capture.records import Ref
from ._graph import ADDS, payload, records
from ._registry import Carrier, FacetGroup, Owner, StructureIndex

if TYPE_CHECKING:
    from ..tracing import Trace

_PASS = frozenset({"to", "type", "float", "contiguous", "clone", "dropout", "layer_norm",
                   "detach", "identity"})
NAMES = ("resid_pre", "resid_mid", "resid_post")


@dataclass(frozen=True)
class BlockSpec:
    owner: Owner
    ops: tuple[tuple[str, int], ...]  # facet name -> call index

    def op(self, name: str) -> int:
        return dict(self.ops)[name]


def detect(trace: Trace, index: StructureIndex) -> None:
    """The residual-block provider (runs after attention: it names ``attn_out``)."""
    recs = records(trace)
    adds: dict[int, list[int]] = {}
    calls = {id(c): c for c in trace.module_calls}
    for rec in recs:
        if rec is not None and rec.func_name in ADDS and _two_branches(recs, rec):
            for c in rec.module_ctx:
                adds.setdefault(id(c), []).append(rec.call_index)
    cores = [g.info().get("core_op") for o in index.owners("attention")
             for g in index.of(o) if g.kind == "attention"]
    for key, found in adds.items():
        call = calls.get(key)
        if call is None or len(found) < 2 or not call.output_ops:
            continue
        spec = _block(recs, call, set(found), cores)
        if spec is not None:
            index.add(ResidualGroup(spec), call.first_op)


def _two_branches(recs: Any, rec: Any) -> bool:
    refs = [a.op for a in rec.args[:2] if isinstance(a, Ref)]
    return len(refs) == 2 and refs[0] != refs[1] and all(
        tuple(recs[r].shape) == tuple(rec.shape) for r in refs)


def _block(recs: Any, call: Any, adds: set[int], cores: list[Any]) -> BlockSpec | None:
    out_shape = tuple(recs[call.output_ops[0]].shape)
    for x0 in dict.fromkeys(call.input_ops):
        if tuple(recs[x0].shape) != out_shape:
            continue
        joins, stream = _follow(recs, call, x0, adds)
        if len(joins) != 2 or call.output_ops[0] not in stream:
            continue
        (a1, s1, b1), (a2, _, b2) = joins
        if _deepest_common(recs[a1], recs[a2]) is not call:
            return None
        attn = any(c is not None and x0 < c < a1 and call.first_op <= c for c in cores)
        names = ("attn_out", "mlp_out") if attn else ("branch1_out", "branch2_out")
        ops = (("resid_pre", x0), ("resid_mid", a1), ("resid_post", a2),
               (names[0], b1), (names[1], b2))
        return BlockSpec(Owner(call.address, call.call_num), ops)
    return None


def _follow(recs: Any, call: Any, x0: int, adds: set[int]
            ) -> tuple[list[tuple[int, int, int]], set[int]]:
    """The residual adds met following the stream from ``x0`` through ``call``'s ops:
    (add, its stream parent, its branch parent), and the stream's last ops."""
    stream = {x0}
    joins: list[tuple[int, int, int]] = []
    for ci in range(max(call.first_op, x0 + 1), call.last_op + 1):
        rec = recs[ci]
        if rec is None:
            continue
        parents = list(dict.fromkeys(rec.parent_idx))
        on = [p for p in parents if p in stream]
        if ci in adds and len(on) == 1 and len(parents) == 2:
            branch = parents[0] if parents[1] == on[0] else parents[1]
            joins.append((ci, on[0], branch))
            stream = {ci}
        elif len(on) == 1 and len(parents) == 1 and rec.func_name in _PASS \
                and tuple(rec.shape) == tuple(recs[on[0]].shape):
            stream.add(ci)
    return joins, stream


def _deepest_common(a: Any, b: Any) -> Any:
    common = None
    for x, y in zip(a.module_ctx, b.module_ctx, strict=False):
        if x is not y:
            break
        common = x
    return common


class ResidualGroup(FacetGroup):
    kind = "residual"

    def __init__(self, spec: BlockSpec) -> None:
        self.spec = spec
        self.owner = spec.owner

    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.spec.ops)

    def sources(self) -> tuple[int, ...]:
        return tuple(ci for _, ci in self.spec.ops)

    def value(self, trace: Trace, name: str) -> Tensor:
        return payload(trace, self.spec.op(name), f"{name!r} of {self.owner.name()}")

    def carrier(self, trace: Trace, name: str) -> Carrier | None:
        return Carrier(self.spec.op(name))

    def info(self) -> dict[str, Any]:
        return {name: ci for name, ci in self.spec.ops}

    def describe(self) -> str:
        return "residual block"
