"""Where a selector can match, from its structure alone: the cheapest way to decide it.

:func:`scope_of` reads a selector tree (no model, no torch) and answers one of three:

- ``'boundary'``: the selector matches only tensors that the listed modules return, and
  which call of which module returned a tensor is all it reads. Forward hooks on those
  modules decide it exactly; no op needs recording. (``tl.module('a')``,
  ``tl.module('a:2') | tl.module('b')``.)
- ``'scoped'``: it matches only ops run inside the listed modules (or returned by them),
  and reads nothing but the op's function, its module context below that module, and
  which modules inside it return it. Recording ops only while those modules run decides
  it exactly. (``tl.in_module('a') & tl.func('gelu')``, ``tl.in_module('a')``.)
- ``'full'``: anything else (call order, final labels, ordinals, graph neighbours,
  ``tl.where``, negations reaching outside a module): every op must be recorded.

``modules`` are bare addresses; ``calls`` maps a boundary address to the call numbers
asked for (``None``: every call).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from lens.selectors._base import And, Not, Nothing, Or, Selector
from lens.selectors._ops import Func
from lens.selectors._places import InModule, Module, split_call

ScopeKind = Literal["boundary", "scoped", "full"]


@dataclass(frozen=True)
class Scope:
    """The cheapest mechanism that decides a selector exactly (see the module doc)."""

    kind: ScopeKind
    modules: frozenset[str] = frozenset()
    calls: Mapping[str, frozenset[int] | None] = field(default_factory=dict, hash=False)
    reason: str = ""

    def __repr__(self) -> str:
        if self.kind == "full":
            return f"Scope('full', {self.reason!r})"
        return f"Scope({self.kind!r}, {sorted(self.modules)!r})"


FULL = Scope("full", reason="")


def _full(reason: str) -> Scope:
    return Scope("full", reason=reason)


def scope_of(sel: Selector) -> Scope:
    """The scope of one selector (see the module doc)."""
    if isinstance(sel, Nothing):
        return Scope("boundary")
    if isinstance(sel, Module):
        base, call = split_call(sel.address)
        return Scope("boundary", frozenset({base}),
                     {base: None if call is None else frozenset({call})})
    if isinstance(sel, InModule):
        return Scope("scoped", frozenset({sel.address}))
    if isinstance(sel, Or):
        return union(*(scope_of(p) for p in sel.parts))
    if isinstance(sel, And):
        return _conjunction(sel)
    return _full(f"{sel!r} is decided only with every op recorded")


def union(*scopes: Scope) -> Scope:
    """The scope of the ``|`` of selectors with these scopes (also of several selectors
    decided in one run)."""
    for s in scopes:
        if s.kind == "full":
            return s
    modules = frozenset().union(*(s.modules for s in scopes))
    if all(s.kind == "boundary" for s in scopes):
        calls: dict[str, frozenset[int] | None] = {}
        for s in scopes:
            for base, nums in s.calls.items():
                have = calls.get(base, frozenset())
                calls[base] = None if nums is None or have is None else have | nums
        return Scope("boundary", modules, calls)
    # A boundary selector inside a scoped run is decided by the module exits the scoped
    # run records (its hooks cover every module inside the scope, the scope's roots too).
    return Scope("scoped", modules)


def _conjunction(sel: And) -> Scope:
    """``in_module(a) & <function tests>``: ops inside ``a``, tested on their function."""
    places = [p for p in sel.parts if isinstance(p, InModule)]
    rest = [p for p in sel.parts if not isinstance(p, InModule)]
    if len({p.address for p in places}) != 1:
        return _full(f"{sel!r}: a conjunction is scoped only by one tl.in_module(...)")
    for part in rest:
        if not _reads_function_only(part):
            return _full(f"{sel!r}: {part!r} reads more than the op's function")
    return Scope("scoped", frozenset({places[0].address}))


def _reads_function_only(sel: Selector) -> bool:
    """Whether ``sel`` reads nothing of an op but its function (``~tl.func('add')``...)."""
    if isinstance(sel, Func):
        return True
    if isinstance(sel, (And, Or, Not)):
        return all(_reads_function_only(p) for p in sel.operands)
    return False
