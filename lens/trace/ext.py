"""Extension slots: rooms to the right of ``trace`` (draw, interventions, io, ...) attach
behaviour to ``Trace`` here, so ``trace`` never imports them (imports point one way).

A room registers an implementation when it is imported (``lens/__init__`` imports every
room), and ``Trace`` methods dispatch through :func:`call`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import LensError

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str, fn: Callable[..., Any]) -> None:
    _REGISTRY[name] = fn


def call(name: str, *args: Any, **kwargs: Any) -> Any:
    fn = _REGISTRY.get(name)
    if fn is None:
        raise LensError(
            f"{name} is provided by a part of lens that was not imported; "
            "use it through `import lens` (the package imports every part).")
    return fn(*args, **kwargs)
