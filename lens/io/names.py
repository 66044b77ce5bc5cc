"""Torch callables by qualified name, and back, without ever importing or evaluating.

A saved trace names each op's function by a dotted name such as
``torch.nn.functional.linear``, ``torch.Tensor.__getitem__`` or ``torch.Tensor.T.__get__``
(the getter of a property). On load a name is resolved by attribute lookup inside a fixed
allow-list of torch namespaces, and the object found must be a tensor op: a function torch
lists as overridable by ``__torch_function__`` (everything the capture engine can see goes
through that protocol), or a compiled ATen builtin of torch's operator namespaces. Names
outside the allow-list (``os.system``, ``torch.load``, ``torch.os.system``) are refused.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch

from ..errors import LoadError


def _namespaces() -> tuple[tuple[str, Any], ...]:
    # Order matters when saving: the first namespace holding a callable names it.
    return (
        ("torch.nn.functional", torch.nn.functional),
        ("torch.Tensor", torch.Tensor),
        ("torch.linalg", torch.linalg),
        ("torch.fft", torch.fft),
        ("torch.special", torch.special),
        ("torch", torch),
        ("torch._C._nn", torch._C._nn),
        ("torch._C._VariableFunctions", torch._C._VariableFunctions),
    )


ALLOWED_NAMESPACES = tuple(name for name, _ in _namespaces())

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GETTER_TYPES = (property, types.GetSetDescriptorType, types.MemberDescriptorType)


@lru_cache(maxsize=1)
def _overridable() -> frozenset[Any]:
    funcs: set[Any] = set()
    for listed in torch.overrides.get_overridable_functions().values():
        for f in listed:
            try:
                funcs.add(f)
            except TypeError:
                continue
    return frozenset(funcs)


@lru_cache(maxsize=1)
def _op_modules() -> tuple[Any, ...]:
    """torch's compiled operator namespaces (their builtins are ATen ops)."""
    return tuple(m for m in (getattr(torch._C, n, None)
                             for n in ("_nn", "_linalg", "_fft", "_special")) if m is not None)


# Tensor members that are not tensor computations (pickling, hooks, autograd drivers,
# storage handles): never accepted as a replay target, even though torch lists several of
# them as overridable.
_NOT_OPS = re.compile(
    r"reduce|setstate|getstate|deepcopy|hook|backward|torch_function|torch_dispatch|"
    r"storage|share_memory|dlpack|__array|__new__|__init__|_make_subclass|"
    r"data_ptr|pin_memory|record_stream|^tolist$|^numpy$|^item$|__repr__|__format__")


def is_tensor_op(obj: Any) -> bool:
    """Whether ``obj`` is a torch tensor operation (safe to keep as a replay target).

    Accepted: functions torch lists as overridable by ``__torch_function__``, and compiled
    ATen builtins (``torch._C._VariableFunctions``, ``torch._C._nn``, ``torch._C._linalg``,
    ``_fft``, ``_special``, and ``torch._C.TensorBase`` methods).
    """
    name = getattr(obj, "__name__", None)
    if not isinstance(name, str):
        return False
    if name == "__get__":
        owner = getattr(obj, "__self__", None)
        name = getattr(owner, "__name__", "") or ""
    if _NOT_OPS.search(name):
        return False
    try:
        if obj in _overridable():
            return True
    except TypeError:
        return False
    if isinstance(obj, types.BuiltinFunctionType):
        owner = getattr(obj, "__self__", None)
        if owner is None:  # the static builtins of torch._C._VariableFunctions
            return getattr(torch._C._VariableFunctions, name, None) is obj
        return any(owner is m for m in _op_modules())
    if isinstance(obj, (types.MethodDescriptorType, types.WrapperDescriptorType)):
        return (getattr(obj, "__objclass__", None) is torch._C.TensorBase
                and getattr(torch._C.TensorBase, name, None) is obj)
    return False


def _members(ns: Any) -> list[tuple[str, Any]]:
    if isinstance(ns, types.ModuleType):
        return list(vars(ns).items())
    names = set(dir(ns))
    out = []
    for n in sorted(names):
        try:
            out.append((n, getattr(ns, n)))
        except Exception:  # noqa: BLE001 - an attribute that fails to read names nothing
            continue
    return out


@lru_cache(maxsize=1)
def _index() -> dict[Any, str]:
    """Every tensor op reachable in the allow-list -> its first qualified name."""
    table: dict[Any, str] = {}
    for ns_name, ns in _namespaces():
        for attr, value in _members(ns):
            if not _IDENT.match(attr):
                continue
            candidates = [(value, f"{ns_name}.{attr}")]
            if ns is torch.Tensor and isinstance(value, _GETTER_TYPES):
                candidates.append((value.__get__, f"{ns_name}.{attr}.__get__"))
            for obj, name in candidates:
                try:
                    if obj not in table and is_tensor_op(obj):
                        table[obj] = name
                except TypeError:
                    continue
    return table


def name_of(func: Any) -> str | None:
    """The qualified name ``func`` is saved under, or None if it is no allow-listed op."""
    if func is None:
        return None
    try:
        return _index().get(func)
    except TypeError:
        return None


def describe(func: Any) -> str:
    """A human-readable name for a callable lens cannot save by name (never resolved)."""
    module = getattr(func, "__module__", None) or "?"
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return f"{module}.{qual}" if qual else repr(func)[:200]


def resolve(name: object) -> Callable[..., Any]:
    """The torch op named ``name``; :class:`LoadError` for anything not allow-listed.

    Only attribute lookups inside the allow-listed namespaces happen: nothing is imported,
    evaluated or called.
    """
    if not isinstance(name, str) or len(name) > 300:
        raise LoadError(f"A function name must be a string of dotted identifiers; got "
                        f"{name!r:.200}.")
    for ns_name, ns in sorted(_namespaces(), key=lambda item: -len(item[0])):
        if not name.startswith(ns_name + "."):
            continue
        parts = name[len(ns_name) + 1:].split(".")
        getter = len(parts) == 2 and parts[1] == "__get__" and ns is torch.Tensor
        if len(parts) != 1 and not getter:
            break
        if not _IDENT.match(parts[0]):
            break
        if isinstance(ns, types.ModuleType):
            value = vars(ns).get(parts[0])  # no module __getattr__: nothing gets imported
        else:
            value = getattr(ns, parts[0], None)
        if getter:
            value = value.__get__ if isinstance(value, _GETTER_TYPES) else None
        if value is not None and is_tensor_op(value):
            return value  # type: ignore[no-any-return]
        break
    raise LoadError(
        f"Refusing to load function {name!r}: saved traces may only name torch tensor "
        f"operations inside {', '.join(ALLOWED_NAMESPACES)}. The file was not written by "
        "lens.save, or was edited; it is not loaded (nothing was executed).")
