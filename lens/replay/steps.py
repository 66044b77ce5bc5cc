"""Replay steps: what re-executing one recorded op takes, read once from its record.

Replay runs hundreds of ops per pass, many passes per sweep, and in the dispatch-bound
regime each torch call costs a few microseconds: reading a dozen record fields, walking
the argument template and testing for modes, random draws and writes on every op would
cost more than the call. :func:`prepare` reads a record once and keeps what the
:class:`~lens.replay.interpreter.Interpreter` needs, sorted by how it must run:

* ``PLAIN``: call the function on the materialized arguments, nothing else to arrange;
* ``NO_GRAD``: the same, for an op recorded under ``torch.no_grad()`` and nothing else:
  plain while grad is off (as sweeps replay), else guarded (grad switched off for it);
* ``GUARDED``: an executed op that needs the careful path — a recorded mode or generator
  state, an argument it writes into (in place, ``out=``, running statistics), or an op
  replay must refuse (a random op without generator state, ``torch.autograd.grad``);
* ``FORWARD``: an output or identity op, the value of its parent;
* ``READ``: an input, buffer or constant, read from the values given or its payload;
* ``UNKNOWN``: a kind replay does not know (an error when run).

A flat argument template (no nested tuples or lists: most calls) is materialized by
filling the op references and parameters into a copy of it; a nested one goes through
:func:`~lens.capture.template.map_arg`. Steps hold the record (for error messages, made
only when raising) and nothing of the trace, so a prepared plan may be kept while the
trace lives without keeping it alive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch

from ..capture import modes, rng, storage
from ..capture.records import BUFFER, CONSTANT, IDENTITY, INPUT, OP, OUTPUT, OpRecord, ParamRef, Ref

PLAIN, NO_GRAD, GUARDED, FORWARD, READ, UNKNOWN = range(6)

_AUTOGRAD_GRAD = torch.autograd.grad


class Step(NamedTuple):
    """One op's replay, prepared (see the module doc). For a flat template, ``refs`` and
    ``params`` are the (position, call index) and (position, parameter name) slots of the
    positional arguments, ``kwrefs`` and ``kwparams`` those of the keywords (by name);
    ``nested`` says the templates must be walked instead."""

    call_index: int
    code: int
    func: Any
    args: tuple[Any, ...]
    refs: tuple[tuple[int, int], ...]
    params: tuple[tuple[int, str], ...]
    kwargs: dict[str, Any]
    kwrefs: tuple[tuple[str, int], ...]
    kwparams: tuple[tuple[str, str], ...]
    nested: bool
    dtype: torch.dtype | None
    out_index: tuple[int | str, ...]
    call_id: int
    record: OpRecord


def prepare(record: OpRecord) -> Step:
    """The replay step of ``record``."""
    kind = record.kind
    if kind != OP:
        code = (FORWARD if kind in (OUTPUT, IDENTITY)
                else READ if kind in (INPUT, BUFFER, CONSTANT) else UNKNOWN)
        return Step(record.call_index, code, None, (), (), (), {}, (), (), False, None, (),
                    record.call_id, record)
    args, kwargs = record.args, record.kwargs
    refs: list[tuple[Any, Any]] = []
    params: list[tuple[Any, Any]] = []
    nested = _slots(enumerate(args), refs, params)
    kwrefs: list[tuple[Any, Any]] = []
    kwparams: list[tuple[Any, Any]] = []
    if kwargs:
        nested = _slots(kwargs.items(), kwrefs, kwparams) or nested
    code = (GUARDED if needs_guard(record)
            else PLAIN if record.mode is None else NO_GRAD)
    return Step(record.call_index, code, record.func, tuple(args), tuple(refs), tuple(params),
                kwargs, tuple(kwrefs), tuple(kwparams), nested, record.dtype,
                record.out_index, record.call_id, record)


def _slots(items: Iterable[tuple[Any, Any]], refs: list[tuple[Any, Any]],
           params: list[tuple[Any, Any]]) -> bool:
    """Collect the op and parameter slots of a flat template into ``refs`` and
    ``params``; True if it is not flat (a list, or a tuple holding a reference or a list,
    which :func:`~lens.capture.template.map_arg` rebuilds on each call)."""
    nested = False
    for key, a in items:
        t = type(a)
        if t is Ref:
            refs.append((key, a.op))
        elif t is ParamRef:
            params.append((key, a.name))
        elif t is list or (t is tuple and not _constant(a)) or isinstance(a, (Ref, ParamRef)):
            nested = True
    return nested


def _constant(value: tuple[Any, ...]) -> bool:
    """A tuple of plain values (nested tuples included): safe to pass as it is."""
    for v in value:
        t = type(v)
        if t is list or isinstance(v, (Ref, ParamRef)) or (t is tuple and not _constant(v)):
            return False
    return True


def prepare_all(records: Iterable[OpRecord]) -> tuple[Step, ...]:
    """The steps of ``records``, in their order: a plan to run again and again."""
    return tuple(prepare(r) for r in records)


def needs_guard(record: OpRecord) -> bool:
    """Whether an executed op needs more than a call: a recorded mode (other than
    no_grad alone) or generator state, an argument it writes into, a random draw, or
    ``torch.autograd.grad``."""
    func, mode = record.func, record.mode
    return ((mode is not None and mode != modes.NO_GRAD) or record.rng is not None
            or record.mutates is not None or "out" in record.kwargs
            or func is _AUTOGRAD_GRAD or storage.has_side_writes(func)
            or is_stochastic(record))


def is_stochastic(op: Any) -> bool:
    """Ops whose recomputation draws random numbers (see :mod:`lens.capture.rng`); ``op``
    is an op or its record."""
    name = op.func_name
    return op.kind == OP and rng.may_draw(name) and rng.draws(name, op.args, op.kwargs)
