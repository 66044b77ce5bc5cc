"""One-call helpers over :func:`lens.trace`."""

from __future__ import annotations

from typing import Any

from .api import trace


def summary(model: Any, *args: Any, input_kwargs: dict[str, Any] | None = None,
            depth: int = 1) -> str:
    """Trace ``model(*args)`` without keeping payloads and return ``Trace.summary()``:
    module table (output shape, params, ops, FLOPs) and totals, as text."""
    return trace(model, *args, input_kwargs=input_kwargs, save=False).summary(depth)
