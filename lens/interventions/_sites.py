"""The place an action edits, as the action sees it: the op, its inputs, other traces.

An action is given the value to edit and a :class:`Site`. The site is what differs
between editing live (inside the capture engine), while replaying a fork, and when an
action is called by hand on a finished trace's op (``action(value, op)``): where the op's
input tensors come from. Everything else (naming the op in errors, finding the same op in
another trace of the same model) is shared here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import Tensor

from ..capture.records import ParamRef, Ref
from ..capture.template import template_refs, tensor_leaves
from ..errors import InterventionError, PayloadError
from ..tracing import Op


def describe(op: Any) -> str:
    """A name for ``op`` usable in messages, with or without final labels."""
    if op is None:
        return "an op"
    try:
        return f"{op.label} (op #{op.call_index}, {op.func_name})"
    except AttributeError:  # a live record: labels are assigned after the forward pass
        where = f" in module {op.module_ctx[-1].key}" if op.module_ctx else ""
        return f"op #{op.call_index} ({op.func_name}{where})"


class Site:
    """Where an action applies: ``op`` (the record), ``full`` (the whole value before any
    ``.at[...]`` restriction) and ``inputs()`` (the tensors the op or module consumed)."""

    __slots__ = ("op", "full", "exit_call")

    def __init__(self, op: Any, full: Tensor, exit_call: Any = None) -> None:
        self.op = op
        self.full = full
        self.exit_call = exit_call  # the module call at whose exit the edit applies

    @property
    def call_index(self) -> int:
        return int(getattr(self.op, "call_index", 0))

    def name(self) -> str:
        return describe(self.op)

    def inputs(self) -> list[Tensor]:
        """Tensor inputs: the module call's inputs at a module exit, else the op's
        arguments that are activations (parameters left out), in argument order."""
        raise InterventionError(
            f"The inputs of {self.name()} are not available here; call the action on an "
            "op of a trace (action(value, trace_op)), or use it in tl.when / fork().")

    def params(self) -> dict[str, Tensor]:
        """The parameters the op was called with, by name (a fused ``nn.LSTM`` call takes
        its weights as arguments)."""
        raise InterventionError(
            f"The parameters of {self.name()} are not available here; call the action on "
            "an op of a trace (action(value, trace_op)), or use it in tl.when / fork().")

    def _no_inplace(self) -> None:
        op = self.op
        if getattr(op, "mutates", None) is not None and self.exit_call is None:
            raise InterventionError(
                f"{self.name()} is an in-place op: its input was overwritten by the op, so "
                "its inputs cannot be given to a replacement. Select the op that produced "
                "the input instead, or the enclosing module's output (tl.module(...)).")


class LiveSite(Site):
    """Inside the capture engine: inputs are the live arguments of the intercepted call."""

    __slots__ = ("recorder",)

    def __init__(self, op: Any, full: Tensor, recorder: Any, exit_call: Any = None) -> None:
        super().__init__(op, full, exit_call)
        self.recorder = recorder

    def inputs(self) -> list[Tensor]:
        self._no_inplace()
        current = getattr(self.recorder, "current_inputs", None)
        if current is None:
            return super().inputs()
        args, kwargs = current
        if self.exit_call is not None:  # the module call's inputs that lens recorded
            tmap = self.recorder.tensor_map
            out: dict[int, Tensor] = {}
            for _, t in tensor_leaves((args, kwargs), ()):
                hit = tmap.get(id(t))
                if hit is not None and hit[1]() is t and hit[0] not in out:
                    out[hit[0]] = t
            return list(out.values())
        pairs = list(_paired(self.op.args, args)) + [
            p for k, v in self.op.kwargs.items() for p in _paired(v, kwargs.get(k))]
        return [value for _, value in pairs]

    def params(self) -> dict[str, Tensor]:
        current = getattr(self.recorder, "current_inputs", None)
        if current is None or self.exit_call is not None:
            return super().params()
        args, kwargs = current
        out: dict[str, Tensor] = {}
        for template, value in zip(self.op.args, args, strict=False):
            out.update(_paired_params(template, value))
        for k, template in self.op.kwargs.items():
            out.update(_paired_params(template, kwargs.get(k)))
        return out


class ValueSite(Site):
    """Inputs read through ``value_of(call_index)`` (a replay's environment, or saved
    payloads)."""

    __slots__ = ("value_of",)

    def __init__(self, op: Any, full: Tensor, value_of: Callable[[int], Tensor],
                 exit_call: Any = None) -> None:
        super().__init__(op, full, exit_call)
        self.value_of = value_of

    def inputs(self) -> list[Tensor]:
        self._no_inplace()
        if self.exit_call is not None:  # as the module left them (in-place ops included)
            return [self.value_of(_latest(_records_of(self.op), i, self.exit_call))
                    for i in self.exit_call.input_ops]
        refs = [r for r in template_refs(self.op.args)]
        for v in self.op.kwargs.values():
            refs.extend(template_refs(v))
        return [self.value_of(r.op) for r in refs]

    def params(self) -> dict[str, Tensor]:
        trace = getattr(self.op, "trace", None)
        if trace is None or self.exit_call is not None:
            return super().params()
        return dict(trace.param_values)


def trace_site(op: Any, full: Tensor) -> Site:
    """The site of an op of a finished trace (inputs from saved payloads)."""
    if not isinstance(op, Op):
        return Site(op, full)
    records = op.trace.record_table
    return ValueSite(op, full, lambda i: _saved(records[i], "the inputs of " + describe(op)))


def _records_of(op: Any) -> Sequence[Any]:
    """Every record of the recording ``op`` belongs to, by call index: a finished trace's
    table, or the live recording while the model runs."""
    return op.trace.record_table if isinstance(op, Op) else op.recording


def same_site(source: Any, op: Any, what: str) -> Tensor:
    """The saved value of ``op``'s counterpart in ``source`` (a trace of the same model),
    matched by call order and checked to be the same function."""
    if op is None or not hasattr(op, "call_index"):
        raise InterventionError(
            f"{what} takes the value of the same op in another trace, so it needs the op: "
            "use it in tl.when / fork().intervene, or call it as action(value, op).")
    records = source.record_table
    ci = op.call_index
    if ci >= len(records):
        raise InterventionError(
            f"{what}: the source trace has {len(records)} recorded ops, so it has no "
            f"counterpart for {describe(op)}. The source must be a trace of the same model "
            "running the same ops (only the input values may differ).")
    src = records[ci]
    if (src.func_name, src.kind, src.out_index) != (op.func_name, op.kind, op.out_index):
        raise InterventionError(
            f"{what}: the source trace differs from this run at op #{ci}: the source ran "
            f"{describe(src)}, this run {describe(op)}. Sites are matched by call order, so "
            "the source must be a trace of the same model running the same ops.")
    return _saved(src, f"{what} at {describe(op)}")


def _saved(op: Any, what: str) -> Tensor:
    if op.payload is None:
        raise PayloadError(
            f"{what} needs the saved output of {describe(op)}, which was not saved. "
            "Re-capture that trace with tl.trace(model, x, intervention_ready=True) "
            "(or save=True).")
    return op.payload  # type: ignore[no-any-return]


def _latest(records: Any, ci: int, call: Any) -> int:
    """The op holding the value of op ``ci``'s tensor when ``call`` returned: follows
    in-place ops inside the call that mutated that tensor (``nn.ReLU(inplace=True)``)."""
    cur = ci
    while True:
        nxt = None
        for c in records[cur].child_idx:
            rec = records[c]
            if (rec.mutates is not None and call.first_op <= c <= call.last_op
                    and rec.args[rec.mutates] == Ref(cur)):
                nxt = c
                break
        if nxt is None:
            return cur
        cur = nxt






def _paired_params(template: Any, actual: Any) -> Iterator[tuple[str, Tensor]]:
    """(name, live tensor) for each parameter in an argument, walking its template."""
    if isinstance(template, ParamRef):
        yield template.name, actual
    elif type(template) in (tuple, list) and isinstance(actual, (tuple, list)):
        for t, a in zip(template, actual, strict=False):
            yield from _paired_params(t, a)


def _paired(template: Any, actual: Any) -> Iterator[tuple[Ref, Tensor]]:
    """(Ref, live tensor) for each activation in an argument, walking its template."""
    if isinstance(template, Ref):
        yield template, actual
    elif type(template) in (tuple, list) and isinstance(actual, (tuple, list)):
        for t, a in zip(template, actual, strict=False):
            yield from _paired(t, a)
