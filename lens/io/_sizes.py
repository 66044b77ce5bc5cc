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
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..capture.records import OP, ParamRef, Ref
from ..trace import Op

MAX_OP_BYTES = 8 * 2**30  # per op; tl.load(..., max_op_bytes=...) raises or lowers it

# Functions whose arguments include sizes or counts that decide how much they allocate.
_TAKES_SIZE = re.compile(
    r"^(new_)?(zeros|ones|full|empty|empty_strided|rand|randn|randint|randperm|normal)(_like)?$"
    r"|^(arange|range|linspace|logspace|eye|tril_indices|triu_indices|repeat|repeat_interleave|"
    r"tile|expand|expand_as|broadcast_to|one_hot|bincount|histc|histogram|pad|interpolate|"
    r"upsample\w*|unfold|fold|kron|cartesian_prod|combinations|block_diag|as_strided\w*|"
    r"resize_as_|multinomial|embedding_bag|pixel_shuffle)$")


def _meta_value(template: Any, shape_of: Callable[[int], tuple[tuple[int, ...], Any]],
                params: dict[str, tuple[tuple[int, ...], int, torch.dtype, bool]]) -> Any:
    if isinstance(template, Ref):
        shape, dtype = shape_of(template.op)
        return torch.empty(shape, dtype=dtype, device="meta")
    if isinstance(template, ParamRef):
        shape, _, dtype, _ = params[template.name]
        return torch.empty(shape, dtype=dtype, device="meta")
    if isinstance(template, torch.Tensor):
        return template.to("meta")
    if type(template) in (tuple, list):
        return type(template)(_meta_value(t, shape_of, params) for t in template)
    if isinstance(template, dict):
        return {k: _meta_value(v, shape_of, params) for k, v in template.items()}
    if isinstance(template, torch.device):
        return torch.device("meta")
    return template


def _pick(out: Any, index: Sequence[Any]) -> Any:
    for k in index:
        out = out[k]
    return out


def _bytes(shape: tuple[int, ...], dtype: Any) -> int:
    size = torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 8
    return math.prod(shape) * size


def unreplayable_reasons(ops: Sequence[Op],
                         params: dict[str, tuple[tuple[int, ...], int, torch.dtype, bool]],
                         max_op_bytes: int = MAX_OP_BYTES) -> dict[int, str]:
    """Call index -> why replaying that op is refused, for every op that fails a check."""
    by_call = {op.call_index: op for op in ops}

    def shape_of(i: int) -> tuple[tuple[int, ...], Any]:
        op = by_call[i]
        return tuple(op.shape), op.dtype

    reasons: dict[int, str] = {}
    for op in ops:
        if op.kind != OP or not callable(op.func) or type(op.func).__name__ == "NotReplayable":
            continue
        recorded = _bytes(tuple(op.shape), op.dtype) if op.dtype is not None else 0
        if recorded > max_op_bytes:
            reasons[op.call_index] = (f"its recorded output ({recorded:,} bytes) is larger "
                                      f"than max_op_bytes={max_op_bytes:,}")
            continue
        reason = _meta_check(op, shape_of, params, max_op_bytes)
        if reason is not None:
            reasons[op.call_index] = reason
    return reasons


def _meta_check(op: Op, shape_of: Callable[[int], tuple[tuple[int, ...], Any]],
                params: dict[str, tuple[tuple[int, ...], int, torch.dtype, bool]],
                max_op_bytes: int) -> str | None:
    name = op.func_name.strip("_") if op.func_name.startswith("__") else op.func_name
    try:
        args = _meta_value(op.args, shape_of, params)
        kwargs = _meta_value(op.kwargs, shape_of, params)
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
