"""One walk over a model's modules, parameters and buffers, shared by capture and trace."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ModelIndex:
    """Names of everything the model owns, by object identity and by address."""

    def __init__(self, model: Any) -> None:
        self.module_names: dict[int, str] = {}
        self.params: dict[int, str] = {}
        self.buffers: dict[int, tuple[str, torch.Tensor]] = {}
        self.module_info: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.param_meta: dict[str, tuple[tuple[int, ...], int, torch.dtype, bool]] = {}
        self.param_values: dict[str, torch.Tensor] = {}
        if not isinstance(model, nn.Module):
            return
        for address, mod in model.named_modules(remove_duplicate=False):
            if id(mod) in self.module_names:
                continue  # a module reachable under two names keeps its first
            self.module_names[id(mod)] = address
            prefix = f"{address}." if address else ""
            direct = []
            for pname, p in mod._parameters.items():
                if p is None:
                    continue
                direct.append(prefix + pname)
                if id(p) not in self.params:  # tied weights keep their first name
                    name = prefix + pname
                    self.params[id(p)] = name
                    self.param_meta[name] = (tuple(p.shape), p.numel(), p.dtype,
                                             p.requires_grad)
                    self.param_values[name] = p
            for bname, b in mod._buffers.items():
                if b is not None and id(b) not in self.buffers:
                    self.buffers[id(b)] = (prefix + bname, b)
            if address:
                self.module_info[address] = (type(mod).__name__, tuple(direct))

    @property
    def addresses(self) -> set[str]:
        return set(self.module_info)
