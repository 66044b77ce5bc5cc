"""A model's state, snapshotted and put back bit for bit.

``tl.validate`` runs the model more than once; a forward that reassigns a buffer, writes
into a parameter or stores a plain attribute (``self.last = h``) would otherwise make the
second run differ from the first and leave the model changed. :class:`ModelState` records
every module's ``__dict__`` entries, parameters and buffers (with a copy of each tensor's
values) and the state of generators kept as attributes; :meth:`ModelState.restore` puts
them all back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

_Saved = tuple[Tensor, int, Tensor]  # the tensor, its version counter, a copy of its values


def _save(t: Tensor) -> _Saved:
    with torch.no_grad():
        return (t, t._version, t.detach().clone())


def _put_back(saved: _Saved) -> Tensor:
    t, _, values = saved
    # Always copied: kernels such as batch_norm update running stats in place without
    # bumping the version counter.
    with torch.no_grad():
        t.copy_(values)
    return t


class ModelState:
    """Every module's attributes, parameters and buffers at the time of the snapshot."""

    def __init__(self, model: Any) -> None:
        self.modules: list[tuple[nn.Module, dict[str, Any], dict[str, Any]]] = []
        if not isinstance(model, nn.Module):
            return
        for m in model.modules():
            attrs = dict(m.__dict__)
            tensors: dict[str, Any] = {}
            for group in ("_parameters", "_buffers"):
                table = m.__dict__.get(group) or {}
                attrs[group] = dict(table)
                tensors[group] = {k: _save(v) for k, v in table.items() if v is not None}
            tensors["plain"] = {k: _save(v) for k, v in attrs.items()
                                if isinstance(v, Tensor)}
            tensors["generators"] = {k: (v, v.get_state(), v.get_state())
                                     for k, v in attrs.items()
                                     if isinstance(v, torch.Generator)}
            self.modules.append((m, attrs, tensors))

    def storages(self) -> set[int]:
        """Storage addresses of every snapshotted tensor."""
        return {t.untyped_storage().data_ptr() for _, _, tensors in self.modules
                for key, group in tensors.items() if key != "generators"
                for t, _, _ in group.values()}

    def restore(self) -> None:
        """Put every attribute, parameter and buffer back (object and values)."""
        for m, attrs, tensors in self.modules:
            d = m.__dict__
            for k in [k for k in d if k not in attrs]:
                del d[k]  # attributes the forward added
            for k, v in attrs.items():
                if k in ("_parameters", "_buffers"):
                    table = d[k]
                    table.clear()
                    table.update(v)
                    for saved in tensors[k].values():
                        _put_back(saved)
                elif d.get(k) is not v:
                    d[k] = v
            for saved in tensors["plain"].values():
                _put_back(saved)
            for gen, _, state in tensors["generators"].values():
                gen.set_state(state)
