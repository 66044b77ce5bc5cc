"""``tl.when(selector, action)``: edit ops while the model runs.

A :class:`When` is an immutable spec. ``tl.trace`` binds it to one run (``bind``), which
gives a :class:`LiveRule`: the capture engine's interceptor for that run. How the rule
decides where to fire depends on when its selector can be decided:

- ``'live'`` selectors (``tl.func``, ``tl.in_module``, ``tl.index``...) are tested on each
  op as it runs; the action edits the op's output before anything consumes it.
- ``'module_exit'`` selectors (``tl.module('fc')``, ``'fc:2'``) are tested when a module
  returns; the action edits the module's output as a forward hook would (ops inside the
  module saw the unedited value).
- Anything later (final labels such as ``'linear_1_1:2'``, ``tl.followed_by``, ordinals)
  is resolved to call indices in a reference trace of the same graph (``reference=`` or,
  if not given, a metadata-only pre-pass of the plain model) and fires as those ops run;
  the run is checked op by op against the reference up to the last site.

After the forward pass, a rule that matched nothing raises :class:`InterventionError`
(or warns, with ``strict=False``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..capture.fired import note_fired
from ..capture.interceptors import Interceptor
from ..capture.known import check_names
from ..capture.records import IDENTITY, OP
from ..errors import InterventionError, InterventionWarning, expect
from ..selectors import Label, LabelContains, Selector, coerce
from ._base import Action, Restricted, checked
from ._base import action as as_action
from ._match import CallOrderMatcher, adapt, records, reference_pass, resolve
from ._sites import LiveSite, describe
from ._splice import SpliceModule

LIVE, EXIT, TARGETS = "live", "module_exit", "targets"


def check_labels(ref: Any, sel: Selector) -> None:
    """Raise SelectorError (with close matches) if ``sel`` names a label ``ref`` lacks."""
    if any(isinstance(node, (Label, LabelContains)) for node in sel.walk()):
        sel.validate(labels=ref.keys())


@dataclass(frozen=True, eq=False, repr=False)
class When:
    """Apply ``action`` to the output of every op ``site`` selects, as the model runs."""

    site: Any
    action: Action
    strict: bool = True
    reference: Any = None

    def selector(self, module_addresses: Any = None) -> Selector:
        return coerce(self.site, module_addresses=module_addresses)

    def validate(self, *, module_addresses: Any = None, labels: Any = None) -> None:
        sel = self.selector(module_addresses)
        sel.validate(module_addresses=module_addresses, labels=labels)
        check_names(sel, module_addresses)

    def added_modules(self, module_addresses: Any) -> set[str]:
        """Addresses this rule's action records modules under (a spliced module's), so
        other selectors of the run may name them."""
        act = self.action
        while isinstance(act, Restricted):
            act = act.action
        if isinstance(act, SpliceModule):
            return act.addresses(self.site, module_addresses)
        return set()

    def bind(self, context: dict[str, Any]) -> LiveRule:
        """The interceptor for one run. ``context`` holds model, args, kwargs and
        module_addresses (rules of one call share it, and one reference pre-pass)."""
        sel = self.selector(context.get("module_addresses"))
        timing = sel.timing
        if timing in (LIVE, EXIT):
            return LiveRule(self, sel, timing)
        ref = self.reference
        if ref is None:
            ref = context.get("_lens_reference")
            if ref is None:
                if "model" not in context:
                    raise InterventionError(
                        f"{self!r}: {sel!r} can only be decided on a finished trace; pass "
                        "reference=trace (a trace of the same model) to resolve it.")
                ref = reference_pass(context["model"], tuple(context.get("args", ())),
                                     dict(context.get("kwargs") or {}))
                context["_lens_reference"] = ref
        found = resolve(ref, sel)
        if not found and not getattr(ref, "halted", False):
            check_labels(ref, sel)  # a label no op carries: say which ones are close
        act = adapt(ref, sel, found, self.action)  # facet selectors edit a slice
        spec = self if act is self.action else When(self.site, act, self.strict, self.reference)
        bad = [op for op in found if op.kind not in (OP, IDENTITY)]
        if bad:
            raise InterventionError(
                f"{self!r} selects {describe(bad[0])}, a graph {bad[0].kind} op: those are "
                "not computed by the model, so they cannot be edited while it runs. Edit "
                "the tensor you pass in, or use trace.fork().intervene(...).replay().")
        targets: dict[int, str | None] = {op.call_index: None for op in found}
        matcher = None
        if targets:
            matcher = CallOrderMatcher(records(ref), max(targets), repr(self))
        return LiveRule(spec, sel, TARGETS, targets, matcher)

    def __call__(self, op: Any, value: Tensor) -> Tensor:
        """Used unbound (outside tl.trace): only selectors decided as ops run."""
        sel = self.selector()
        if sel.timing != LIVE:
            raise InterventionError(
                f"{self!r} needs binding to a run (tl.trace / tl.run do it): its selector "
                f"is decided at {sel.timing!r}, not as each op runs.")
        if not sel(op):
            return value
        return LiveRule(self, sel, LIVE)(op, value)

    def __repr__(self) -> str:
        extra = "" if self.strict else ", strict=False"
        return f"tl.when({self.site!r}, {self.action!r}{extra})"


def when(selector: Any, action: Any, *, strict: bool = True, reference: Any = None) -> When:
    """Edit ops as the model runs: ``tl.trace(model, x, intervene=tl.when(tl.func('relu'),
    tl.zero_ablate()))``.

    ``selector``: a selector, a module address (``'fc'``, ``'fc:2'``), a final label
    (``'relu_1_2'``, ``'linear_1_1:2'``) or a list of these. ``action``: a lens action or
    a callable ``fn(tensor, op) -> tensor``. ``strict``: raise if nothing matched (else
    warn). ``reference``: a trace of the same model to resolve final labels against
    (default: a quick metadata-only pre-pass).
    """
    if isinstance(selector, Action) or not callable(action):
        raise InterventionError(
            "tl.when takes (selector, action), e.g. tl.when(tl.func('relu'), "
            f"tl.zero_ablate()); got ({selector!r}, {action!r}).")
    # The site's shape is checked now (a wrong type raises SelectorError); its names are
    # checked against the model when the rule is bound to a run.
    coerce(selector, module_addresses=())
    expect(strict, bool, "tl.when(..., strict=)", "True or False")
    return When(selector, as_action(action), strict, reference)


class LiveRule(Interceptor):
    """A rule bound to one run: the capture engine's interceptor (see module doc)."""

    exits_modules = True

    def __init__(self, spec: Any, selector: Selector | None, mode: str,
                 targets: dict[int, str | None] | None = None,
                 matcher: CallOrderMatcher | None = None) -> None:
        self.spec = spec
        self.action: Action = spec.action
        self.selector = selector
        self.mode = mode
        self.targets = targets or {}
        self.matcher = matcher
        self.fired: dict[int, None] = {}
        self.recorder: Any = None
        self._last: tuple[int, Any, Tensor, Tensor] | None = None

    def attach(self, recorder: Any) -> None:
        self.recorder = recorder

    def __call__(self, op: Any, value: Tensor) -> Tensor:
        mode = self.mode
        if mode == LIVE:
            if not self.selector(op):  # type: ignore[misc]
                return value
        elif mode == TARGETS:
            if self.matcher is not None:
                self.matcher.check(op)
            ci = op.call_index
            if ci not in self.targets or self.targets[ci] is not None:
                return value
        else:
            return value
        return self._apply(op, value, None)

    def on_module_output(self, op: Any, value: Tensor) -> Tensor:
        mode = self.mode
        if mode == LIVE:
            return value
        ci = op.call_index
        call = op.output_of[-1]
        if ci in self.fired:  # once per op; the same tensor returned twice gets one edit
            last = self._last
            if last is not None and last[0] == ci and last[1] is call and last[2] is value:
                return last[3]
            return value
        if mode == EXIT:
            if not self.selector(op):  # type: ignore[misc]
                return value
        elif self.targets.get(ci) != call.key:
            return value
        new = self._apply(op, value, call)
        self._last = (ci, call, value, new)
        return new

    def _apply(self, op: Any, value: Tensor, exit_call: Any) -> Tensor:
        site = LiveSite(op, value, self.recorder, exit_call)
        new = checked(self.action.edit(value, site, ()), value, self.action, site)
        note_fired(op, (self.spec,))
        self.fired[op.call_index] = None
        return new

    # ------------------------------------------------------------------ after the run
    def close(self, trace: Any = None) -> None:
        """After the forward pass: complain about sites that never fired."""
        if trace is not None and getattr(trace, "halted", False):
            return
        if self.mode == TARGETS:
            missing = [ci for ci in self.targets if ci not in self.fired]
            if missing and self.fired or (missing and self.spec.strict):
                raise InterventionError(
                    f"{self.spec!r}: the run ended before reaching op #{missing[0]} "
                    f"({len(missing)} of {len(self.targets)} sites never ran). The model "
                    "ran fewer ops than the trace the sites were taken from.")
        if not self.fired:
            self._nothing(trace)
        elif self.mode == EXIT and trace is not None:
            self._check_exit(trace)

    def _nothing(self, trace: Any) -> None:
        hint = ""
        if trace is not None:
            kinds = sorted({op.type for op in trace.ops if op.kind == OP})
            hint = f" Op types in this run: {', '.join(kinds[:30])}."
        msg = (f"{self.spec!r} matched no op in this forward pass.{hint} "
               "trace.find_sites(selector) lists what a selector matches in a trace.")
        if self.spec.strict:
            raise InterventionError(msg + " Pass strict=False to allow this.")
        warnings.warn(msg, InterventionWarning, stacklevel=3)

    def _check_exit(self, trace: Any) -> None:
        """A module-exit selector also matching ops no module returns (``~tl.module(...)``,
        ``tl.module(...) | tl.func(...)``) would have fired only at module exits."""
        bound = self.selector.bind_ordinals(trace.ops)  # type: ignore[union-attr]
        for op in trace.ops:
            if op.kind in (OP, IDENTITY) and op.call_index not in self.fired and bound(op):
                raise InterventionError(
                    f"{self.spec!r} also selects {describe(op)}, which no module returns. "
                    "Selectors that involve tl.module(...) are decided when a module "
                    "returns, so they only reach module outputs. Split the rule: one "
                    "tl.when for the module outputs and one with a selector decided as ops "
                    "run (e.g. tl.func(...)).")
