"""``trace.fork()``: edit a finished trace and replay, or rerun the model with the edits.

A :class:`Fork` is a :class:`~lens.trace.Trace` with its own op objects that share every
payload with the source (copy on write: replay swaps payload references on the fork's
ops, never writes into a tensor). ``intervene`` records edits; ``replay`` recomputes only
the ops downstream of the edited sites from recorded functions and saved payloads (no
model code runs); ``rerun`` runs the model live with the same edits, matching sites by
call order and checking the new run's graph against the source op by op.

Capture the source with ``tl.trace(model, x, intervention_ready=True)``: every payload is
kept and the random state recorded, so replay equals rerun (see ``_replay``).
"""

from __future__ import annotations

import functools
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..capture.fired import fired_on, note_fired, set_fired
from ..capture.records import CONSTANT, IDENTITY, OP, OpRecord, RecordTable, output_keys
from ..capture.stash import Stash
from ..errors import InterventionError, InterventionWarning, PayloadError
from ..replay.interpreter import tensors_equal
from ..selectors import Selector, coerce, split_call
from ..tracing import Layer, Op, OpGroup, Trace
from ._base import Action, checked
from ._base import action as as_action
from ._match import CallOrderMatcher, adapt, preserved_rng, records
from ._replay import ForkInterpreter, output_structure, refuse_severing_edits
from ._sites import ValueSite, describe
from ._splice import check_error_sources
from .rules import TARGETS, LiveRule, When

_INF = float("inf")


@dataclass(frozen=True, eq=False)
class Edit:
    """One ``intervene`` call: the rule it stands for and the sites it resolved to, each
    with the module call at whose exit it applies (None: as the op runs)."""

    spec: When
    targets: tuple[tuple[int, Any], ...]


class Fork(Trace):
    """A trace to edit: ``intervene``, then ``replay()`` or ``rerun(model, x)``."""

    def __init__(self, source: Trace) -> None:  # noqa: D107 - see fork()
        cached = _cached_names(type(source))
        self.__dict__.update({k: v for k, v in source.__dict__.items() if k not in cached})
        # Own records (lists copied, tensors shared); the layer table is shared: it holds
        # labels and call indices only.
        self.record_table = RecordTable(
            None if r is None else _copy_op(r) for r in source.record_table)
        table = weakref.ref(self.record_table)
        for r in self.record_table:
            if r is not None:
                r._ops = table
        self.kept = [self.record_table[r.call_index] for r in source.kept]
        self._by_call = {r.call_index: r for r in self.kept}
        self._views = {}
        self.options = source.options
        self.stash = Stash()
        self.source = source
        self.edits: list[Edit] = []
        self._touched: set[int] = set()

    # ------------------------------------------------------------------ editing
    def intervene(self, site: Any, action: Any, *, strict: bool = True) -> Fork:
        """Record an edit: ``action`` at ``site`` (a final label, with ``:k`` for one
        pass; a layer label for all passes; a module address such as ``'fc'`` or
        ``'fc:2'``, edited at the module's exit; a selector; or an op). Returns the fork."""
        act = as_action(action)
        ops, exit_sel = sites(self, site)
        act = adapt(self, site, ops, act)  # facet selectors edit a slice (lens.facets)
        if not ops:
            msg = (f"{site!r} matches no op of this trace; trace.find_sites(...) and "
                   "trace.labels list what exists.")
            if strict:
                raise InterventionError(msg + " Pass strict=False to allow this.")
            warnings.warn(msg, InterventionWarning, stacklevel=2)
        targets = []
        for op in ops:
            call = _exit_call(op, exit_sel) if exit_sel is not None else None
            if exit_sel is not None and call is None:
                raise InterventionError(
                    f"{site!r} selects {describe(op)}, which no module returns. Selectors "
                    "that involve tl.module(...) are decided when a module returns, so they "
                    "only reach module outputs; give the other ops their own intervene().")
            targets.append((op.call_index, call))
        self.edits.append(Edit(When(site, act, strict), tuple(targets)))
        return self

    def clear(self) -> Fork:
        """Drop every edit and restore the source's values."""
        self.edits.clear()
        self._restore()
        return self

    # ------------------------------------------------------------------ replay
    def replay(self) -> Fork:
        """Recompute the ops downstream of the edited sites; returns the fork."""
        if self.options.sliced_payloads:
            raise InterventionError(
                "This trace kept only a slice of each payload (save_at=), and replay needs "
                "whole tensors. Capture with tl.trace(..., intervention_ready=True) to "
                "replay, or edit live with tl.run(..., intervene=...).")
        self._restore()
        plan = self._plan()
        if not plan:
            return self
        src = self.source
        refuse_severing_edits(src, plan)
        interp = ForkInterpreter(src)
        base: dict[int, Tensor] = {}
        first = min(src._by_call[ci].pos for ci in plan)
        try:
            # Records, not op views: a view is made only for an edited site or a check.
            for rec in src.kept[first:]:
                ci = rec.call_index
                steps = plan.get(ci)
                if rec.kind == CONSTANT:
                    check_error_sources(Op(src, rec), functools.partial(
                        interp.changed_for, consumer=ci, base=base))
                if interp.changed(rec.parent_idx, ci, base):
                    value = interp.run_record(rec)
                    if steps is None:
                        interp.env[ci] = value
                        continue
                elif steps is None:
                    continue
                else:
                    value = interp.value(ci)
                base[ci] = value
                interp.versions[ci] = self._versions(Op(src, rec), value, steps, interp)
        except PayloadError as e:
            raise PayloadError(
                f"{e} The source trace was captured with save={src.save_spec!r} and "
                f"intervention_ready={src.options.intervention_ready}; replay "
                "reads every op it does not recompute, so capture it with "
                "tl.trace(model, x, intervention_ready=True).") from None
        values = dict(interp.env)
        for ci, versions in interp.versions.items():
            values[ci] = versions[-1][1]
        _check_branches(src, interp.env)
        for ci, value in values.items():
            mine = self._by_call.get(ci)
            if mine is not None:
                mine.payload = value
                self._touched.add(ci)
        for ci, steps in plan.items():
            note_fired(self._by_call[ci], (spec for spec, _, _ in steps))
        self.output = output_structure(src.output, self, values)
        return self

    def _versions(self, op: Op, value: Tensor, steps: list[tuple[When, Action, Any]],
                  interp: ForkInterpreter) -> list[tuple[float, Tensor]]:
        """Apply ``steps`` in order; each module-exit step starts a new version."""
        versions: list[tuple[float, Tensor]] = []
        mine = Op(self, self._by_call.get(op.call_index, op.record))  # edits go on the fork's op
        for _spec, act, call in steps:
            if call is not None and (not versions or versions[-1][0] != call.last_op):
                versions.append((call.last_op, value))
            consumer = op.call_index if call is None else call.first_op
            site = ValueSite(mine, value, functools.partial(_seen_by, interp, consumer), call)
            value = checked(act.edit(value, site, ()), value, act, site)
        versions.append((_INF, value))
        return versions

    def _plan(self) -> dict[int, list[tuple[When, Action, Any]]]:
        """Per site: (spec, action, exit call) in the order a live run applies them —
        edits as ops run first, then at each module exit, inner before outer."""
        plan: dict[int, list[tuple[int, int, int, When, Action, Any]]] = {}
        n = 0
        for edit in self.edits:
            for ci, call in edit.targets:
                key = (-1, 0) if call is None else (call.last_op, -call.depth)
                plan.setdefault(ci, []).append((*key, n, edit.spec, edit.spec.action, call))
                n += 1
        return {ci: [(s, a, c) for *_, s, a, c in sorted(steps, key=lambda t: t[:3])]
                for ci, steps in plan.items()}

    def _restore(self) -> None:
        src = self.source._by_call
        for ci in self._touched:
            mine, theirs = self._by_call[ci], src[ci]
            mine.payload = theirs.payload
            set_fired(mine, fired_on(theirs))
        self._touched.clear()
        self.output = self.source.output

    # ------------------------------------------------------------------ rerun
    def rerun(self, model: Any, *args: Any, input_kwargs: dict[str, Any] | None = None,
              save: Any = True) -> Trace:
        """Run ``model`` live with this fork's edits; returns the new trace.

        Sites are matched by call order; the run is checked op by op against the source
        up to the last site and raises naming the first op that differs. The random
        state recorded at capture (``intervention_ready=True``) is restored for the run,
        and the caller's random state is put back afterwards.
        """
        from ..tracing.api import trace

        graph = records(self.source)
        every = [ci for e in self.edits for ci, _ in e.targets]
        for ci in every:
            if graph[ci].kind not in (OP, IDENTITY):
                raise InterventionError(
                    f"{describe(graph[ci])} is a graph {graph[ci].kind} op, not computed by "
                    "the model, so a rerun cannot edit it; edit the tensor you pass in, "
                    "or use replay().")
        matcher = CallOrderMatcher(graph, max(every), "rerun") if every else None
        rules = []
        for edit in self.edits:
            targets = {ci: (None if call is None else call.key) for ci, call in edit.targets}
            rules.append(LiveRule(edit.spec, None, TARGETS, targets, matcher))
        with preserved_rng(self.options.rng_state):
            return trace(model, *args, input_kwargs=input_kwargs, save=save,
                         intervene=rules or None)

    def __repr__(self) -> str:
        return (f"<Fork of {self.model_name}: {len(self.ops)} ops, {len(self.edits)} "
                f"edit{'s' if len(self.edits) != 1 else ''}>")


def _check_branches(src: Trace, recomputed: dict[int, Tensor]) -> None:
    """Refuse a replay that changed a value Python branched on (``if t:``, a generation's
    stop test): the model would have taken another path, which replay cannot follow."""
    for ci, value in recomputed.items():
        op = src.op_at_call(ci)
        if op is None or not op.bool_used or op.payload is None:
            continue
        if not tensors_equal(value, op.payload):
            raise InterventionError(
                f"The edit changes {describe(op)}, a value the model's Python code branched "
                "on (for example a generation's stopping test): the edited run would take "
                "another path, so replay cannot reproduce it. Run the edit live instead: "
                "tl.run(model, ..., intervene=tl.when(site, action)), or fork.rerun(model, "
                "...).")


def fork(trace: Trace) -> Fork:
    """A copy of ``trace`` sharing every payload, for editing (``trace.fork()``)."""
    return Fork(trace)


def find_sites(trace: Trace, selector: Any) -> list[str]:
    """Labels of the ops a site spec selects (``trace.find_sites(...)``)."""
    return [op.label for op in sites(trace, selector)[0]]


def sites(trace: Trace, spec: Any) -> tuple[list[Op], Selector | None]:
    """The ops ``spec`` names in ``trace``, and the selector deciding at which module
    exit each is edited (None: edited as the op runs)."""
    if isinstance(spec, Op):
        return [Op(trace, trace._by_call[spec.call_index])], None
    if isinstance(spec, (Layer, OpGroup)):
        return [Op(trace, trace._by_call[op.call_index]) for op in spec], None
    if isinstance(spec, str):
        try:
            base, _ = split_call(spec)
        except Exception:  # noqa: BLE001 - not an address: a label or substring
            base = None
        if base is not None and base in trace.module_info:
            sel = coerce(spec, module_addresses=trace.module_info)
        else:
            hit = trace[spec]
            if isinstance(getattr(hit, "selector", None), Selector):  # a facet alias
                return sites(trace, hit.selector)
            if isinstance(hit, Op):
                return [hit], None
            if isinstance(hit, (Layer, OpGroup)):
                return list(hit), None
            sel = coerce(spec, module_addresses=trace.module_info)
    else:
        sel = coerce(spec, module_addresses=trace.module_info)
    sel.validate(module_addresses=trace.module_info)
    bound = sel.bind_ordinals(trace.ops)
    found = [op for op in trace.ops if bound(op)]
    return found, (sel if sel.timing == "module_exit" else None)


class _ExitView:
    """``op`` as a selector saw it at one module exit: returned by ``calls`` only."""

    def __init__(self, op: Op, calls: list[Any]) -> None:
        self._op = op
        self._calls = calls

    @property
    def module_outputs(self) -> tuple[str, ...]:
        return output_keys(self._calls)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._op, name)


def _exit_call(op: Op, sel: Selector) -> Any:
    """The first module exit at which a live run's rule would have fired on ``op``."""
    calls = list(op.output_of)
    for k in range(1, len(calls) + 1):
        if sel(_ExitView(op, calls[:k])):
            return calls[k - 1]
    return None


def _seen_by(interp: ForkInterpreter, consumer: int, ci: int) -> Tensor:
    return interp.seen_by(ci, consumer)


def _copy_op(op: OpRecord) -> OpRecord:
    """A new record with the same slot values (lists copied, tensors shared)."""
    n = OpRecord.__new__(OpRecord)
    for name in _slot_names():
        try:
            value = getattr(op, name)
        except AttributeError:  # set later (labels, gradients), not yet present
            continue
        if name == "_stash":  # the fork's own stash, starting from the source's values
            value = value.copy()
        setattr(n, name, list(value) if name in _LISTS else value)
    return n


_LISTS = frozenset({"child_idx", "output_of"})


@functools.cache
def _slot_names() -> tuple[str, ...]:
    """Every slot of a record but the link to a live recording."""
    return tuple(n for n in OpRecord.__slots__ if n not in ("__weakref__", "_ops"))


def _cached_names(cls: type) -> frozenset[str]:
    return frozenset(name for klass in cls.__mro__ for name, v in vars(klass).items()
                     if isinstance(v, functools.cached_property))
