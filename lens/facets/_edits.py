"""Editing facets: any lens action applied to a facet's slice.

:class:`FacetEdit` wraps the user's action. At each carrier op it runs that op's
:class:`Step` s: the facet is read off the op's value (or recomputed from the op's inputs),
the action edits the facet (restricted to the head with ``.at[...]``), and the op's value
is rebuilt from the edited facet. The action sees a :class:`FacetSite`, so actions that
read the same site of another trace (``tl.patch_from(clean)``, ``tl.mean_ablate(source=
...)``) get that trace's facet, not the carrier op's value.

Actions are duck-typed here (``action.edit``, ``action.at``): ``lens.interventions`` sits
beside ``lens.facets`` and neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..errors import InterventionError
from ._registry import Carrier, Owner, remember_edit


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


@dataclass(frozen=True, eq=False)
class Step:
    """Edit facet ``name`` of ``owner`` at its carrier op: ``keys`` restrict the action
    (the head), ``perm`` takes lens's layout to the one the action sees."""

    owner: Owner
    name: str
    layout: str
    keys: tuple[Any, ...]
    perm: tuple[int, ...] | None
    carrier: Carrier
    head: Any = None
    step: Any = None  # time steps of a recurrent facet (None: all)
    memo: dict[str, Any] = field(default_factory=dict)  # shared by one facet's carriers

    def describe(self) -> str:
        head = "" if self.head is None else f" (head {self.head})"
        step = "" if self.step is None else f" (step {self.step})"
        return f"facet {self.name!r}{head}{step} of {self.owner.name()}"

    def apply(self, value: Tensor, site: Any, action: Any) -> Tensor:
        c = self.carrier

        def edit(native: Tensor, path: tuple[Any, ...] = (), full: Tensor | None = None
                 ) -> Tensor:
            """The action on ``native``: the facet, or its part ``path`` cuts out of
            ``full`` (one time step of a recurrent state)."""
            shown = native.permute(self.perm) if self.perm else native
            act = _restricted(action, self.keys)
            whole = shown if full is None else full
            new: Tensor = act.edit(shown, FacetSite(site, whole, self), path)
            _check(new, shown, action, self)
            return new.permute(_inverse(self.perm)) if self.perm else new

        if getattr(c.rewrite, "stepwise", False):  # a recurrence rerun with the edit
            new, stages = c.rewrite.apply_steps(value, site, self, edit)
            remember_edit(site.op, value, new, self.owner,
                          {k: t.detach() for k, t in stages.items()})
            return new  # type: ignore[no-any-return]
        if c.rewrite is None:
            native = value.permute(c.perm) if c.perm else value
            out = edit(native)
            out = out.permute(_inverse(c.perm)) if c.perm else out
            remember_edit(site.op, value, out, self.owner, {})  # keep earlier edits' facet values
            return out
        new, stages = c.rewrite.apply(value, site.inputs(), self.name, edit)
        remember_edit(site.op, value, new, self.owner, {k: t.detach() for k, t in stages.items()})
        return new  # type: ignore[no-any-return]


def _restricted(action: Any, keys: tuple[Any, ...]) -> Any:
    for key in keys:
        at = getattr(action, "at", None)
        if at is None:
            raise InterventionError(
                f"{action!r} cannot be restricted to one head: facet edits take lens "
                "actions (tl.zero_ablate(), tl.patch_from(...), tl.action(fn), ...).")
        action = at[key]
    return action


def _check(new: Any, old: Tensor, action: Any, step: Step) -> None:
    if not isinstance(new, Tensor) or new.shape != old.shape or new.dtype != old.dtype:
        got = (f"shape {tuple(new.shape)}, {new.dtype}" if isinstance(new, Tensor)
               else type(new).__name__)
        raise InterventionError(
            f"{action!r} on {step.describe()} returned {got}; the facet is "
            f"{tuple(old.shape)}, {old.dtype}. An edit must keep the facet's shape and dtype.")


class FacetSite:
    """The site an action sees when it edits a facet (shaped like lens's ``Site``)."""

    __slots__ = ("base", "full", "step")
    exit_call = None

    def __init__(self, base: Any, full: Tensor, step: Step) -> None:
        self.base = base
        self.full = full
        self.step = step

    @property
    def op(self) -> Any:
        return self.base.op

    @property
    def call_index(self) -> int:
        return int(self.base.call_index)

    def name(self) -> str:
        return f"{self.step.describe()} (edited at {self.base.name()})"

    def inputs(self) -> list[Tensor]:
        raise InterventionError(
            f"{self.name()} is a facet, not an op, so it has no inputs to give to "
            "tl.splice_module; edit it with another action, or splice the module itself.")

    def value_in(self, source: Any, what: str) -> Tensor:
        """This facet in ``source`` (a trace of the same model), in the action's layout."""
        from ._mapping import facets_of

        st = self.step
        found = facets_of(source, st.owner)
        if st.name not in found:
            raise InterventionError(
                f"{what}: the source trace has no facet {st.name!r} in {st.owner.name()} "
                f"(its facets there: {', '.join(found) or 'none'}). The source must be a "
                "trace of the same model.")
        value = found[st.name]
        return value.permute(st.perm) if st.perm else value


@dataclass(frozen=True, eq=False, repr=False)
class FacetEdit:
    """``action`` applied to facets at their carrier ops (``plan``), and as given to any
    other op it is used on."""

    action: Any
    plan: Mapping[int, tuple[Step, ...]]

    def edit(self, value: Tensor, site: Any, path: tuple[Any, ...] = ()) -> Tensor:
        steps = self.plan.get(site.call_index)
        if not steps:
            return self.action.edit(value, site, path)  # type: ignore[no-any-return]
        for st in steps:
            value = st.apply(value, site, self.action)
        return value

    def __call__(self, value: Tensor, op: Any = None) -> Tensor:
        return self.action(value, op)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return repr(self.action)
