"""Sequences of ops a trace hands out: ``OpList`` (``trace.ops``, ``trace.records``),
``Layer`` (all passes of one layer, over a :class:`LayerInfo` row) and ``OpGroup``
(several ops one key finds). Views, like :class:`~lens.tracing.op.Op`: they hold the trace,
and the trace holds only the rows they read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..capture.records import OpRecord
from ..errors import PayloadError
from .op import Op

if TYPE_CHECKING:
    from .traces import Trace


class OpList(Sequence[Op]):
    """The ops of a trace in order: a sequence of views made as they are read.

    Over a loaded trace's recording (``trace.records``), the places of orphans that were
    not saved hold None, so positions stay call indices."""

    __slots__ = ("trace", "recs")

    def __init__(self, trace: Trace, recs: list[OpRecord]) -> None:
        self.trace = trace
        self.recs = recs

    def __len__(self) -> int:
        return len(self.recs)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [None if r is None else Op(self.trace, r) for r in self.recs[i]]
        r = self.recs[i]
        return None if r is None else Op(self.trace, r)

    def __iter__(self) -> Iterator[Op]:
        t = self.trace
        for r in self.recs:
            yield None if r is None else Op(t, r)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, Op) and value.trace is self.trace and any(
            r is value.record for r in self.recs)

    def __repr__(self) -> str:
        return f"<{len(self.recs)} ops of {self.trace!r}>"


class LayerInfo:
    """One layer of a trace, as the trace stores it: labels and the call indices of its
    passes (no references to ops or to the trace)."""

    __slots__ = ("label", "short_label", "type", "total_num", "passes")

    def __init__(self, label: str, short_label: str, type_: str, total_num: int) -> None:
        self.label = label
        self.short_label = short_label
        self.type = type_
        self.total_num = total_num
        self.passes: list[int] = []  # call indices, in pass order


class Layer(Sequence[Op]):
    """All passes of one layer. Index it (``layer[0]`` is pass 1) or iterate over passes.

    A view, like :class:`Op`: equal to any other view of the same layer."""

    __slots__ = ("trace", "info")

    def __init__(self, trace: Trace, info: LayerInfo) -> None:
        self.trace = trace
        self.info = info

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layer) and other.info is self.info

    def __hash__(self) -> int:
        return id(self.info)

    @property
    def label(self) -> str:
        return self.info.label

    @property
    def short_label(self) -> str:
        return self.info.short_label

    @property
    def type(self) -> str:
        return self.info.type

    @property
    def total_num(self) -> int:
        return self.info.total_num

    @property
    def passes(self) -> list[Op]:
        t, recs = self.trace, self.trace.record_table
        return [Op(t, recs[i]) for i in self.info.passes]

    def __len__(self) -> int:
        return len(self.info.passes)

    def __getitem__(self, i: Any) -> Any:
        return self.passes[i]

    def __iter__(self) -> Iterator[Op]:
        return iter(self.passes)

    @property
    def num_passes(self) -> int:
        return len(self.info.passes)

    @property
    def out(self) -> torch.Tensor:
        passes = self.info.passes
        if len(passes) == 1:
            return self.passes[0].out
        raise PayloadError(
            f"{self.label} is a layer with {len(passes)} passes, so it has no single "
            f"output. Pick a pass: trace['{self.label}:1'] ... trace['{self.label}:"
            f"{len(passes)}'], or iterate: [op.out for op in trace['{self.label}']].")

    def __repr__(self) -> str:
        return f"<Layer {self.label} ({len(self.info.passes)} passes)>"


class OpGroup(Sequence[Op]):
    """Several ops found by one key (a module called several times, or with several outputs)."""

    def __init__(self, key: str, ops: list[Op]) -> None:
        self.key = key
        self.ops = ops

    def __len__(self) -> int:
        return len(self.ops)

    def __getitem__(self, i: Any) -> Any:
        return self.ops[i]

    @property
    def out(self) -> torch.Tensor:
        if len(self.ops) == 1:
            return self.ops[0].out
        keys = ", ".join(op.label for op in self.ops)
        raise PayloadError(
            f"{self.key!r} names {len(self.ops)} ops ({keys}), so it has no single output. "
            f"Index one of them, e.g. trace[{self.ops[0].label!r}] (or '{self.key}:1' for "
            "the first call of a module).")

    def __repr__(self) -> str:
        return f"<OpGroup {self.key!r}: {[op.label for op in self.ops]}>"
