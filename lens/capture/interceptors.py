"""The capture engine's extension point, typed: what an interceptor is and how rules bind.

Two kinds of objects take part in a run:

- a **rule** (:class:`Rule`) is what users pass as ``intervene=`` (``tl.when(...)``): a
  specification, checked against the model (``validate``), that may add module addresses
  of its own (``added_modules``: a spliced module's) and ``bind``\\ s to one run;
- an **interceptor** (:class:`Interceptor`) is what the engine calls: the bound rule, an
  engine-side helper such as gradient capture, or the run's :class:`SavePolicy`. Every
  method the engine calls is declared here with its default, so an interceptor overrides
  what it needs and the engine never asks ``hasattr``.

:func:`bind_rules` is the one place ``tl.trace``, ``tl.record`` and ``tl.run`` turn
``intervene=`` into interceptors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from torch import Tensor

from ..errors import CaptureError

if TYPE_CHECKING:
    from .engine import Recorder
    from .records import OpRecord


class Interceptor:
    """Sees each op's output tensor as the model runs and returns it or a replacement.

    ``op`` is the record just written (its ``payload`` is not set yet when the save policy
    has not kept it). A replacement of an in-place op's output is written into the mutated
    tensor (the model keeps using that object).
    """

    # Whether on_module_output does anything: the engine skips module exits otherwise.
    exits_modules = False

    def __call__(self, op: OpRecord, value: Tensor) -> Tensor:
        return value

    def attach(self, recorder: Recorder) -> None:
        """Called once when the recorder is created. While a call is intercepted,
        ``recorder.current_inputs`` holds its ``(args, kwargs)`` (the op's call, or the
        module call at its exit)."""

    def on_module_output(self, op: OpRecord, value: Tensor) -> Tensor:
        """Called at each module exit for every tensor the module returns
        (``op.output_of[-1]`` is the exiting call), when ``exits_modules`` is set; a
        replacement becomes the module's output, as a forward hook's return would."""
        return value

    def close(self, trace: Any = None) -> None:
        """Called after the run (with the finished trace, or None for ``tl.run``)."""


class SavePolicy(Interceptor):
    """The interceptor that decides which payloads to keep (exactly one per run; it edits
    nothing, so the engine asks only :meth:`decide`).

    ``decide(op, stage)`` is asked at ``'live'`` (the op just ran), ``'module_exit'``
    (a module returned it), ``'lookahead'`` (``lookback`` ops later) and ``'final'`` (on
    the finished trace's view of the op); ``None`` means "not decidable yet, ask again at
    a later stage", and the payload is held meanwhile (detached if ``detach_pending``).
    """

    lookback: int = 0
    detach_pending: bool = False

    def decide(self, op: Any, stage: str) -> bool | None:
        return True


class SaveAll(SavePolicy):
    """Keep every payload."""


class SaveNone(SavePolicy):
    """Keep no payload (metadata only)."""

    def decide(self, op: Any, stage: str) -> bool | None:
        return False


class FunctionInterceptor(Interceptor):
    """A plain ``fn(op, value) -> value`` given as ``intervene=``."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any, Tensor], Tensor]) -> None:
        self.fn = fn

    def __call__(self, op: OpRecord, value: Tensor) -> Tensor:
        return self.fn(op, value)

    def __repr__(self) -> str:
        return f"FunctionInterceptor({self.fn!r})"


class Rule(Protocol):
    """What ``intervene=`` takes (``tl.when`` builds one)."""

    def validate(self, *, module_addresses: Collection[str] | None = None,
                 labels: Collection[str] | None = None) -> None: ...

    def added_modules(self, module_addresses: Collection[str]) -> set[str]: ...

    def bind(self, context: dict[str, Any]) -> Interceptor: ...


_RULE_METHODS = ("validate", "added_modules", "bind")


@functools.lru_cache(maxsize=256)
def _rule_type(cls: Any) -> bool:
    return not issubclass(cls, Interceptor) and all(
        callable(getattr(cls, name, None)) for name in _RULE_METHODS)


def is_rule(obj: Any) -> TypeGuard[Rule]:
    """Whether ``obj`` is a :class:`Rule` (its type has the three methods), decided once
    per type: a runtime-checkable protocol's isinstance walks the protocol's members on
    every call (tens of microseconds, several per run)."""
    cls: Any = type(obj)
    return _rule_type(cls)


def rules_of(intervene: Any) -> list[Rule | Interceptor]:
    """``intervene=`` as a list; each item a rule, an interceptor, or (wrapped) a plain
    callable. Anything else is a CaptureError."""
    if intervene is None:
        return []
    items = list(intervene) if isinstance(intervene, (list, tuple)) else [intervene]
    out: list[Rule | Interceptor] = []
    for r in items:
        if isinstance(r, Interceptor) or is_rule(r):
            out.append(r)
        elif callable(r):
            out.append(FunctionInterceptor(r))
        else:
            raise CaptureError(
                f"intervene= takes tl.when(selector, action) rules; got {type(r).__name__}.")
    return out


def added_modules(rules: list[Rule | Interceptor], addresses: Collection[str]) -> set[str]:
    """Addresses the rules record modules under besides the model's (spliced modules)."""
    found: set[str] = set()
    for r in rules:
        if is_rule(r):
            found |= r.added_modules(addresses)
    return found


def validate_rules(rules: list[Rule | Interceptor], addresses: Collection[str]) -> None:
    for r in rules:
        if is_rule(r):
            r.validate(module_addresses=addresses)


def bind_rules(rules: list[Rule | Interceptor], context: dict[str, Any]
               ) -> tuple[Interceptor, ...]:
    """Bind each rule to this run (``context``: model, args, kwargs, module_addresses;
    shared by the rules of one call, e.g. for one reference pre-pass)."""
    return tuple(r if isinstance(r, Interceptor) else r.bind(context) for r in rules)
