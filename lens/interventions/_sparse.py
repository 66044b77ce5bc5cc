"""``tl.run`` with forward hooks only, when every rule can be decided at module exits.

A rule qualifies when its selector's scope is ``'boundary'`` (``tl.module('a')``,
``'a.b:2'``, an ``|`` of those) and its action reads nothing but the value it edits
(ablations to zero or the value's own mean, scale, steer, clamp, projections, constant
replacements, one-argument functions). Actions that read the op (its call index, its
inputs, the same op in another trace) need the recorded graph and keep the full path.
The output is identical to the full path's: same edits, at the same module exits.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..capture.run import bind_inputs
from ..capture.sparse import ExitEdit, HookRun, module_map, run_hooked
from ..selectors import Selector
from ..selectors._scope import Scope, scope_of, union
from ._base import Action, FnAction, Restricted, _arity, checked
from ._sites import Site
from .actions import (
    Clamp,
    MeanAblate,
    ProjectOff,
    ProjectOnto,
    ReplaceWith,
    Scale,
    Steer,
    ZeroAblate,
)
from .rules import EXIT, LiveRule, When

_VALUE_ONLY = (ZeroAblate, Scale, Steer, Clamp, ProjectOnto, ProjectOff)


def value_only(action: Action) -> bool:
    """Whether ``action`` computes its result from the edited value alone."""
    if isinstance(action, Restricted):
        return value_only(action.action)
    if isinstance(action, _VALUE_ONLY):
        return True
    if isinstance(action, MeanAblate):
        return action.source is None or isinstance(action.source, Tensor)
    if isinstance(action, ReplaceWith):
        return not callable(action.value) or isinstance(action.value, Tensor) or _arity(
            action.value) == 1
    if isinstance(action, FnAction):
        return _arity(action.fn) == 1
    return False


class ExitSite(Site):
    """A module exit seen without recorded ops: named by its module call."""

    __slots__ = ("key",)

    def __init__(self, key: str, full: Tensor) -> None:
        super().__init__(None, full, key)
        self.key = key

    def name(self) -> str:
        return f"the output of module call {self.key!r}"


def _edit(action: Action) -> ExitEdit:
    def edit(address: str, n: int, value: Tensor) -> Tensor:
        site = ExitSite(f"{address}:{n}", value)
        return checked(action.edit(value, site, ()), value, action, site)
    return edit


def hook_plan(rules: list[Any], addresses: set[str]) -> list[tuple[When, Selector, Scope]] | None:
    """``(rule, selector, scope)`` per rule if all of them can run on hooks, else None."""
    plan = []
    for r in rules:
        if type(r) is not When or r.reference is not None or not value_only(r.action):
            return None
        sel = r.selector(addresses)
        scope = scope_of(sel)
        if scope.kind != "boundary":
            return None
        plan.append((r, sel, scope))
    return plan


def run_on_hooks(model: nn.Module, plan: list[tuple[When, Selector, Scope]],
                 args: tuple[Any, ...], kwargs: dict[str, Any],
                 modules: dict[str, nn.Module] | None = None) -> Any:
    """The output of ``model`` with the planned rules applied at module exits
    (``modules``: ``module_map(model)`` when the caller already has it)."""
    bind_inputs(model, args, kwargs)  # bad inputs: the same error as the full path
    edits = tuple((scope, _edit(r.action)) for r, _, scope in plan)
    hooks = HookRun(module_map(model) if modules is None else modules, edits=edits)
    targets = union(*(scope for _, _, scope in plan)).modules
    output = run_hooked(model, hooks, targets, args, kwargs)
    for (r, sel, _), fired in zip(plan, hooks.fired, strict=True):
        if not fired:  # as the full path: a rule that matched nothing raises (or warns)
            LiveRule(r, sel, EXIT)._nothing(None)
    return output
