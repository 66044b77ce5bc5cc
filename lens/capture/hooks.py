"""Module entry and exit for one capture: every module's ``forward`` wrapped, then restored.

A capture must know when each module call starts and ends. Forward hooks tell it, but a
module with any hook leaves torch's fast call path for a slower one (the ``inner`` call
that runs hook lists, global hooks and backward-hook checks), and on a dispatch-bound
model that detour alone costs about half a raw forward. :class:`ModuleHooks` instead sets
an instance attribute ``forward`` on each module: ``nn.Module.__call__`` calls
``self.forward``, so the wrapper runs where the module's own ``forward`` would, and the
module keeps torch's fast path. Its ``__wrapped__`` is the original, so
``inspect.signature(module.forward)`` still reads the module's own parameters. A module
whose class makes ``forward`` a data descriptor (an instance cannot shadow it) gets
torch's hooks instead; those run for every thread's calls (the engine's hook bodies
check the thread themselves).

Order relative to hooks the user registered: their pre-hooks run first (we see the inputs
they made), and their forward hooks run after our exit (they see the output an
intervention made, and ops they run belong to the enclosing module).

Modules are shared between threads (the function mode is not: torch keeps it per thread).
A module is wrapped once however many captures use it; each wrapper looks up the capture
of the thread calling it and calls straight through for any other thread. The last
capture to finish with a module restores its ``forward`` (an instance ``forward`` the
module had before, such as accelerate's, is put back).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

Pre = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], Any]
Post = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], Any]

_LOCK = threading.Lock()
_MISSING = object()
_ident = threading.get_ident


class _Forward:
    """The ``forward`` set on one module while captures use it: calls ``inner`` (what
    ``module.forward`` was) between the (pre, post) pairs of the calling thread's
    captures. ``before`` is the instance ``forward`` the module had (or missing)."""

    __slots__ = ("module", "inner", "before", "users", "__wrapped__")

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.before = module.__dict__.get("forward", _MISSING)
        self.inner: Callable[..., Any] = module.forward
        self.__wrapped__ = self.inner  # inspect.signature reads the module's own
        self.users: dict[int, list[tuple[Pre, Post]]] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        pairs = self.users.get(_ident())
        if not pairs:  # another thread's call
            return self.inner(*args, **kwargs)
        module = self.module
        if len(pairs) == 1:
            pre, post = pairs[0]
            pre(module, args, kwargs)
            out = self.inner(*args, **kwargs)
            new = post(module, args, kwargs, out)
            return out if new is None else new
        pairs = list(pairs)  # nested captures in one thread: each sees the call
        for pre, _ in pairs:
            pre(module, args, kwargs)
        out = self.inner(*args, **kwargs)
        for _, post in pairs:
            new = post(module, args, kwargs, out)
            if new is not None:
                out = new
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        """A copy of the model made while a capture runs gets its own forward, not this
        one (which would run the original module)."""
        copied = memo.get(id(self.module))
        if copied is None or self.before is not _MISSING:
            return copy.deepcopy(self.before, memo) if self.before is not _MISSING else self
        return type(copied).forward.__get__(copied)


def _wrapping(m: nn.Module) -> _Forward | None:
    """Our wrapper in ``m.forward`` (the state lives on the object it describes), or
    None when ``m`` is not wrapped by a capture."""
    f = m.__dict__.get("forward")
    return f if type(f) is _Forward and f.module is m else None


class ModuleHooks:
    """``pre(module, args, kwargs)`` on entry and ``post(module, args, kwargs, output)``
    (returning a replacement output, or None) on exit of each of ``modules``, for calls
    made by this thread, until :meth:`remove`. A call that raises gets no ``post``."""

    def __init__(self, modules: Iterable[nn.Module], pre: Pre, post: Post) -> None:
        self.thread = _ident()
        self.pair = (pre, post)
        self._modules: list[nn.Module] = []
        self._handles: list[RemovableHandle] = []
        with _LOCK:
            try:
                for m in modules:
                    self._add(m)
            except BaseException:
                self._remove_all()
                raise

    def _add(self, m: nn.Module) -> None:
        f = _wrapping(m)
        if f is None:
            f = _Forward(m)
            m.__dict__["forward"] = f
            if m.forward is not f:  # a class whose forward an instance cannot shadow
                del m.__dict__["forward"]
                pre, post = self.pair
                self._handles += [m.register_forward_pre_hook(pre, with_kwargs=True),
                                  m.register_forward_hook(post, with_kwargs=True)]
                return
        f.users.setdefault(self.thread, []).append(self.pair)
        self._modules.append(m)

    def remove(self) -> None:
        """Take this capture's hooks off; unwrap modules no other capture uses
        (idempotent)."""
        with _LOCK:
            self._remove_all()

    def _remove_all(self) -> None:
        for m in self._modules:
            f = _wrapping(m)
            if f is None:  # the model replaced its forward meanwhile: leave it
                continue
            pairs = f.users.get(self.thread)
            if pairs:
                for i in range(len(pairs) - 1, -1, -1):
                    if pairs[i] is self.pair:
                        del pairs[i]
                        break
                if not pairs:
                    del f.users[self.thread]
            if not f.users:
                if f.before is _MISSING:
                    del m.__dict__["forward"]
                else:
                    m.__dict__["forward"] = f.before
        self._modules.clear()
        for h in self._handles:
            h.remove()
        self._handles.clear()
