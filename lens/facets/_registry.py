"""Providers of facets and the per-trace structure index.

A provider is a structure detector for one kind of module (attention, recurrent,
residual block): ``detect(trace, index)`` scans the recorded graph once and adds a
:class:`FacetGroup` for every module call it recognizes. Detectors read the ops, never
class names, so a user's own attention class is found like a library's.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from ..capture.fired import fired_on
from ..capture.stash import StashKey

if TYPE_CHECKING:
    from ..tracing import Trace


@dataclass(frozen=True, order=True)
class Owner:
    """A module call that facets belong to; ``address=''`` is the model's own forward."""

    address: str
    call_num: int = 1

    @property
    def key(self) -> str:
        return f"{self.address}:{self.call_num}" if self.address else ""

    def name(self) -> str:
        return self.key or "the model's own forward (outside every submodule)"

    def within(self, spec: str) -> bool:
        """Whether this owner is the module ``spec`` (``'h.0'``, ``'h.0:2'``) or lies
        inside it; ``''`` is the whole model, ``':1'`` the model's own forward only."""
        base, _, num = spec.partition(":")
        if num or spec == ":1":
            return self.address == base and str(self.call_num) == num
        return not base or self.address == base or self.address.startswith(base + ".")


ROOT = Owner("", 1)


def owner_of(rec: Any) -> Owner:
    """The innermost module call an op record ran in."""
    ctx = rec.module_ctx
    return Owner(ctx[-1].address, ctx[-1].call_num) if ctx else ROOT


@dataclass(frozen=True)
class Carrier:
    """How a facet is edited: at op ``op``, whose value is the facet (``rewrite`` None,
    ``perm`` taking the op's layout to the facet's), or from which ``rewrite`` recomputes
    the op's value with the facet edited: ``rewrite.apply(value, inputs, name, fn)``
    returns the new value and the facet values behind it (by name)."""

    op: int
    rewrite: Any = None
    perm: tuple[int, ...] | None = None


class FacetGroup:
    """The facets one detector found in one module call."""

    kind: ClassVar[str] = ""
    owner: Owner

    def names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def value(self, trace: Trace, name: str) -> Tensor:
        raise NotImplementedError

    def sources(self) -> tuple[int, ...]:
        """Ops whose saved values the facets are computed from (cache validation)."""
        raise NotImplementedError

    def carrier(self, trace: Trace, name: str) -> Carrier | None:
        """Where an edit of ``name`` applies; None if it cannot be edited."""
        return None

    def head_dim(self, name: str) -> int | None:
        """The head dimension of ``name`` in lens's layout, or None (no heads)."""
        return None

    def carriers(self, trace: Trace, name: str) -> tuple[Carrier, ...]:
        """Every op an edit of ``name`` changes (a fused call with several outputs has one
        carrier per output); empty if it cannot be edited."""
        c = self.carrier(trace, name)
        return (c,) if c is not None else ()

    def step_dim(self, name: str) -> int | None:
        """The time dimension of ``name`` if it is edited step by step (``step=``)."""
        return None

    def info(self) -> dict[str, Any]:
        return {}

    def describe(self) -> str:
        return self.kind


Detector = Callable[["Trace", "StructureIndex"], None]


@dataclass(frozen=True)
class Provider:
    """A structure detector for one kind of module: ``detect(trace, index)`` calls
    ``index.add(group, first_op)`` for each module call it recognizes; ``names`` are the
    facet names its groups may have (checked by ``tl.facet``)."""

    kind: str
    detect: Detector
    names: tuple[str, ...]


class StructureIndex:
    """Every facet group of one trace, by owner (computed once, from metadata only)."""

    def __init__(self, trace: Trace, providers: Sequence[Provider]) -> None:
        self.groups: dict[Owner, list[FacetGroup]] = {}
        self.notes: dict[Owner, list[str]] = {}
        self.order: dict[Owner, int] = {}
        for p in providers:
            p.detect(trace, self)

    def add(self, group: FacetGroup, first_op: int) -> None:
        self.groups.setdefault(group.owner, []).append(group)
        self.order[group.owner] = min(self.order.get(group.owner, first_op), first_op)

    def note(self, owner: Owner, message: str) -> None:
        """A structure was seen but is not supported: said when a facet is asked for."""
        self.notes.setdefault(owner, []).append(message)

    def of(self, owner: Owner) -> Sequence[FacetGroup]:
        return self.groups.get(owner, ())

    def owners(self, kind: str | None = None) -> list[Owner]:
        """Owners (in execution order) having a group of ``kind`` (any kind if None)."""
        found = [o for o, gs in self.groups.items()
                 if kind is None or any(g.kind == kind for g in gs)]
        return sorted(found, key=lambda o: self.order[o])


# Facet values an edit produced, kept on the op it edited (a fork's own op, or a live
# run's record): facets that exist only inside an op (a fused attention's pattern) are
# read from here, since they cannot be rebuilt from the op's unedited inputs. They hold
# while the op's payload is the tensor the edit returned.
_EDITS = StashKey[tuple["weakref.ref[Tensor]", dict[tuple[Owner, str], Tensor]]]("facets.edits")


def _edits_of(op: Any, t: Tensor) -> dict[tuple[Owner, str], Tensor]:
    stash = getattr(op, "stash", None)
    entry = stash.get(_EDITS) if stash is not None else None
    return entry[1] if entry is not None and entry[0]() is t else {}


def remember_edit(op: Any, old: Tensor, new: Tensor, owner: Owner,
                  stages: Mapping[str, Tensor]) -> None:
    """Record on ``op`` the facet values behind ``new``, its edited output."""
    found = dict(_edits_of(op, old)) if old is not new else {}
    found.update({(owner, name): t for name, t in stages.items()})
    stash = getattr(op, "stash", None)
    if found and stash is not None:
        stash[_EDITS] = (weakref.ref(new), found)


def edited_value(trace: Trace, ci: int, owner: Owner, name: str) -> Tensor | None:
    """The value facet ``name`` was edited to at op ``ci``, if op ``ci`` holds an edit."""
    from ._graph import records

    rec = records(trace)[ci]
    if rec.payload is None:
        return None
    return _edits_of(rec, rec.payload).get((owner, name))


def rewritten(trace: Trace, ci: int, owner: Owner) -> bool:
    """Whether op ``ci`` was recomputed by a facet edit of ``owner`` (a fused call with its
    pattern edited, ...): then facets inside it cannot be rebuilt from its inputs."""
    from ._graph import records

    for spec in fired_on(records(trace)[ci]):
        plan = getattr(getattr(spec, "action", None), "plan", None)
        steps = plan.get(ci, ()) if isinstance(plan, Mapping) else ()
        if any(st.owner == owner and st.carrier.rewrite is not None for st in steps):
            return True
    return False


def edit_lost(owner: Owner, name: str, ci: int) -> str:
    return (f"Facet {name!r} of {owner.name()} was edited inside op #{ci} in this trace, "
            "and the edited values are not available: the trace keeps payloads as copies "
            "(detach=, device= or dtype=), which drops them. Capture without those options "
            "to read edited facets that exist only inside a fused op.")
