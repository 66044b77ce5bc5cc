"""One walk over a model's modules, parameters and buffers, shared by capture and trace."""

from __future__ import annotations

from functools import cached_property
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import ModelTypeError

ParamMeta = tuple[tuple[int, ...], int, torch.dtype, bool]


class Owned(NamedTuple):
    """What the modules own: parameters and buffers by identity, module facts by address."""

    params: dict[int, str]
    buffers: dict[int, tuple[str, torch.Tensor]]
    module_info: dict[str, tuple[str, tuple[str, ...]]]
    param_meta: dict[str, ParamMeta]
    param_values: dict[str, torch.Tensor]


class ModelIndex:
    """Names of everything the model owns, by object identity and by address.

    The modules are walked at once (every capture needs them for its hooks); parameters
    and buffers on first use (a hook-only run never asks)."""

    def __init__(self, model: Any) -> None:
        self.module_names: dict[int, str] = {}
        # Every module but the root, once each, by address in named_modules order.
        self.modules: dict[str, nn.Module] = {}
        self._walked: list[tuple[str, nn.Module]] = []
        if not isinstance(model, nn.Module):
            return
        # named_modules(remove_duplicate=False) order, walked by hand (it is walked on every
        # capture); a module reachable under two names keeps its first, and its subtree
        # was walked under that name already.
        names = self.module_names
        stack: list[tuple[str, nn.Module]] = [("", model)]
        while stack:
            address, mod = stack.pop()
            if id(mod) in names:
                continue
            names[id(mod)] = address
            self._walked.append((address, mod))
            children = mod._modules
            if children:
                prefix = f"{address}." if address else ""
                stack.extend((prefix + n, c) for n, c in reversed(children.items())
                             if c is not None)
            if address:
                if isinstance(mod, torch.jit.ScriptModule):
                    raise ModelTypeError(scripted_submodule(address, mod))
                self.modules[address] = mod

    @property
    def submodules(self) -> list[nn.Module]:
        return list(self.modules.values())

    @property
    def addresses(self) -> set[str]:
        return set(self.modules)

    @cached_property
    def owned(self) -> Owned:
        found = Owned({}, {}, {}, {}, {})
        for address, mod in self._walked:
            direct = _own(found, mod, f"{address}." if address else "")
            if address:
                found.module_info[address] = (type(mod).__name__, direct)
        return found

    @property
    def params(self) -> dict[int, str]:
        return self.owned.params

    @property
    def buffers(self) -> dict[int, tuple[str, torch.Tensor]]:
        return self.owned.buffers

    @property
    def module_info(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        return self.owned.module_info

    @property
    def param_meta(self) -> dict[str, ParamMeta]:
        return self.owned.param_meta

    @property
    def param_values(self) -> dict[str, torch.Tensor]:
        return self.owned.param_values


def _own(found: Owned, mod: nn.Module, prefix: str) -> tuple[str, ...]:
    """Record ``mod``'s own parameters and buffers; return its parameter names (tied
    weights and shared buffers keep their first name)."""
    direct = []
    for pname, p in mod._parameters.items():
        if p is None:
            continue
        name = prefix + pname
        direct.append(name)
        if id(p) not in found.params:
            found.params[id(p)] = name
            found.param_meta[name] = (tuple(p.shape), p.numel(), p.dtype, p.requires_grad)
            found.param_values[name] = p
    for bname, b in mod._buffers.items():
        if b is not None and id(b) not in found.buffers:
            found.buffers[id(b)] = (prefix + bname, b)
    return tuple(direct)


def scripted_submodule(address: str, module: nn.Module) -> str:
    """Why a TorchScript submodule cannot be traced: torch refuses the hooks lens puts on
    every module (a bare RuntimeError), and its ops would be invisible anyway."""
    return (f"Submodule {address!r} is a TorchScript module ({type(module).__name__}): its "
            "ops run inside the TorchScript interpreter, where lens cannot see them, and it "
            "takes no hooks. Put the eager module back before tracing (model."
            f"{address} = <the nn.Module you scripted>); tl.compat.report(model, x) lists "
            "every such part.")
