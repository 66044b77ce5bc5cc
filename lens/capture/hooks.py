"""Forward hooks on every module of a model, added and removed in bulk for one capture.

torch's ``register_forward_(pre_)hook`` makes a :class:`RemovableHandle` per hook (a
counter, weak references to the hook dicts). A capture adds two hooks to every module on
every call, and on models with many small modules that alone costs a tenth or more of a
dispatch-bound forward. :class:`ModuleHooks` writes the same entries ``register_*``
writes — so torch runs them exactly as registered hooks, after any the user registered —
under one id taken from torch's own counter (an id must only be unique within one
module's hook dicts), and deletes them on :meth:`remove`. A module without those dicts
(an unusual ``nn.Module`` subclass) gets its hooks through the public API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
          "_forward_hooks_with_kwargs")


class ModuleHooks:
    """A pre-hook ``pre(module, args, kwargs)`` and a post-hook
    ``post(module, args, kwargs, output)`` on each of ``modules``, until :meth:`remove`."""

    def __init__(self, modules: Iterable[nn.Module], pre: Callable[..., Any],
                 post: Callable[..., Any]) -> None:
        self.id = RemovableHandle.next_id
        RemovableHandle.next_id += 1
        self._direct: list[nn.Module] = []
        self._handles: list[RemovableHandle] = []
        hid = self.id
        try:
            for m in modules:
                d = m.__dict__
                try:
                    pre_hooks, pre_kw, hooks, hooks_kw = (d[n] for n in _DICTS)
                except KeyError:
                    self._handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
                    self._handles.append(m.register_forward_hook(post, with_kwargs=True))
                    continue
                self._direct.append(m)
                pre_hooks[hid] = pre
                pre_kw[hid] = True
                hooks[hid] = post
                hooks_kw[hid] = True
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Delete every hook this object added (idempotent)."""
        hid = self.id
        for m in self._direct:
            d = m.__dict__
            for name in _DICTS:
                d[name].pop(hid, None)
        self._direct.clear()
        for h in self._handles:
            h.remove()
        self._handles.clear()
