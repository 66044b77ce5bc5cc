"""Re-execute a recorded graph op by op, without running the model's Python.

The shape is torch.fx's ``Interpreter``: values are keyed by op, each op kind has one
overridable method, and a failure is re-raised as :class:`ReplayError` naming the op's
label and, when recorded, the source line that ran it at capture time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..capture import modes, rng, storage
from ..capture.frames import frames
from ..capture.records import BUFFER, CONSTANT, IDENTITY, INPUT, OP, OUTPUT, ParamRef, Ref
from ..capture.template import map_arg
from ..errors import PayloadError, ReplayError
from ..tracing import Op, Trace


class Interpreter:
    """Recompute ops of ``trace`` from their recorded functions.

    ``values`` maps call indices to tensors that replace recorded payloads (edits, or
    values computed earlier). Ops not recomputed are read from their saved payloads.
    """

    def __init__(self, trace: Trace, values: Mapping[int, Tensor] | None = None,
                 params: Mapping[str, Tensor] | None = None) -> None:
        self.trace = trace
        self.env: dict[int, Tensor] = dict(values or {})
        self.params = params if params is not None else trace.param_values
        self._calls: dict[int, Any] = {}  # call_id -> raw output of a multi-output call

    # ------------------------------------------------------------------ values
    def value(self, call_index: int) -> Tensor:
        v = self.env.get(call_index)
        if v is not None:
            return v
        op = self.trace.op_at_call(call_index)
        if op is None or op.payload is None:
            label = op.label if op is not None else f"#{call_index}"
            raise PayloadError(
                f"Replay needs the saved output of {label}, but it was not saved. "
                "Re-capture with tl.trace(model, x, intervention_ready=True) (or save=True) "
                "so replay can read every op it does not recompute.")
        return op.payload

    def materialize(self, template: Any) -> Any:
        """Turn an argument template back into values."""
        return map_arg(template, self._leaf)

    def _leaf(self, leaf: Any) -> Any:
        if isinstance(leaf, Ref):
            return self.value(leaf.op)
        if isinstance(leaf, ParamRef):
            return self.params[leaf.name]
        return leaf

    # ------------------------------------------------------------------ running
    def run(self, ops: Iterable[Op]) -> dict[int, Tensor]:
        """Recompute ``ops`` (in execution order); returns the environment."""
        for op in ops:
            self.env[op.call_index] = self.run_op(op)
        return self.env

    def run_op(self, op: Op) -> Tensor:
        try:
            kind = op.kind
            if kind == OP:
                return self.call_function(op)
            if kind in (OUTPUT, IDENTITY):
                return self.value(op.parent_idx[0])
            if kind in (INPUT, BUFFER, CONSTANT):
                return self.value(op.call_index)
            raise ReplayError(f"Unknown op kind {kind!r} at {op.label}.")
        except (ReplayError, PayloadError):
            raise
        except Exception as e:
            where = ""
            if op.code:
                at = frames(op.code)[0]
                where = f" Recorded at {at.file}:{at.line_number} in {at.func_name}()."
            raise ReplayError(
                f"Replaying {op.label} ({op.func_name}) failed: {type(e).__name__}: {e}."
                f"{where}") from e

    def call_function(self, op: Op) -> Tensor:
        cached = self._calls.get(op.call_id)
        if cached is None:
            args = self.materialize(op.args)
            kwargs = {k: self.materialize(v) for k, v in op.kwargs.items()}
            mutated = op.mutates
            args = private_copies(op, args, kwargs)
            out = self.execute(op, args, kwargs)
            if out is None and mutated is not None:
                out = args[mutated]
            if op.out_index:
                self._calls[op.call_id] = out
            cached = out
        if op.out_index:
            for k in op.out_index:
                cached = cached[k]
        if isinstance(cached, Tensor) and op.dtype is not None and cached.dtype != op.dtype:
            raise ReplayError(
                f"Replaying {op.label} ({op.func_name}) gave {cached.dtype}, but capture "
                f"recorded {op.dtype}: the op ran under a mode (autocast) this trace does "
                "not record, so replay would return different numbers. Re-capture it with "
                "tl.trace and replay that trace.")
        return cached  # type: ignore[no-any-return]

    def execute(self, op: Op, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call ``op``'s function as capture did: under its recorded mode (autocast,
        grad) and, for a random op, from its recorded generator state. Every re-execution
        (fork replay, sweeps, validate, facet edits) goes through here."""
        state = op.rng
        if state is None and is_stochastic(op):
            raise ReplayError(
                f"{op.label} ({op.func_name}) draws random numbers and cannot be replayed: "
                "its trace holds no generator state for it (traces loaded from disk do "
                "not keep one), so replay cannot redraw what it drew at capture. "
                "Re-capture with tl.trace and replay that trace, or use "
                "fork().rerun(model, x).")
        if op.func is _AUTOGRAD_GRAD:
            raise ReplayError(
                f"{op.label} is torch.autograd.grad: it runs the autograd engine over the "
                "graph built at capture, which replay does not rebuild, so it cannot be "
                "recomputed from saved values. Use fork().rerun(model, x) to apply this "
                "edit live.")
        if state is None and not modes.needs_context(op.mode):
            return op.func(*args, **kwargs)
        with modes.applied(op.mode):
            if state is None:
                return op.func(*args, **kwargs)
            with rng.restored(state, kwargs) as kw:
                return op.func(*args, **kw)


def private_copies(op: Op, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """``args`` with every tensor the op writes into replaced by a copy (``kwargs`` is
    updated in place): replay never writes into a saved payload, a parameter, a buffer or
    the user's input. Covers the in-place target, ``out=`` and side effects (train-mode
    ``batch_norm``'s running statistics)."""
    slots: list[int | str] = [] if op.mutates is None else [op.mutates]
    if "out" in kwargs:
        slots.append("out")
    slots += storage.side_writes(op.func, args, kwargs)
    if not slots:
        return args
    copied = list(args)
    for slot in slots:
        if isinstance(slot, str):
            kwargs[slot] = _copy(kwargs[slot])
        else:
            copied[slot] = _copy(copied[slot])
    return tuple(copied)


def _copy(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    return value


def downstream(trace: Trace, sources: Iterable[int]) -> list[Op]:
    """Ops whose value depends on any of ``sources`` (call indices), sources excluded."""
    dirty = set(sources)
    cone: list[Op] = []
    start = min(dirty, default=None)
    if start is None:
        return cone
    for op in trace.ops:
        if op.call_index <= start or op.call_index in dirty:
            continue
        if any(p in dirty for p in op.parent_idx):
            dirty.add(op.call_index)
            cone.append(op)
    return cone


def is_stochastic(op: Op) -> bool:
    """Ops whose recomputation draws random numbers (see :mod:`lens.capture.rng`)."""
    name = op.func_name
    return op.kind == OP and rng.may_draw(name) and rng.draws(name, op.args, op.kwargs)


_AUTOGRAD_GRAD = torch.autograd.grad


def tensors_equal(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.device != b.device:
            b = b.to(a.device)
        return bool(torch.equal(a, b)) or bool(
            a.is_floating_point() and torch.allclose(a, b, equal_nan=True, rtol=0, atol=0))
    return a is b or a == b
