"""Reading the recorded graph for facets: records by call index, argument templates,
saved payloads, and value checks.

Structure detection uses metadata only (function names, shapes, parents, argument
templates), so it also works on traces captured with ``save=False``; values need payloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..capture.records import ParamRef, Ref
from ..capture.template import template_refs
from ..errors import PayloadError

if TYPE_CHECKING:
    from ..tracing import Trace

# Ops that only move or relabel elements (their output's elements are the input's).
RESHAPES = frozenset({
    "view", "reshape", "transpose", "permute", "contiguous", "flatten", "unflatten",
    "clone", "to", "type", "float", "view_as", "reshape_as", "squeeze", "unsqueeze",
    "detach", "swapaxes", "swapdims", "movedim",
})
DTYPE_ONLY = frozenset({"to", "type", "float", "half", "bfloat16", "double", "detach"})
MATMULS = frozenset({"matmul", "__matmul__", "bmm"})
ADDS = frozenset({"add", "__add__", "__radd__", "add_", "__iadd__"})


def records(trace: Trace) -> Sequence[Any]:
    """Every op record of ``trace`` by call index (orphans included)."""
    return trace.record_table


def ref(template: Any) -> int | None:
    """The call index a template argument refers to, or None for a constant."""
    return int(template.op) if isinstance(template, Ref) else None


def arg(rec: Any, i: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` (position ``i``) of a record's call, as a template."""
    if name in rec.kwargs:
        return rec.kwargs[name]
    return rec.args[i] if len(rec.args) > i else default


def template_slots(rec: Any, names: Sequence[str]) -> tuple[str, ...]:
    """Names of the activation arguments of ``rec`` in the order a site's ``inputs()``
    lists them: positional arguments, then keyword arguments, parameters left out."""
    out: list[str] = []
    for i, t in enumerate(rec.args):
        name = names[i] if i < len(names) else f"arg{i}"
        out.extend(name for _ in template_refs(t))
    for k, t in rec.kwargs.items():
        out.extend(k for _ in template_refs(t))
    return tuple(out)




def payload(trace: Trace, ci: int, what: str) -> Tensor:
    """The saved value of op ``ci``, detached; explains how to get it when not saved."""
    rec = records(trace)[ci]
    p = rec.payload
    if p is None:
        label = getattr(rec, "label", f"op #{ci}") if hasattr(rec, "layer") else f"op #{ci}"
        raise PayloadError(
            f"Facet {what} is read from the saved output of {label} ({rec.func_name}), which "
            f"was not saved (the trace was captured with save={trace.save_spec!r}). "
            "Re-capture with save=True (the default) or intervention_ready=True.")
    return p.detach()  # type: ignore[no-any-return]


def param(trace: Trace, name: str) -> Tensor:
    return trace.param_values[name].detach()


def tolerance(dtype: torch.dtype) -> float:
    if dtype == torch.float64:
        return 1e-9
    if dtype in (torch.float16, torch.bfloat16):
        return 2e-2
    return 1e-4


def close(a: Tensor, b: Tensor) -> bool:
    """Equal within float tolerance for their dtype (scaled by the values' size);
    positions where ``b`` is not finite are skipped."""
    if a.shape != b.shape:
        return False
    a64, b64 = a.double(), b.double()
    ok = torch.isfinite(b64)
    if not bool(ok.all()):
        a64, b64 = a64[ok], b64[ok]
    if b64.numel() == 0:
        return True
    tol = tolerance(b.dtype)
    size = max(1.0, float(b64.abs().max()))
    return bool(torch.allclose(a64, b64, rtol=tol, atol=tol * size))


def max_error(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    d = (a.double() - b.double()).abs()
    d = d[torch.isfinite(d)]
    return float(d.max()) if d.numel() else 0.0


def simulate(trace: Trace, source: int, path: Sequence[int], start: Tensor) -> Tensor | None:
    """Run the reshape-only ops ``path`` (call indices, each consuming the previous, the
    first consuming op ``source``) on ``start``, an index tensor laid out like ``source``'s
    value: where each element of that value ends up. None if some op is not a reshape."""
    recs = records(trace)
    cur = start
    prev = source
    for ci in path:
        rec = recs[ci]
        if rec.func_name in DTYPE_ONLY:
            prev = ci
            continue
        args = [cur if ref(a) == prev else a for a in rec.args]
        kwargs = {k: v for k, v in rec.kwargs.items() if k != "memory_format"}
        if any(isinstance(a, (Ref, ParamRef)) for a in (*args, *kwargs.values())):
            return None
        try:
            cur = rec.func(*args, **kwargs)
        except Exception:  # noqa: BLE001 - not a pure reshape we can follow
            return None
        if not isinstance(cur, Tensor):
            return None
        prev = ci
    return cur


def normalize_dims(dims: Sequence[int], ndim: int) -> tuple[int, ...]:
    return tuple(d % ndim for d in dims)


def swaps_last_two(rec: Any) -> bool:
    """A transpose/permute that swaps the last two dims of a 4-d tensor."""
    name = rec.func_name
    nd = len(rec.shape)
    if nd < 2:
        return False
    if name in ("transpose", "swapaxes", "swapdims") and len(rec.args) >= 3:
        dims = rec.args[1:3]
        if all(isinstance(d, int) for d in dims):
            return set(normalize_dims(dims, nd)) == {nd - 2, nd - 1}
    if name == "permute":
        dims = rec.args[1] if len(rec.args) == 2 and isinstance(rec.args[1], (tuple, list)) \
            else rec.args[1:]
        want = tuple(range(nd - 2)) + (nd - 1, nd - 2)
        return all(isinstance(d, int) for d in dims) and normalize_dims(dims, nd) == want
    return bool(name == "mT")


def token(trace: Trace, cis: Sequence[int]) -> tuple[int, ...]:
    """Identity of the saved values of ``cis``: changes when a replay swaps a payload."""
    recs = records(trace)
    return tuple(id(recs[ci].payload) for ci in cis)


def heads_changed(old: Tensor, new: Tensor) -> Tensor:
    """Per index of dim 1 (heads): whether ``new`` differs from ``old`` anywhere."""
    diff = (old != new) & ~(torch.isnan(old) & torch.isnan(new))
    return diff.transpose(0, 1).reshape(old.shape[1], -1).any(dim=1)
