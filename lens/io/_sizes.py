"""Sizes a loaded trace would make replay allocate, checked before anything runs.

A file names each op's function (allow-listed) and its arguments, and some arguments are
sizes: ``zeros(n)``, ``x.repeat(a, b)``, ``F.pad(x, (p, p))``, ``one_hot(x, k)``. Loading
therefore runs every replayable op once on the ``meta`` device (shapes only, no memory,
no data, no generator draws) from its parents' *recorded* shapes and dtypes, and:

- an op whose arguments give another shape than the file records for it, or whose output
  would exceed ``max_op_bytes``, is kept for reading but marked not replayable, with the
  reason (replay then refuses it by name);
- an op that takes a size and cannot be run on ``meta`` is marked the same way (its size
  could not be checked); other ops that meta cannot run (data-dependent shapes such as
  ``nonzero``) allocate in proportion to their real inputs and stay replayable.

So replaying an untrusted trace never allocates in proportion to a number nobody checked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ..capture import funcs
from ..capture.records import OpRecord, ParamRef, Ref
from ..capture.template import map_arg
from ..errors import LoadError

Params = dict[str, tuple[tuple[int, ...], int, torch.dtype, bool]]  # name -> param meta

MAX_OP_BYTES = 8 * 2**30  # per op; tl.load(..., max_op_bytes=...) raises or lowers it

# Functions whose arguments include sizes or counts that decide how much they allocate.
# Functions whose arguments include sizes or counts that decide how much they allocate,
# matched against the op type of the *resolved* function (not the file's own name for it).
_TAKES_SIZE = re.compile(
    r"^(new)?(zeros|ones|full|empty|emptystrided|rand|randn|randint|randperm|normal)(like)?$"
    r"|^(arange|range|linspace|logspace|eye|trilindices|triuindices|repeat|repeatinterleave|"
    r"tile|expand|expandas|broadcastto|onehot|bincount|histc|histogram|pad|interpolate|"
    r"upsample\w*|unfold|fold|kron|cartesianprod|combinations|blockdiag|asstrided\w*|"
    r"resizeas|multinomial|embeddingbag|pixelshuffle)$")


def _on_meta(leaf: Any, shape_of: Callable[[int], tuple[tuple[int, ...], Any]],
             params: Params) -> Any:
    """One template leaf as a value on the meta device (recorded shape and dtype)."""
    if isinstance(leaf, Ref):
        shape, dtype = shape_of(leaf.op)
        return torch.empty(shape, dtype=dtype, device="meta")
    if isinstance(leaf, ParamRef):
        shape, _, dtype, _ = params[leaf.name]
        return torch.empty(shape, dtype=dtype, device="meta")
    if isinstance(leaf, torch.Tensor):
        return leaf.to("meta")
    if isinstance(leaf, torch.device):
        return torch.device("meta")
    return leaf


def _pick(out: Any, index: Sequence[Any]) -> Any:
    for k in index:
        out = out[k]
    return out


def _bytes(shape: tuple[int, ...], dtype: Any) -> int:
    size = dtype.itemsize if isinstance(dtype, torch.dtype) else 8
    return math.prod(shape) * size


def unreplayable_reasons(candidates: Iterable[OpRecord], slots: Sequence[OpRecord | None],
                         params: Params, max_op_bytes: int = MAX_OP_BYTES) -> dict[int, str]:
    """Call index -> why replaying that op is refused, for every op of ``candidates`` (the
    replayable ones) that fails a check; ``slots`` holds every op by call index."""

    def shape_of(i: int) -> tuple[tuple[int, ...], Any]:
        op = slots[i]
        if op is None:  # the loader refuses dangling references before this runs
            raise LoadError(f"a reference to op #{i}, which the file does not hold")
        return tuple(op.shape), op.dtype

    reasons: dict[int, str] = {}
    for op in candidates:
        recorded = _bytes(tuple(op.shape), op.dtype) if op.dtype is not None else 0
        if recorded > max_op_bytes:
            reasons[op.call_index] = (f"its recorded output ({recorded:,} bytes) is larger "
                                      f"than max_op_bytes={max_op_bytes:,}")
            continue
        reason = _meta_check(op, shape_of, params, max_op_bytes)
        if reason is not None:
            reasons[op.call_index] = reason
    return reasons


def _meta_check(op: OpRecord, shape_of: Callable[[int], tuple[tuple[int, ...], Any]],
                params: Params, max_op_bytes: int) -> str | None:
    name = funcs.op_type(funcs.func_name(op.func))

    def leaf(v: Any) -> Any:
        return _on_meta(v, shape_of, params)

    try:
        args = map_arg(op.args, leaf)
        kwargs = {k: map_arg(v, leaf) for k, v in op.kwargs.items()}
        if "generator" in kwargs:
            kwargs["generator"] = None
        if "device" in kwargs:
            kwargs["device"] = "meta"
        with torch.device("meta"):  # factories too: nothing here ever gets real memory
            out = op.func(*args, **kwargs)
        if out is None and op.mutates is not None:
            out = args[op.mutates]
        out = _pick(out, op.out_index)
    except Exception as e:  # noqa: BLE001 - meta cannot run everything; judged below
        if _TAKES_SIZE.match(name):
            return (f"its output size could not be checked before running "
                    f"({type(e).__name__} on the meta device)")
        return None
    if not isinstance(out, torch.Tensor):
        return None
    if tuple(out.shape) != tuple(op.shape):
        return (f"its recorded arguments give shape {tuple(out.shape)}, but the file records "
                f"{tuple(op.shape)} (the file was edited)")
    size = _bytes(tuple(out.shape), out.dtype)
    if size > max_op_bytes:
        return f"its output ({size:,} bytes) is larger than max_op_bytes={max_op_bytes:,}"
    return None
