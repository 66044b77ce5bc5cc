"""The on-disk vocabulary of saved traces: the schema version, tagged JSON values, and
strict readers that turn malformed JSON into :class:`LoadError`.

Non-tensor values are written with explicit type tags so they decode exactly::

    None, True, 3, "abc"          written as themselves (JSON tells them apart)
    [a, b]                        a list
    {"$": "tuple", "v": [...]}    tuple           {"$": "float", "v": 0.5 | "nan" | "inf"}
    {"$": "ref", "op": 7}         Ref(7)          {"$": "param", "name": "fc.weight"}
    {"$": "slice", "v": [a,b,c]}  slice(a, b, c)  {"$": "ellipsis"}
    {"$": "size", "v": [2, 3]}    torch.Size      {"$": "complex", "re": .., "im": ..}
    {"$": "dtype", "v": "float32"}   {"$": "device", "v": "cuda:0"}
    {"$": "memory_format", "v": "channels_last"}   {"$": "layout", "v": "strided"}
    {"$": "dict", "v": {"k": ...}}                 {"$": "tensor", "key": "t3"}
    {"$": "opaque", "type": "mod.Class", "repr": "..."}   anything else (not replayable)

Decoding never calls anything named in the file: tags map to fixed constructors, and
torch constants (dtypes, layouts, memory formats) are looked up in ``vars(torch)`` and
type-checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..capture.records import ParamRef, Ref
from ..errors import LoadError

SCHEMA_VERSION = 1
FORMAT = "lens-trace"
JSON_NAME = "trace.json"
TENSORS_NAME = "tensors.safetensors"


class Opaque:
    """A value lens could not write portably; it prints as what it was."""

    __slots__ = ("type_name", "text")

    def __init__(self, type_name: str, text: str) -> None:
        self.type_name = type_name
        self.text = text

    def __repr__(self) -> str:
        return f"<opaque {self.type_name}: {self.text}>"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Opaque) and other.type_name == self.type_name
                and other.text == self.text)

    def __hash__(self) -> int:
        return hash((self.type_name, self.text))


class Repr:
    """Stands for an object known only by its repr (a saved selector, a fired action)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Repr) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _short(name: Any) -> str:
    return str(name).removeprefix("torch.")


# ---------------------------------------------------------------------------- encoding
def encode(v: Any, tensor_key: Callable[[torch.Tensor], str] | None = None) -> Any:
    """JSON-ready form of ``v`` (see the module docstring). ``tensor_key`` stores a tensor
    and returns its key; without it tensors are opaque."""
    if v is None or v is True or v is False or type(v) is str:
        return v
    if isinstance(v, Ref):
        return {"$": "ref", "op": int(v.op)}
    if isinstance(v, ParamRef):
        return {"$": "param", "name": str(v.name)}
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        f = float(v)
        return {"$": "float", "v": f if math.isfinite(f) else repr(f)}
    if isinstance(v, complex):
        return {"$": "complex", "re": encode(v.real), "im": encode(v.imag)}
    if isinstance(v, torch.Size):
        return {"$": "size", "v": [int(x) for x in v]}
    if isinstance(v, tuple):  # a namedtuple is kept as a plain tuple
        return {"$": "tuple", "v": [encode(x, tensor_key) for x in v]}
    if isinstance(v, list):
        return [encode(x, tensor_key) for x in v]
    if isinstance(v, slice):
        return {"$": "slice", "v": [encode(v.start, tensor_key), encode(v.stop, tensor_key),
                                    encode(v.step, tensor_key)]}
    if v is Ellipsis:
        return {"$": "ellipsis"}
    if isinstance(v, torch.dtype):
        return {"$": "dtype", "v": _short(v)}
    if isinstance(v, torch.device):
        return {"$": "device", "v": str(v)}
    if isinstance(v, torch.memory_format):
        return {"$": "memory_format", "v": _short(v)}
    if isinstance(v, torch.layout):
        return {"$": "layout", "v": _short(v)}
    if isinstance(v, torch.Tensor) and tensor_key is not None:
        return {"$": "tensor", "key": tensor_key(v)}
    if isinstance(v, Mapping) and all(isinstance(k, str) for k in v):
        return {"$": "dict", "v": {k: encode(x, tensor_key) for k, x in v.items()}}
    if isinstance(v, (Opaque, Repr)):
        return {"$": "opaque", "type": getattr(v, "type_name", "repr"), "repr": repr(v)}
    return opaque(v)


def opaque(v: Any) -> dict[str, Any]:
    try:
        text = repr(v)
    except Exception:  # noqa: BLE001 - a repr that raises is still an opaque value
        text = "?"
    t = type(v)
    return {"$": "opaque", "type": f"{t.__module__}.{t.__qualname__}", "repr": text[:300]}


def contains_opaque(v: Any) -> bool:
    if isinstance(v, Opaque):
        return True
    if isinstance(v, (tuple, list)):
        return any(contains_opaque(x) for x in v)
    if isinstance(v, slice):
        return any(contains_opaque(x) for x in (v.start, v.stop, v.step))
    if isinstance(v, dict):
        return any(contains_opaque(x) for x in v.values())
    return False


# ---------------------------------------------------------------------------- decoding
def decode(j: Any, where: str, tensors: Mapping[str, torch.Tensor] | None = None) -> Any:
    """The value ``j`` encodes; :class:`LoadError` naming ``where`` if it is malformed."""
    if j is None or isinstance(j, (bool, str)):
        return j
    if isinstance(j, int):
        return j
    if isinstance(j, list):
        return [decode(x, f"{where}[{i}]", tensors) for i, x in enumerate(j)]
    if not isinstance(j, dict):
        raise LoadError(f"{where}: unexpected JSON value {j!r:.80} (type {type(j).__name__}).")
    tag = j.get("$")
    fn = _DECODERS.get(tag) if isinstance(tag, str) else None
    if fn is None:
        raise LoadError(f"{where}: unknown value tag {tag!r:.80}.")
    return fn(j, where, tensors)


def _field(j: dict[str, Any], key: str, where: str) -> Any:
    if key not in j:
        raise LoadError(f"{where}: missing field {key!r}.")
    return j[key]


def _float(j: dict[str, Any], where: str, t: Any) -> float:
    v = _field(j, "v", where)
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise LoadError(f"{where}: a float must be a number or 'nan'/'inf'; got {v!r:.80}.")
    if isinstance(v, str):
        if v not in ("nan", "inf", "-inf"):
            raise LoadError(f"{where}: unknown float {v!r:.80}.")
        return float(v)
    return float(v)


def _seq(j: dict[str, Any], where: str) -> list[Any]:
    v = _field(j, "v", where)
    if not isinstance(v, list):
        raise LoadError(f"{where}: expected a list under 'v', got {type(v).__name__}.")
    return v


def _torch_const(kind: type, label: str) -> Callable[[dict[str, Any], str, Any], Any]:
    def dec(j: dict[str, Any], where: str, t: Any) -> Any:
        name = _field(j, "v", where)
        value = vars(torch).get(name) if isinstance(name, str) and name.isidentifier() else None
        if not isinstance(value, kind):
            raise LoadError(f"{where}: {name!r:.80} is not a torch {label}.")
        return value
    return dec


def _device(j: dict[str, Any], where: str, t: Any) -> torch.device:
    name = _field(j, "v", where)
    if not isinstance(name, str) or len(name) > 64:
        raise LoadError(f"{where}: a device must be a short string, got {name!r:.80}.")
    try:
        return torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise LoadError(f"{where}: bad device {name!r}: {e}") from None


def _int_field(j: dict[str, Any], key: str, where: str) -> int:
    v = _field(j, key, where)
    if isinstance(v, bool) or not isinstance(v, int):
        raise LoadError(f"{where}: {key!r} must be an integer, got {v!r:.80}.")
    return v


def _str_field(j: dict[str, Any], key: str, where: str) -> str:
    v = _field(j, key, where)
    if not isinstance(v, str):
        raise LoadError(f"{where}: {key!r} must be a string, got {v!r:.80}.")
    return v


def _tensor(j: dict[str, Any], where: str, tensors: Any) -> torch.Tensor:
    key = _str_field(j, "key", where)
    if tensors is None or key not in tensors:
        raise LoadError(f"{where}: tensor {key!r} is not in the tensor file.")
    return tensors[key]  # type: ignore[no-any-return]


def _dict(j: dict[str, Any], where: str, t: Any) -> dict[str, Any]:
    v = _field(j, "v", where)
    if not isinstance(v, dict):
        raise LoadError(f"{where}: expected an object under 'v'.")
    return {str(k): decode(x, f"{where}.{k}", t) for k, x in v.items()}


def _slice(j: dict[str, Any], where: str, t: Any) -> slice:
    parts = _seq(j, where)
    if len(parts) != 3:
        raise LoadError(f"{where}: a slice has 3 parts, got {len(parts)}.")
    return slice(*(decode(p, where, t) for p in parts))


def _size(j: dict[str, Any], where: str, t: Any) -> torch.Size:
    items = _seq(j, where)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise LoadError(f"{where}: a torch.Size holds integers only.")
    return torch.Size(items)


_DECODERS: dict[str, Callable[[dict[str, Any], str, Any], Any]] = {
    "ref": lambda j, w, t: Ref(_int_field(j, "op", w)),
    "param": lambda j, w, t: ParamRef(_str_field(j, "name", w)),
    "float": _float,
    "complex": lambda j, w, t: complex(decode(_field(j, "re", w), w),
                                       decode(_field(j, "im", w), w)),
    "tuple": lambda j, w, t: tuple(decode(x, f"{w}[{i}]", t) for i, x in enumerate(_seq(j, w))),
    "slice": _slice,
    "ellipsis": lambda j, w, t: Ellipsis,
    "size": _size,
    "dtype": _torch_const(torch.dtype, "dtype"),
    "memory_format": _torch_const(torch.memory_format, "memory format"),
    "layout": _torch_const(torch.layout, "layout"),
    "device": _device,
    "dict": _dict,
    "tensor": _tensor,
    "opaque": lambda j, w, t: Opaque(_str_field(j, "type", w), _str_field(j, "repr", w)),
}


# ---------------------------------------------------------------------------- readers
class Reader:
    """Typed access to one JSON object; every mismatch is a :class:`LoadError` with a path."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise LoadError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
        self.obj = obj
        self.where = where

    def raw(self, key: str) -> Any:
        return _field(self.obj, key, self.where)

    def integer(self, key: str, optional: bool = False) -> Any:
        v = self.raw(key)
        if optional and v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise LoadError(f"{self.where}.{key}: expected an integer, got {v!r:.80}.")
        return v

    def number(self, key: str) -> float:
        v = self.raw(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise LoadError(f"{self.where}.{key}: expected a number, got {v!r:.80}.")
        return float(v)

    def flag(self, key: str) -> bool:
        v = self.raw(key)
        if not isinstance(v, bool):
            raise LoadError(f"{self.where}.{key}: expected true/false, got {v!r:.80}.")
        return v

    def text(self, key: str, optional: bool = False) -> Any:
        v = self.raw(key)
        if optional and v is None:
            return None
        if not isinstance(v, str):
            raise LoadError(f"{self.where}.{key}: expected a string, got {v!r:.80}.")
        return v

    def array(self, key: str) -> list[Any]:
        v = self.raw(key)
        if not isinstance(v, list):
            raise LoadError(f"{self.where}.{key}: expected a list, got {type(v).__name__}.")
        return v

    def integers(self, key: str) -> list[int]:
        items = self.array(key)
        for x in items:
            if isinstance(x, bool) or not isinstance(x, int):
                raise LoadError(f"{self.where}.{key}: expected integers, got {x!r:.80}.")
        return items

    def texts(self, key: str) -> list[str]:
        items = self.array(key)
        for x in items:
            if not isinstance(x, str):
                raise LoadError(f"{self.where}.{key}: expected strings, got {x!r:.80}.")
        return items

    def mapping(self, key: str) -> dict[str, Any]:
        v = self.raw(key)
        if not isinstance(v, dict):
            raise LoadError(f"{self.where}.{key}: expected an object, got {type(v).__name__}.")
        return v

    def sub(self, key: str) -> Reader:
        return Reader(self.raw(key), f"{self.where}.{key}")


def dtype_named(name: Any, where: str) -> torch.dtype:
    value = vars(torch).get(name) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(value, torch.dtype):
        raise LoadError(f"{where}: {name!r:.80} is not a torch dtype.")
    return value


def dtype_name(dtype: torch.dtype) -> str:
    return _short(dtype)
