"""``module_call.facets``: a read-only mapping from facet name to tensor.

Values are computed on first access and cached; the cache is dropped when a payload they
were computed from changes (a fork's ``replay()`` swaps payloads), so a fork's facets
show the edited values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor

from ..capture.stash import StashKey
from ..errors import LookupKeyError, close_matches
from ..tracing import ModuleCall, Trace
from ._graph import token
from ._providers import structure
from ._registry import ROOT, FacetGroup, Owner


class Facets(Mapping[str, Tensor]):
    """The facets of one module call: ``facets['pattern']``, ``facets.keys()``.

    ``facets.kinds`` lists the structures found (``'attention'``, ``'recurrent'``,
    ``'residual'``), ``facets.info`` what was read from the graph (head counts, ...), and
    ``facets.site(name, head=...)`` the selector that edits a facet
    (``trace.fork().intervene(facets.site('z', head=3), tl.zero_ablate())``) and
    ``facets.grad(name)`` (or ``facets.grads[name]``) its gradient after
    ``trace.log_backward(loss)`` on a trace captured with ``save_grads=True``.
    """

    def __init__(self, trace: Trace, state: _State) -> None:
        self._trace = trace
        self.owner = state.owner
        self._groups = state.groups
        self._notes = state.notes
        self._by_name = state.by_name
        self._cache = state.cache

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.kind for g in self._groups))

    @property
    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for g in self._groups:
            out.update(g.info())
        return out

    def group(self, name: str) -> FacetGroup:
        if name not in self._by_name:
            raise LookupKeyError(missing(self._trace, self.owner, name, list(self._by_name),
                                         self._notes))
        return self._by_name[name]

    def __getitem__(self, name: str) -> Tensor:
        g = self.group(name)
        tok = token(self._trace, g.sources())
        hit = self._cache.get(name)
        if hit is not None and hit[0] == tok:
            return hit[1]
        value = g.value(self._trace, name)
        self._cache[name] = (tok, value)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def grad(self, name: str) -> Tensor:
        """The gradient of the loss with respect to facet ``name``, laid out like
        ``facets[name]``: capture with ``tl.trace(model, x, save_grads=True)`` and call
        ``trace.log_backward(loss)`` first (lens.facets._grads says which are exact)."""
        from ._grads import facet_grad

        return facet_grad(self._trace, self.group(name), name)

    @property
    def grads(self) -> Mapping[str, Tensor]:
        """The gradients of the facets as a mapping: ``facets.grads['z']``."""
        return _Grads(self)

    def site(self, name: str, head: Any = None, step: Any = None) -> Any:
        """The selector of facet ``name`` (of ``head``; at time ``step`` of a recurrent
        state or gate) of this call, for interventions."""
        from .selector import facet

        self.group(name)
        return facet(name, head=head, module=self.owner.key or ":1", step=step)

    def __repr__(self) -> str:
        what = "; ".join(g.describe() for g in self._groups) or "no structure found"
        return f"<Facets of {self.owner.name()} ({what}): {', '.join(self._by_name)}>"


class _Grads(Mapping[str, Tensor]):
    """``facets.grads``: facet name -> gradient, computed on access (not cached: a further
    backward pass adds to the ops' gradients)."""

    def __init__(self, facets: Facets) -> None:
        self._facets = facets

    def __getitem__(self, name: str) -> Tensor:
        return self._facets.grad(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._facets)

    def __len__(self) -> int:
        return len(self._facets)

    def __repr__(self) -> str:
        return f"<gradients of {self._facets!r}>"


class _State:
    """What the facets of one call keep on the trace: their groups and cached values.
    No reference to the trace (it stores this), so caching forms no cycle."""

    __slots__ = ("owner", "groups", "notes", "by_name", "cache")

    def __init__(self, owner: Owner, groups: list[FacetGroup], notes: list[str]) -> None:
        self.owner = owner
        self.groups = groups
        self.notes = notes
        self.by_name = {n: g for g in groups for n in g.names()}
        self.cache: dict[str, tuple[tuple[int, ...], Tensor]] = {}


_FACETS = StashKey[dict[Owner, _State]]("facets.by_owner")


def facets_of(trace: Trace, owner: Owner) -> Facets:
    """The facets of one module call of ``trace`` (values cached per call)."""
    per = trace.stash.setdefault(_FACETS, dict)
    state = per.get(owner)
    if state is None:
        index = structure(trace)
        state = per[owner] = _State(owner, list(index.of(owner)), index.notes.get(owner, []))
    return Facets(trace, state)


def missing(trace: Trace, owner: Owner, name: str, have: list[str], notes: list[str]) -> str:
    """The message for a facet that does not exist: what does, and where ``name`` lives."""
    index = structure(trace)
    msg = f"{owner.name()} has no facet {name!r}. "
    msg += f"Its facets: {', '.join(have)}." if have else "It has no facets."
    near = [n for n in close_matches(name, have) if n != name]
    if near:
        msg += f" Did you mean {', '.join(map(repr, near))}?"
    for note in notes:
        msg += f" Note: {note}."
    elsewhere = [o for o in index.owners() if name in _names(index, o) and o != owner]
    inside = [o for o in elsewhere if owner == ROOT or o.within(owner.address)]
    shown = inside or elsewhere
    if shown:
        keys = ", ".join(repr(o.key or "") for o in shown[:4])
        where = "inside it" if inside else "in this trace"
        msg += (f" Module calls with a {name!r} facet {where}: {keys}"
                f"{' ...' if len(shown) > 4 else ''} (trace.modules[address].facets).")
    return msg


def _names(index: Any, owner: Owner) -> set[str]:
    return {n for g in index.of(owner) for n in g.names()}


def owner_of_call(call: Any) -> Owner:
    return Owner(call.address, call.call_num)


def facets_for(obj: Trace | ModuleCall) -> Facets:
    """The ``facets`` of a module call, a module (its only call) or a trace (the model's
    own forward): what ``ModuleCall.facets`` and ``Trace.facets`` return."""
    if isinstance(obj, ModuleCall):
        return facets_of(obj.trace, owner_of_call(obj.record))
    if isinstance(obj, Trace):
        return facets_of(obj, ROOT)
    raise LookupKeyError(f"No facets for {obj!r}: facets belong to module calls and traces.")
