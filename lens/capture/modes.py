"""Per-op execution modes: grad mode, inference mode and autocast, recorded and re-entered.

An op's value can depend on the mode it ran under (autocast picks its dtype; a forward
that calls ``torch.autograd.grad`` needs grad). Capture stamps each op with
:func:`current` (``None`` for the default mode, else a small interned tuple, so the hot
path stays two C calls for models that never switch); replay runs the op under
:func:`applied` of that stamp.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple

import torch

from ..errors import LoadError

_AUTOCAST_DEVICES = ("cpu", "cuda")


class Mode(NamedTuple):
    """A non-default mode: grad enabled, inference mode, and autocast per device type
    as ``(device_type, dtype)`` pairs for each device type where autocast is on."""

    grad: bool
    inference: bool
    autocast: tuple[tuple[str, torch.dtype], ...]

    def describe(self) -> str:
        parts = [] if self.grad else ["no_grad"]
        if self.inference:
            parts.append("inference_mode")
        parts += [f"autocast({d}, {str(t).removeprefix('torch.')})" for d, t in self.autocast]
        return ", ".join(parts) or "enable_grad"


_INTERNED: dict[tuple[bool, bool, tuple[tuple[str, torch.dtype], ...]], Mode] = {}


def _autocast_now() -> tuple[tuple[str, torch.dtype], ...]:
    return tuple((d, torch.get_autocast_dtype(d)) for d in _AUTOCAST_DEVICES
                 if torch.is_autocast_enabled(d))


_grad_on = torch._C.is_grad_enabled
_inference_on = torch._C.is_inference_mode_enabled
_any_autocast = torch._C._is_any_autocast_enabled


def current() -> Mode | None:
    """The mode ops run under now; ``None`` when it is the default (grad on, nothing
    else). Two C calls in the common cases (grad on, or off without inference mode)."""
    if _any_autocast():
        return _interned(_grad_on(), _inference_on(), _autocast_now())
    if not _inference_on():
        return None if _grad_on() else NO_GRAD
    return _INFERENCE if not _grad_on() else _interned(True, True, ())


def _interned(grad: bool, inference: bool,
              autocast: tuple[tuple[str, torch.dtype], ...]) -> Mode | None:
    if grad and not inference and not autocast:
        return None
    key = (grad, inference, autocast)
    mode = _INTERNED.get(key)
    if mode is None:
        mode = _INTERNED.setdefault(key, Mode(grad, inference, autocast))
    return mode


NO_GRAD = _interned(False, False, ())  # under torch.no_grad() and nothing else
_INFERENCE = _interned(False, True, ())


@contextmanager
def applied(mode: Mode | None) -> Iterator[None]:
    """Run under the recorded ``mode``: autocast exactly as recorded (switched off where
    the capture had it off); grad and inference mode switched off where the capture had
    them off, left as the caller has them otherwise (values never depend on grad mode,
    memory does)."""
    with ExitStack() as stack:
        want = mode.autocast if mode is not None else ()
        if want or torch._C._is_any_autocast_enabled():
            on = dict(want)
            for device in _AUTOCAST_DEVICES:
                if device in on:
                    stack.enter_context(torch.autocast(device, dtype=on[device]))
                elif torch.is_autocast_enabled(device):
                    stack.enter_context(torch.autocast(device, enabled=False))
        if mode is not None:
            if mode.inference:
                stack.enter_context(torch.inference_mode())
            elif not mode.grad and torch.is_grad_enabled():
                stack.enter_context(torch.no_grad())
        yield


def needs_context(mode: Mode | None) -> bool:
    """Whether :func:`applied` would change anything now (fast path for replay)."""
    return mode is not None or bool(torch._C._is_any_autocast_enabled())


def to_doc(mode: Mode | None) -> list[Any] | None:
    """``mode`` as JSON: ``[grad, inference, [[device_type, dtype_name], ...]]``."""
    if mode is None:
        return None
    return [mode.grad, mode.inference,
            [[d, str(t).removeprefix("torch.")] for d, t in mode.autocast]]


def from_doc(doc: Any, where: str) -> Mode | None:
    """The mode :func:`to_doc` wrote; anything else is a :class:`LoadError`."""
    if doc is None:
        return None
    bad = LoadError(f"{where}: expected [grad, inference, [[device_type, dtype], ...]], "
                    f"got {doc!r:.120}.")
    if not (isinstance(doc, list) and len(doc) == 3 and isinstance(doc[0], bool)
            and isinstance(doc[1], bool) and isinstance(doc[2], list)):
        raise bad
    autocast = []
    for pair in doc[2]:
        if not (isinstance(pair, list) and len(pair) == 2 and pair[0] in _AUTOCAST_DEVICES
                and isinstance(pair[1], str) and pair[1].isidentifier()):
            raise bad
        dtype = vars(torch).get(pair[1])
        if not isinstance(dtype, torch.dtype):
            raise bad
        autocast.append((pair[0], dtype))
    key = (doc[0], doc[1], tuple(autocast))
    return _INTERNED.setdefault(key, Mode(*key))
