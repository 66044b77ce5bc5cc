"""Typed slots on a trace or an op record for data other rooms derive from it (pytest's
``Stash`` shape).

A room that caches something about a trace (the facet structure index, alias tables)
keeps it on the trace under a :class:`StashKey` of its own, not in a module-level dict
keyed by the trace: the cache lives and dies with the object it describes, and mypy
knows the type of what comes back. What is stashed must not refer back to the trace
(or to its ops, which are views holding it): the trace would then sit in a reference
cycle and its payloads would wait for the cycle collector (tests/tracing/test_lifetime.py).

    STRUCTURE = StashKey[StructureIndex]("facets.structure")
    index = trace.stash.setdefault(STRUCTURE, lambda: StructureIndex(trace))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


class StashKey(Generic[T]):
    """A key for one typed value in a :class:`Stash` (compared by identity)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<StashKey {self.name}>"


class Stash:
    """Values by :class:`StashKey`, each typed by its key."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[StashKey[Any], Any] = {}

    def get(self, key: StashKey[T]) -> T | None:
        return cast("T | None", self._values.get(key))

    def setdefault(self, key: StashKey[T], make: Callable[[], T]) -> T:
        """The value under ``key``, made by ``make()`` (and kept) on first use."""
        if key not in self._values:
            self._values[key] = make()
        return cast("T", self._values[key])

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._values[key] = value

    def __contains__(self, key: StashKey[Any]) -> bool:
        return key in self._values

    def discard(self, key: StashKey[Any]) -> None:
        """Remove the value under ``key``, if there is one."""
        self._values.pop(key, None)

    def copy(self) -> Stash:
        """A new stash holding the same values (shared, not copied)."""
        new = Stash()
        new._values.update(self._values)
        return new

    def clear(self) -> None:
        self._values.clear()
