"""Independent ground truth for live edits: plain forward hooks, and a ten-line torch
function mode that edits the k-th call of one function (no lens code involved)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

Edit = Callable[[Tensor], Tensor]


def _map(obj: Any, fn: Edit) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_map(x, fn) for x in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map(x, fn) for x in obj)
    if isinstance(obj, dict):
        return type(obj)({k: _map(v, fn) for k, v in obj.items()})
    return obj


def run_with_hook(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                  address: str, fn: Edit, call: int | None = None, seed: int = 0) -> Any:
    """``model`` with ``fn`` applied to every tensor the module at ``address`` returns
    (only on its ``call``-th call when given), via register_forward_hook."""
    module = model.get_submodule(address)
    count = [0]

    def hook(m: nn.Module, inputs: Any, output: Any) -> Any:
        count[0] += 1
        if call is not None and count[0] != call:
            return None
        return _map(output, fn)

    handle = module.register_forward_hook(hook)
    try:
        torch.manual_seed(seed)
        return model(*args, **kwargs)
    finally:
        handle.remove()


class _EditCall(TorchFunctionMode):
    def __init__(self, name: str, k: int, fn: Edit) -> None:
        super().__init__()
        self.name, self.k, self.fn, self.seen = name, k, fn, 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", None) != self.name:
            return out
        inplace = self.name == "__setitem__" or (
            self.name.endswith("_") and not self.name.startswith("__")
            or self.name.startswith("__i"))
        target = args[0] if inplace else out
        if not isinstance(target, Tensor):
            return out
        self.seen += 1
        if self.seen != self.k:
            return out
        new = self.fn(target)
        if inplace:  # the model keeps using the tensor it mutated
            target.copy_(new)
            return out
        return new


def run_with_call_edit(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                       func_name: str, k: int, fn: Edit, seed: int = 0) -> Any:
    """``model`` with ``fn`` applied to the output of the k-th (1-based) call of the torch
    function named ``func_name``."""
    torch.manual_seed(seed)
    with _EditCall(func_name, k, fn):
        return model(*args, **kwargs)
