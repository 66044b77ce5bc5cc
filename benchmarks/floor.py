"""The reference recorders lens is measured against, written here with plain torch.

* :class:`FloorRecorder`: the floor of an exact every-op recorder, a bare
  ``TorchFunctionMode`` that appends ``(func, args, out)`` for every torch call, plus a
  pre- and a post-hook on every module. Nothing is labelled, copied or postprocessed.
* :func:`bare_mode`: that mode alone, without the hooks.
* :func:`hooks_every_module`: what hook-based tools do, a forward hook on every module
  storing its output.
* :func:`hooks_one_module`: the same on one module only.
* :func:`hooks_batched_patching`: a residual patching sweep written with forward hooks,
  one forward per block with every position of that block patched in its own batch row.

Hooks are registered and removed inside each call, as a recorder for any model must.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


class _Appender(TorchFunctionMode):
    def __init__(self, log: list[Any]) -> None:
        super().__init__()
        self.log = log

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.log.append((func, args, out))
        return out


class FloorRecorder:
    """Run ``model(*args)`` with every torch call appended to :attr:`log` and every module
    call bracketed by a pre- and a post-hook entry in :attr:`calls`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.log: list[Any] = []
        self.calls: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.log, self.calls = [], []
        calls = self.calls
        handles = []
        for name, mod in self.model.named_modules():
            handles.append(mod.register_forward_pre_hook(
                lambda m, a, name=name: calls.append((name, a))))
            handles.append(mod.register_forward_hook(
                lambda m, a, o, name=name: calls.append((name, o))))
        try:
            with _Appender(self.log):
                return self.model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()


def bare_mode(model: nn.Module, *args: Any) -> Any:
    """``model(*args)`` under the bare appending ``TorchFunctionMode`` alone: the part of
    :class:`FloorRecorder` no module-boundary mechanism can remove."""
    with _Appender([]):
        return model(*args)


def hooks_every_module(model: nn.Module, names: list[str] | None = None
                       ) -> Callable[..., dict[str, Any]]:
    """A function running ``model`` with a forward hook on every module (or on ``names``)
    that stores its output; returns the stored outputs by module address."""
    mods = [(n, m) for n, m in model.named_modules() if names is None or n in names]

    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        saved: dict[str, Any] = {}
        handles = [m.register_forward_hook(lambda _m, _a, o, n=n: saved.__setitem__(n, o))
                   for n, m in mods]
        try:
            model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        return saved
    return run


def hooks_one_module(model: nn.Module, name: str) -> Callable[..., dict[str, Any]]:
    return hooks_every_module(model, [name])


def _main(o: Any) -> torch.Tensor:
    """A block's hidden states, whether it returns a tensor or a tuple."""
    return o[0] if isinstance(o, tuple) else o


def hooks_batched_patching(model: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor,
                           blocks: list[str], metric: Callable[[torch.Tensor], torch.Tensor]
                           ) -> torch.Tensor:
    """Patch each (block, position) of the clean run into the corrupted run: one clean
    forward storing every block's output, then per block one forward of ``positions``
    corrupted rows, row ``p`` patched at position ``p``. Returns the metric per cell as a
    (blocks, positions) tensor. ``metric`` maps logits of one row to a scalar."""
    saved = hooks_every_module(model, blocks)(clean)
    positions = clean.shape[1]
    rows = corrupted.expand(positions, *corrupted.shape[1:])
    where = torch.arange(positions)
    out = torch.empty(len(blocks), positions)
    for b, name in enumerate(blocks):
        src = _main(saved[name])[0]

        def patch(_m: Any, _a: Any, o: Any, src: torch.Tensor = src) -> Any:
            h = _main(o).clone()
            h[where, where] = src[where]
            return (h, *o[1:]) if isinstance(o, tuple) else h

        handle = model.get_submodule(name).register_forward_hook(patch)
        try:
            logits = model(rows).logits
        finally:
            handle.remove()
        for p in range(positions):
            out[b, p] = metric(logits[p:p + 1])
    return out
