"""The action protocol, index restriction (``action.at[...]``) and result checks.

An action is a frozen dataclass that computes the new value of a site:
``action.edit(value, site, path)`` where ``value`` is the region to edit (the whole op
output, or ``output[path...]`` under ``.at[...]``) and ``path`` the index keys that cut
that region out, so that actions reading another tensor (a source trace, a pool, a
replacement) cut the same region out of it. Called by hand, ``action(value, op)`` edits a
whole value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import InterventionError
from ._sites import Site, trace_site

Path = tuple[Any, ...]


class Action:
    """Base of all actions: immutable values with a readable ``repr``."""

    __slots__ = ()

    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement edit()")

    def __call__(self, value: Tensor, op: Any = None) -> Tensor:
        """Apply to a whole value; ``op`` (an op of a trace) gives actions that need it
        their context (the same site in another trace, the op's inputs)."""
        site = trace_site(op, value)
        return checked(self.edit(value, site, ()), value, self, site)

    @property
    def at(self) -> _At:
        """Restrict to an index of the tensor: ``tl.zero_ablate().at[:, 5]``."""
        return _At(self)


class _At:
    __slots__ = ("action",)

    def __init__(self, action: Action) -> None:
        self.action = action

    def __getitem__(self, key: Any) -> Restricted:
        a = self.action
        if isinstance(a, Restricted):  # .at[i].at[j]: edit value[i][j]
            return Restricted(a.action, (*a.keys, key))
        return Restricted(a, (key,))

    def __repr__(self) -> str:
        return f"{self.action!r}.at"


@dataclass(frozen=True, eq=False, repr=False)
class Restricted(Action):
    """``action`` applied to ``value[k0][k1]...`` only; the rest is kept (out of place)."""

    action: Action
    keys: tuple[Any, ...]

    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        return self._assign(value, site, path, 0)

    def _assign(self, value: Tensor, site: Site, path: Path, i: int) -> Tensor:
        if i == len(self.keys):
            return checked(self.action.edit(value, site, path), value, self.action, site,
                           region=path)
        key = self.keys[i]
        try:
            region = value[key]
        except (IndexError, TypeError, RuntimeError) as e:
            raise InterventionError(
                f"{self!r} at {site.name()}: the index [{fmt_index(key)}] does not apply to "
                f"a value of shape {tuple(value.shape)} ({e}).") from None
        new_region = self._assign(region, site, (*path, key), i + 1)
        new = value.clone()
        new[key] = new_region
        return new

    def __repr__(self) -> str:
        return repr(self.action) + "".join(f".at[{fmt_index(k)}]" for k in self.keys)


@dataclass(frozen=True, eq=False, repr=False)
class FnAction(Action):
    """Any callable ``fn(tensor, op) -> tensor`` (or ``fn(tensor)``) as an action."""

    fn: Callable[..., Tensor]

    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        return call_user(self.fn, value, site.op)

    def __repr__(self) -> str:
        return f"tl.action({getattr(self.fn, '__qualname__', repr(self.fn))})"


def action(fn: Callable[..., Tensor] | Action) -> Action:
    """Make an action of a callable ``fn(tensor, op) -> tensor`` (or ``fn(tensor)``), so it
    can be restricted with ``.at[...]``; actions are returned as they are."""
    if isinstance(fn, Action):
        return fn
    if not callable(fn):
        raise InterventionError(
            f"An action is a lens action (tl.zero_ablate(), tl.scale(0.5), ...) or a "
            f"callable fn(tensor, op) -> tensor; got {type(fn).__name__}.")
    return FnAction(fn)


def call_user(fn: Callable[..., Tensor], value: Tensor, op: Any) -> Tensor:
    """Call ``fn(value, op)``, or ``fn(value)`` when it takes one argument."""
    if _arity(fn) == 1:
        return fn(value)
    return fn(value, op)


def _arity(fn: Callable[..., Any]) -> int:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2
    return 1 if len(positional) == 1 else 2


def checked(new: Any, old: Tensor, action: Any, site: Site, region: Path = ()) -> Tensor:
    """``new`` if it can replace ``old`` (same shape, dtype, device); else explain."""
    where = site.name() + (f", region [{']['.join(map(fmt_index, region))}]" if region else "")
    if not isinstance(new, Tensor):
        raise InterventionError(
            f"{action!r} at {where} returned {type(new).__name__}, expected a tensor of "
            f"shape {tuple(old.shape)} ({old.dtype}, {old.device}).")
    problems = []
    if new.shape != old.shape:
        problems.append(f"shape {tuple(new.shape)} instead of {tuple(old.shape)}")
    if new.dtype != old.dtype:
        problems.append(f"dtype {new.dtype} instead of {old.dtype}")
    if new.device != old.device:
        problems.append(f"device {new.device} instead of {old.device}")
    if problems:
        raise InterventionError(
            f"{action!r} at {where} returned a tensor with {'; '.join(problems)}. An "
            "intervention must keep the value's shape, dtype and device: cast or reshape "
            "inside the action, or restrict it with .at[...] to the part you mean to edit.")
    return new


def like(template: Tensor, value: Tensor) -> Tensor:
    """A fresh tensor laid out like ``template`` holding ``value`` (broadcast), so edits
    never share memory with a source (a later in-place op must not reach it)."""
    return torch.empty_like(template).copy_(value)


def fmt_index(key: Any) -> str:
    """``[:, 5]``-style text for an index key."""
    if isinstance(key, tuple):
        return ", ".join(fmt_index(k) for k in key) if key else "()"
    if isinstance(key, slice):
        parts = ["" if x is None else str(x) for x in (key.start, key.stop)]
        text = ":".join(parts)
        return text + (f":{key.step}" if key.step is not None else "")
    if key is Ellipsis:
        return "..."
    if isinstance(key, Tensor):
        return f"<{key.dtype} tensor {tuple(key.shape)}>"
    return repr(key)


def fmt_tensor(t: Any) -> str:
    if isinstance(t, Tensor):
        if t.numel() <= 4:
            return f"tensor({t.tolist()})"
        return f"<tensor {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}>"
    return repr(t)


def cut(t: Tensor, path: Path) -> Tensor:
    """``t[k0][k1]...`` for the keys of a restriction."""
    for k in path:
        t = t[k]
    return t
