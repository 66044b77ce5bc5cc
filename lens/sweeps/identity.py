"""What a metric or action *is*, as a hash that survives a restart.

A sweep's rows may be reused by a later run only if that run computes the same thing. A
function's name is not enough (its body may have been edited; every lambda is called
``<lambda>``), so a callable is identified by its code: bytecode, constants, names, and
the values it closes over or takes by default, recursively through nested code objects and
through the module-level functions it calls. File names and line numbers are left out, so
moving a function does not invalidate a result folder. Values whose ``repr`` holds a
memory address contribute only their type, so the hash is the same in every process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types
from typing import Any

import torch

_MAX_DEPTH = 8
_PLAIN = (int, float, complex, str, bytes, bool, type(None), type(Ellipsis))


def code_identity(obj: Any) -> str:
    """A short hex digest of what ``obj`` computes (see the module docstring)."""
    parts: list[str] = []
    _walk(obj, parts, set(), 0)
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()[:16]


def _walk(x: Any, out: list[str], seen: set[int], depth: int) -> None:
    if depth > _MAX_DEPTH:
        out.append(f"<deep {type(x).__qualname__}>")
        return
    if isinstance(x, _PLAIN):
        out.append(repr(x))
        return
    if id(x) in seen:
        out.append("<cycle>")
        return
    seen.add(id(x))
    d = depth + 1
    if isinstance(x, torch.Tensor):
        _tensor(x, out)
    elif isinstance(x, types.CodeType):
        _code(x, out, seen, d)
    elif isinstance(x, types.FunctionType):
        _function(x, out, seen, d)
    elif isinstance(x, types.MethodType):
        out.append("method")
        _walk(x.__func__, out, seen, d)
        _walk(x.__self__, out, seen, d)
    elif isinstance(x, functools.partial):
        out.append("partial")
        for v in (x.func, x.args, sorted(x.keywords.items())):
            _walk(v, out, seen, d)
    elif isinstance(x, (list, tuple)):
        out.append(f"{type(x).__name__}[{len(x)}]")
        for v in x:
            _walk(v, out, seen, d)
    elif isinstance(x, (set, frozenset)):  # element order varies with hash seeds
        out.append(f"set[{sorted(repr(v) for v in x)}]")
    elif isinstance(x, dict):
        out.append(f"dict[{len(x)}]")
        for k, v in sorted(x.items(), key=lambda kv: repr(kv[0])):
            out.append(repr(k))
            _walk(v, out, seen, d)
    elif isinstance(x, torch.nn.Module):
        out.append(f"module {type(x).__qualname__}")
        _walk(dict(x.state_dict()), out, seen, d)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        out.append(f"dataclass {type(x).__module__}.{type(x).__qualname__}")
        for f in dataclasses.fields(x):
            out.append(f.name)
            _walk(getattr(x, f.name), out, seen, d)
    else:
        _other(x, out, seen, d)


def _tensor(t: torch.Tensor, out: list[str]) -> None:
    c = t.detach().cpu().contiguous()
    blob = c.view(torch.uint8).numpy().tobytes() if c.numel() else b""
    out.append(f"tensor {tuple(c.shape)} {c.dtype} {hashlib.sha256(blob).hexdigest()}")


def _code(co: types.CodeType, out: list[str], seen: set[int], depth: int) -> None:
    out.append(f"code {co.co_name} {co.co_argcount} {co.co_kwonlyargcount} {co.co_flags}")
    out.append(co.co_code.hex())
    out.append(repr(co.co_names))
    out.append(repr(co.co_varnames))
    out.append(repr(co.co_freevars))
    for c in co.co_consts:
        _walk(c, out, seen, depth)


def _function(fn: types.FunctionType, out: list[str], seen: set[int], depth: int) -> None:
    out.append(f"function {fn.__module__}.{fn.__qualname__}")
    _code(fn.__code__, out, seen, depth)
    _walk(fn.__defaults__, out, seen, depth)
    _walk(fn.__kwdefaults__, out, seen, depth)
    for cell in fn.__closure__ or ():
        try:
            _walk(cell.cell_contents, out, seen, depth)
        except ValueError:  # an empty cell
            out.append("<empty cell>")
    # Globals the code names: plain values and functions (helpers the metric calls).
    for name in _global_names(fn.__code__):
        if name in fn.__globals__:
            v = fn.__globals__[name]
            if isinstance(v, (*_PLAIN, types.FunctionType)):
                out.append(f"global {name}")
                _walk(v, out, seen, depth)


def _global_names(co: types.CodeType) -> list[str]:
    names = list(co.co_names)
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            names.extend(_global_names(c))
    return sorted(set(names))


def _other(x: Any, out: list[str], seen: set[int], depth: int) -> None:
    cls = type(x)
    out.append(f"object {cls.__module__}.{cls.__qualname__}")
    text = repr(x)
    if " at 0x" not in text and "object at" not in text:
        out.append(text)
    call = cls.__dict__.get("__call__") if callable(x) else None
    if isinstance(call, types.FunctionType):
        _walk(call, out, seen, depth)
    state = getattr(x, "__dict__", None)
    if isinstance(state, dict):
        _walk(state, out, seen, depth)
