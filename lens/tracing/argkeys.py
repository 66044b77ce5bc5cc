"""Keys of argument templates for loop signatures (:mod:`lens.tracing.loops`).

``_norm`` is the reference: a hashable, value-based stand-in for a template. ``_Keys``
makes keys that are equal exactly when ``_norm``'s are (or finer), with fewer Python
calls: most templates are keyed by C-level callables chosen once per tuple of item
types.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from operator import itemgetter
from types import NoneType
from typing import Any

from ..capture.records import ParamRef, Ref

_TENSOR = ("T",)
_SCALARS = frozenset({bool, int, float, str})


def _norm(v: Any) -> Hashable:
    """A hashable, value-based stand-in for a non-tensor argument template."""
    t = type(v)
    if t is Ref:
        return _TENSOR
    if t in _SCALARS or v is None:
        return (t, v)  # the type too: ``x * 2`` and ``x * 2.0`` are different ops
    if t is ParamRef:
        return v  # type: ignore[no-any-return]
    if t is tuple or t is list:
        return (t, *[_TENSOR if type(x) is Ref else _norm(x) for x in v])
    if t is dict:
        return ("dict", *[(k, _norm(x)) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))])
    if t is slice:
        return ("slice", _norm(v.start), _norm(v.stop), _norm(v.step))
    if isinstance(v, tuple):  # torch.Size, named tuples
        return (t, *[_norm(x) for x in v])
    try:
        hash(v)
    except TypeError:
        return ("repr", t, repr(v))
    return (t, v)


class _Keys:
    """Keys of argument templates, as fine as :func:`_norm` (equal keys only for equal
    normalised arguments) and cheaper where the arguments are flat.

    Positional arguments are keyed as ``(item types, items)``; how to take the items is
    decided once per tuple of item types (a *plan*): flat items (scalars, None,
    ParamRef) as they are and a Ref left out (its type says it was one), by a C-level
    callable; anything nested by ``_norm``. Keyword arguments (string keys) are keyed by
    their sorted names and the key of their values in that order (``_norm`` sorts them
    too). Anything else is ``_norm``'s; keys of one form never equal keys of another.
    """

    def __init__(self) -> None:
        self.plans: dict[tuple[type, ...], Callable[[Any], Any]] = {}
        self.names: dict[tuple[Any, ...], tuple[tuple[str, ...], Callable[[Any], Any]]] = {}

    def args(self, v: Any) -> Hashable:
        if type(v) is not tuple:
            return _norm(v)
        types = tuple(map(type, v))
        plan = self.plans.get(types)
        if plan is None:
            plan = self.plans[types] = _plan(types)
        return (types, plan(v))

    def kwargs(self, v: Any) -> Hashable:
        if type(v) is not dict:
            return _norm(v)
        keys = tuple(v)
        found = self.names.get(keys)
        if found is None:
            if not all(type(k) is str for k in keys):
                return _norm(v)
            names = tuple(sorted(keys))
            # itemgetter of one name gives the bare value: ask for it twice
            found = self.names[keys] = (names, itemgetter(*names, *names[:len(names) == 1]))
        names, values = found
        return (names, self.args(values(v)))


# Values a key holds as they are, beside their type.
_FLAT = frozenset({Ref, ParamRef, bool, int, float, str, NoneType})


def _plan(types: tuple[type, ...]) -> Callable[[Any], Any]:
    """The items part of the key of a tuple with these item types, as a function of the
    tuple (one kind of value for one ``types``)."""
    if not all(u in _FLAT for u in types):
        return _norm  # nested: as _norm says
    kept = [i for i, u in enumerate(types) if u is not Ref]
    if len(kept) == len(types):
        return tuple  # the items as they are
    if kept:
        return itemgetter(*kept)  # all but the Refs (one index: the item itself)
    return len  # Refs only: the types say it all
