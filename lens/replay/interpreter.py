"""Re-execute a recorded graph op by op, without running the model's Python.

The shape is torch.fx's ``Interpreter``: values are keyed by op, each op kind has one
overridable method, and a failure is re-raised as :class:`ReplayError` naming the op's
label and, when recorded, the source line that ran it at capture time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..capture import modes, rng, storage
from ..capture.frames import frames
from ..capture.records import OpRecord, ParamRef, Ref
from ..capture.template import map_arg
from ..errors import PayloadError, ReplayError
from ..tracing import Op, Trace
from .steps import (
    _AUTOGRAD_GRAD,
    FORWARD,
    GUARDED,
    NO_GRAD,
    PLAIN,
    READ,
    Step,
    is_stochastic,
    prepare,
    prepare_all,
)


class Interpreter:
    """Recompute ops of ``trace`` from their recorded functions.

    ``values`` maps call indices to tensors that replace recorded payloads (edits, or
    values computed earlier). Ops not recomputed are read from their saved payloads.
    Each op runs from its prepared :class:`~lens.replay.steps.Step`; :meth:`run_steps`
    runs a plan prepared once (:func:`~lens.replay.steps.prepare_all`) as often as wanted.
    """

    def __init__(self, trace: Trace, values: Mapping[int, Tensor] | None = None,
                 params: Mapping[str, Tensor] | None = None) -> None:
        self.trace = trace
        self.env: dict[int, Tensor] = dict(values or {})
        self.params = params if params is not None else trace.param_values
        self._calls: dict[int, Any] = {}  # call_id -> raw output of a multi-output call
        cls = type(self)
        # the inlined loop of run_steps stands for run_op and value: only when not overridden
        self._inline = cls.run_op is Interpreter.run_op and cls.value is Interpreter.value

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
        views = list(ops)
        return self.run_steps(prepare_all([op.record for op in views]), views)

    def run_steps(self, steps: Sequence[Step], views: Sequence[Op] | None = None
                  ) -> dict[int, Tensor]:
        """Recompute prepared ``steps`` (in execution order); returns the environment.
        ``views``: the ops the steps were prepared from, to name in errors."""
        env = self.env
        if not self._inline:  # a subclass's run_op, on a view of each op
            for i, step in enumerate(steps):
                env[step.call_index] = self.run_op(self._op(step, _view(views, i)))
            return env
        if torch._C._is_any_autocast_enabled():  # every op under its recorded mode
            for i, step in enumerate(steps):
                env[step.call_index] = self._run(step, _view(views, i))
            return env
        env_get, value, params, run = env.get, self.value, self.params, self._run
        calls = self._calls
        top = PLAIN if torch.is_grad_enabled() else NO_GRAD  # the codes run inline
        i = 0
        try:
            for i, (ci, code, func, args, refs, prefs, kwargs, kwrefs, kwprefs, nested,
                    dtype, out_index, call_id, _) in enumerate(steps):
                if code > top or nested:  # the general path
                    env[ci] = run(steps[i], _view(views, i))
                    continue
                out = calls.get(call_id) if out_index else None
                if out is None:
                    if refs or prefs:
                        a = list(args)
                        for k, c in refs:
                            v = env_get(c)
                            a[k] = v if v is not None else value(c)
                        for k, name in prefs:
                            a[k] = params[name]
                        pos: Sequence[Any] = a
                    else:
                        pos = args
                    if kwrefs or kwprefs:
                        kwargs = dict(kwargs)
                        for key, c in kwrefs:
                            v = env_get(c)
                            kwargs[key] = v if v is not None else value(c)
                        for key, name in kwprefs:
                            kwargs[key] = params[name]
                    out = func(*pos, **kwargs)
                    if out_index:
                        calls[call_id] = out
                for j in out_index:
                    out = out[j]
                if dtype is not None and isinstance(out, Tensor) and out.dtype != dtype:
                    raise _dtype_error(out, steps[i].record, self._name(steps[i], views, i))
                env[ci] = out
        except (ReplayError, PayloadError):
            raise
        except Exception as e:
            raise self._failed(e, steps[i], _view(views, i)) from e
        return env

    def run_op(self, op: Op) -> Tensor:
        return self._run(prepare(op.record), op)

    def run_step(self, step: Step) -> Tensor:
        """One prepared step, as :meth:`run_op` runs an op (errors name the step's op)."""
        return self._run(step, None)

    def _run(self, step: Step, view: Op | None) -> Tensor:
        """One step, errors named after ``view`` (or the step's record)."""
        try:
            code = step.code
            if code <= GUARDED:
                return self._call(step, view)
            if code == FORWARD:
                return self.value(step.record.parent_idx[0])
            if code == READ:
                return self.value(step.call_index)
            raise ReplayError(
                f"Unknown op kind {step.record.kind!r} at {self._op(step, view).label}.")
        except (ReplayError, PayloadError):
            raise
        except Exception as e:
            raise self._failed(e, step, view) from e

    def _failed(self, e: Exception, step: Step, view: Op | None) -> ReplayError:
        op = self._op(step, view)
        where = ""
        if op.code:
            at = frames(op.code)[0]
            where = f" Recorded at {at.file}:{at.line_number} in {at.func_name}()."
        return ReplayError(
            f"Replaying {op.label} ({op.func_name}) failed: {type(e).__name__}: {e}."
            f"{where}")

    def _op(self, step: Step, view: Op | None) -> Op:
        return view if view is not None else Op(self.trace, step.record)

    def _name(self, step: Step, views: Sequence[Op] | None, i: int) -> str:
        return self._op(step, _view(views, i)).label

    def call_function(self, op: Op) -> Tensor:
        return self._call(prepare(op.record), op)

    def _call(self, step: Step, view: Op | None = None) -> Tensor:
        """Run an executed op's step: arguments materialized, the function called (as
        :meth:`execute` says for a guarded one), a multi-output call's output shared."""
        rec = step.record
        out_index = step.out_index
        cached = self._calls.get(step.call_id) if out_index else None
        if cached is None:
            # under autocast, every op runs as execute() says (under its recorded mode)
            code = step.code
            guarded = (code == GUARDED or (code == NO_GRAD and torch.is_grad_enabled())
                       or torch._C._is_any_autocast_enabled())
            args, kwargs = self._args(step, guarded)
            if guarded:
                mutated = rec.mutates
                args = private_copies(rec, args, kwargs)
                out = self._execute(step, args, kwargs, view)
                if out is None and mutated is not None:
                    out = args[mutated]
            else:
                out = step.func(*args, **kwargs)
            if out_index:
                self._calls[step.call_id] = out
            cached = out
        for k in out_index:
            cached = cached[k]
        dtype = step.dtype
        if isinstance(cached, Tensor) and dtype is not None and cached.dtype != dtype:
            raise _dtype_error(cached, rec, self._op(step, view).label)
        return cached  # type: ignore[no-any-return]

    def _args(self, step: Step, fresh: bool) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The step's arguments, materialized; ``fresh``: a new keyword dict even when
        the template's would do (the guarded path writes into it)."""
        if step.nested:
            kwargs = {k: self.materialize(v) for k, v in step.kwargs.items()}
            return self.materialize(step.args), kwargs
        args = step.args
        if step.refs or step.params:
            a = list(args)
            for k, c in step.refs:
                a[k] = self.value(c)
            for k, name in step.params:
                a[k] = self.params[name]
            args = tuple(a)
        kwargs = step.kwargs
        if fresh or step.kwrefs or step.kwparams:
            kwargs = dict(kwargs)
            for key, c in step.kwrefs:
                kwargs[key] = self.value(c)
            for key, name in step.kwparams:
                kwargs[key] = self.params[name]
        return args, kwargs

    def execute(self, op: Op, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call ``op``'s function as capture did: under its recorded mode (autocast,
        grad) and, for a random op, from its recorded generator state. Every re-execution
        (fork replay, sweeps, validate, facet edits) goes through here."""
        return self._execute(prepare(op.record), args, kwargs, op)

    def _execute(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any],
                 view: Op | None) -> Any:
        rec = step.record
        state = rec.rng
        if state is None and is_stochastic(rec):
            op = self._op(step, view)
            raise ReplayError(
                f"{op.label} ({op.func_name}) draws random numbers and cannot be replayed: "
                "its trace holds no generator state for it (traces loaded from disk do "
                "not keep one), so replay cannot redraw what it drew at capture. "
                "Re-capture with tl.trace and replay that trace, or use "
                "fork().rerun(model, x).")
        if rec.func is _AUTOGRAD_GRAD:
            raise ReplayError(
                f"{self._op(step, view).label} is torch.autograd.grad: it runs the autograd "
                "engine over the graph built at capture, which replay does not rebuild, so "
                "it cannot be recomputed from saved values. Use fork().rerun(model, x) to "
                "apply this edit live.")
        func, mode = rec.func, rec.mode
        if state is None and not modes.needs_context(mode):
            return func(*args, **kwargs)
        with modes.applied(mode):
            if state is None:
                return func(*args, **kwargs)
            with rng.restored(state, kwargs) as kw:
                return func(*args, **kw)


def _view(views: Sequence[Op] | None, i: int) -> Op | None:
    return views[i] if views is not None else None


def _dtype_error(out: Tensor, rec: OpRecord, label: str) -> ReplayError:
    return ReplayError(
        f"Replaying {label} ({rec.func_name}) gave {out.dtype}, but capture "
        f"recorded {rec.dtype}: the op ran under a mode (autocast) this trace does "
        "not record, so replay would return different numbers. Re-capture it with "
        "tl.trace and replay that trace.")


def private_copies(op: Op | OpRecord, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> tuple[Any, ...]:
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
    return [Op(trace, rec) for rec in dependents(trace, sources)]


def dependents(trace: Trace, sources: Iterable[int], *, sources_too: bool = False
               ) -> list[OpRecord]:
    """The records after the first of ``sources`` whose value depends on any of them, in
    order. A later source is one of them only with ``sources_too`` (it is then recomputed
    from the earlier ones, as a batched sweep does for the cells patched before it)."""
    dirty = set(sources)
    start = min(dirty, default=None)
    if start is None:
        return []
    found: list[OpRecord] = []
    for rec in trace.kept:
        ci = rec.call_index
        if ci <= start or (ci in dirty and not sources_too):
            continue
        if any(p in dirty for p in rec.parent_idx):
            dirty.add(ci)
            found.append(rec)
    return found


def tensors_equal(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.device != b.device:
            b = b.to(a.device)
        return bool(torch.equal(a, b)) or bool(
            a.is_floating_point() and torch.allclose(a, b, equal_nan=True, rtol=0, atol=0))
    return a is b or a == b
