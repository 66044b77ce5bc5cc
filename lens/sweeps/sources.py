"""Where a patching sweep reads its clean values: the value at each site and the clean
output the ``clean`` column scores.

The clean run only supplies those values, so it needs a graph only when a site needs
one (a facet, an op inside a module). When every site is a module's output
(``'transformer.h.3'``, ``tl.module('fc:2')``), the clean run is recorded with forward
hooks on those modules alone (:class:`HookedClean`, about the cost of a plain forward)
and read by module call; otherwise it is a full trace (:class:`TracedClean`), read at
the op in the same place. The corrupted run is always a full trace: the replay runs on
its graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..bundles.core import check_same_graph
from ..capture.run import output_address
from ..capture.sparse import module_map
from ..capture.template import tensor_leaves
from ..errors import LensError
from ..selectors import Module, Or, Selector, coerce
from ..tracing import Op, Trace
from ..tracing.sparse import SparseRecording


class TracedClean:
    """The clean run as a full trace of the same graph as the corrupted one (checked)."""

    kind = "trace"

    def __init__(self, trace: Trace, base: Trace) -> None:
        check_same_graph("clean", trace, "corrupted", base)
        self.trace = trace

    def twin(self, op: Op) -> Op:
        """``op``'s counterpart: the op at the same place (one graph, so no label table
        is built)."""
        twin: Op = self.trace.ops[op.index]
        assert twin.label == op.label
        return twin

    def value(self, op: Op) -> Tensor:
        return self.twin(op).out.detach()


class HookedClean:
    """The clean run recorded by forward hooks on the sites' modules: the value at a
    site op is the tensor the same module call returned at the same place among its
    outputs. Built by :func:`hooked_clean` only when every site op and the output op
    have such a counterpart of the same shape and dtype."""

    kind = "hooks"

    def __init__(self, values: dict[int, Tensor], output: Tensor) -> None:
        self._values = values  # by call index of the base (corrupted) op
        self.output = output

    def value(self, op: Op) -> Tensor:
        return self._values[op.call_index].detach()


def hooked_modules(model: Any, sites: Any) -> list[str] | None:
    """The module addresses (or calls) ``sites`` names, when it names module outputs
    only (strings that are module addresses, ``tl.module(...)``, ``|`` of them); None
    when a site needs the clean run's graph."""
    if not isinstance(model, nn.Module):
        return None
    addresses = set(module_map(model))
    try:
        sel = coerce(sites, module_addresses=addresses)
    except (LensError, TypeError, ValueError):
        return None  # the full path raises the user-facing error
    if not only_modules(sel):
        return None
    return [p.address for p in _parts(sel) if isinstance(p, Module)]


def only_modules(sel: Selector) -> bool:
    """Whether ``sel`` is ``tl.module(...)`` or an ``|`` of them (so it matches module
    outputs only)."""
    return all(isinstance(p, Module) for p in _parts(sel))


def matched(trace: Trace, sel: Selector) -> list[Op]:
    """The ops of ``trace`` that ``sel`` matches, in order. For module outputs only, the
    test ``tl.module(a).matches`` makes (``a in op.module_outputs``), on the ops some
    module returned, with each op's keys built once instead of once per address."""
    if not only_modules(sel):
        return [op for op in trace.ops if sel(op)]
    names = {p.address for p in _parts(sel) if isinstance(p, Module)}
    return [op for op in trace.ops if op.record.output_of
            and not names.isdisjoint(op.record.module_outputs)]


def _parts(sel: Selector) -> tuple[Selector, ...]:
    return sel.parts if isinstance(sel, Or) else (sel,)


def hooked_clean(rec: SparseRecording, site_ops: Sequence[Op], out_op: Op
                 ) -> HookedClean | None:
    """The clean values of ``site_ops`` (ops of the corrupted trace) and of ``out_op``
    read from ``rec``; None unless both runs made the same calls of the hooked modules,
    each returning as many tensors, and every value read has the shape and dtype of its
    op (the caller then traces the clean run in full, which names any difference)."""
    values: dict[int, Tensor] = {}
    used: set[str] = set()
    for op in site_ops:
        calls = [c for c in op.record.output_of if c.key in rec.payloads]
        found = [_leaf(rec.payloads[c.key], c.output_ops, op.call_index) for c in calls]
        v = found[0] if found else None
        if v is None or any(f is not v for f in found) or not _same_kind(v, op.out):
            return None
        values[op.call_index] = v
        used.update(c.key for c in calls)
    output = _output_value(rec.output, out_op)
    if used != set(rec.payloads) or output is None or not _same_kind(output, out_op.out):
        return None
    return HookedClean(values, output)


def _leaf(kept: list[Tensor], output_ops: list[int], call_index: int) -> Tensor | None:
    """The tensor a module call returned at the place of op ``call_index`` among its
    distinct outputs (a hook keeps a tensor returned twice once; a trace has one op for
    it)."""
    order = list(dict.fromkeys(output_ops))
    return kept[order.index(call_index)] if len(order) == len(kept) else None


def _output_value(output: Any, out_op: Op) -> Tensor | None:
    """The leaf of the model's ``output`` that ``out_op`` (an output op, named
    ``output.<path>`` by capture) recorded."""
    if not out_op.is_output:
        return None
    for path, t in tensor_leaves(output, ()):
        if output_address(path) == out_op.record.address:
            return t
    return None


def _same_kind(a: Tensor, b: Tensor) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
