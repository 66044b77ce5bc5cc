"""Torch callables by qualified name, and back, through the hand-kept allow-list only.

A saved trace names each op's function by a dotted name such as
``torch.nn.functional.linear``, ``torch.Tensor.__getitem__`` or ``torch.Tensor.T.__get__``
(the getter of a property). The names a file may use are exactly those written in
:mod:`lens.io.allowlist`; the table from name to object is built once from that literal
list (never from file content), and resolving a name from a file is one dict lookup in
it. Anything else (``torch.from_file``, ``os.system``, ``torch.nn.functional.torch.load``,
a lookalike spelling) is refused with :class:`LoadError` before anything is called.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch

from ..errors import LoadError
from .allowlist import NAMESPACES, TENSOR_PROPERTIES

_GETTER_TYPES = (property, types.GetSetDescriptorType, types.MemberDescriptorType)


def _namespace(qualified: str) -> Any:
    """The object behind one of the allow-list's fixed namespace names."""
    return {"torch": torch, "torch.Tensor": torch.Tensor,
            "torch.nn.functional": torch.nn.functional, "torch.linalg": torch.linalg,
            "torch.fft": torch.fft, "torch.special": torch.special}[qualified]


def _member(ns: Any, attr: str) -> Any:
    if isinstance(ns, types.ModuleType):
        return vars(ns).get(attr)  # no module __getattr__: nothing gets imported
    return getattr(ns, attr, None)


@lru_cache(maxsize=1)
def _table() -> dict[str, Callable[..., Any]]:
    """Qualified name -> torch callable, for every allow-listed name this torch has."""
    table: dict[str, Callable[..., Any]] = {}
    for ns_name, words in NAMESPACES:
        ns = _namespace(ns_name)
        for attr in words.split():
            value = _member(ns, attr)
            if callable(value) and not isinstance(value, type):
                table[f"{ns_name}.{attr}"] = value
    for attr in TENSOR_PROPERTIES.split():
        value = _member(torch.Tensor, attr)
        if isinstance(value, _GETTER_TYPES):
            table[f"torch.Tensor.{attr}.__get__"] = value.__get__
    return table


@lru_cache(maxsize=1)
def _index() -> dict[Any, str]:
    """Allow-listed callable -> the first name the table gives it."""
    index: dict[Any, str] = {}
    for name, obj in _table().items():
        index.setdefault(obj, name)
    return index


def allowed() -> dict[str, Callable[..., Any]]:
    """A copy of the resolved allow-list: every name a saved trace may use."""
    return dict(_table())


def _lens_ops() -> dict[str, Callable[..., Any]]:
    """Pure tensor computations lens itself records as ops (by exact name only)."""
    from ..capture import storage

    return {"lens.capture.storage.refresh": storage.refresh}


def name_of(func: Any) -> str | None:
    """The qualified name ``func`` is saved under, or None if it is not allow-listed."""
    if func is None:
        return None
    for name, op in _lens_ops().items():
        if func is op:
            return name
    try:
        return _index().get(func)
    except TypeError:  # unhashable: no allow-listed op
        return None


def describe(func: Any) -> str:
    """A human-readable name for a callable lens cannot save by name (never resolved)."""
    module = getattr(func, "__module__", None) or "?"
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return f"{module}.{qual}" if qual else repr(func)[:200]


def resolve(name: object) -> Callable[..., Any]:
    """The allow-listed torch op named ``name``; :class:`LoadError` for any other name.

    One dict lookup: nothing is imported, evaluated, called or looked up as an attribute.
    """
    func = _table().get(name) if type(name) is str else None
    if func is None and type(name) is str:
        func = _lens_ops().get(name)
    if func is None:
        raise LoadError(
            f"Refusing to load function {name!r:.200}: saved traces may only name the pure "
            "tensor operations listed in lens.io.allowlist (torch, torch.Tensor, "
            "torch.nn.functional, torch.linalg, torch.fft, torch.special). The file was "
            "not written by lens.save, or was edited; it is not loaded (nothing was "
            "executed).")
    return func
