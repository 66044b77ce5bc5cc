"""Facts about torch callables, computed once per callable and cached.

The capture engine asks, for every intercepted call, what the function is called, what
its normalized op type is, and whether (and which argument) it modifies in place. The
answers depend only on the callable, so they are cached in a dict keyed by it.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

from ..selectors import normalize_op_type
from .rng import may_draw

# In-place dunder operators (modify their first argument).
_INPLACE_DUNDERS = frozenset({
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "__idiv__", "__ifloordiv__",
    "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__",
    "__irshift__", "__imatmul__", "__setitem__",
})


class FuncInfo(NamedTuple):
    name: str  # raw name ('max_pool2d', '__add__', 'T' for the Tensor.T property)
    type: str  # normalized op type used in labels ('maxpool2d', 'add', 't')
    inplace_arg: int | None  # the argument this call always modifies in place
    inplace_flag: int | None  # position of an ``inplace=`` parameter, if any
    query: bool = False  # a metadata query that never returns a tensor (shape, dim, ...)
    random: bool = False  # may draw random numbers (see lens.capture.rng)
    divides: bool = False  # type depends on the call: 'truediv' unless a rounding_mode
    # none of the above and no side writes: the engine's fast path records it (unless
    # called with ``out=``)
    plain: bool = False


# Functions that may write into an argument as a side effect (see storage.side_writes).
SIDE_WRITES = frozenset({"batch_norm", "instance_norm"})


# Division through div/divide/true_divide: true division is recorded as 'truediv' (the
# name of Python's ``/``), division with a rounding mode as 'div'.
_DIVISIONS = frozenset({"div", "divide", "truedivide", "truediv"})


def call_type(fi: FuncInfo, kwargs: dict[str, Any]) -> str:
    """The op type of one call of ``fi`` (only divisions depend on their arguments)."""
    if not fi.divides:
        return fi.type
    return "div" if kwargs.get("rounding_mode") is not None else "truediv"


# Tensor methods and properties that only read metadata: the engine passes them straight
# through (a GPT-2 forward makes several such calls per recorded op).
_QUERIES = frozenset({
    "dim", "ndim", "size", "shape", "dtype", "device", "numel", "nelement", "stride",
    "is_contiguous", "is_floating_point", "is_complex", "requires_grad", "is_leaf",
    "grad_fn", "data_ptr", "element_size", "storage_offset", "layout", "is_cuda",
    "is_sparse", "is_quantized", "is_meta", "get_device", "__len__", "_version",
    "names", "__hash__", "__format__", "__repr__", "__index__", "__int__", "__float__",
})


_CACHE: dict[Any, FuncInfo] = {}


def func_name(func: Any) -> str:
    """The plain name of a torch callable, including property getters."""
    name = getattr(func, "__name__", None)
    if name == "__get__":  # a property getter: Tensor.T.__get__ and friends
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", None) or "get"
    if not isinstance(name, str):
        name = type(func).__name__
    return name


def op_type(name: str) -> str:
    """Normalized type for labels: lowercase, no underscores (labels use ``_`` as a separator).

    The selectors' ``func(...)`` uses the same normalization, so the two always agree.
    """
    return normalize_op_type(name) or "op"


def _inplace_flag_position(func: Any) -> int | None:
    try:
        params = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None
    return params.index("inplace") if "inplace" in params else None


def info(func: Any) -> FuncInfo:
    """Cached :class:`FuncInfo` for ``func``."""
    try:
        return _CACHE[func]
    except KeyError:
        pass
    except TypeError:  # unhashable callable: compute each time
        return _compute(func)
    result = _compute(func)
    _CACHE[func] = result
    return result


def _compute(func: Any) -> FuncInfo:
    name = func_name(func)
    inplace_arg = None
    if name in _INPLACE_DUNDERS or (name.endswith("_") and not name.endswith("__")):
        inplace_arg = 0
    flag = None if inplace_arg is not None else _inplace_flag_position(func)
    # only Tensor methods and property getters (bound to a class or a descriptor)
    query = name in _QUERIES and (getattr(func, "__self__", None) is not None
                                  or getattr(func, "__objclass__", None) is not None)
    type_ = op_type(name)
    random, divides = may_draw(name), type_ in _DIVISIONS
    plain = (inplace_arg is None and flag is None and not query and not random
             and not divides and name not in SIDE_WRITES)
    return FuncInfo(name, type_, inplace_arg, flag, query, random, divides, plain)


def mutated_arg(fi: FuncInfo, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """Index of the positional argument this call modifies in place, or None."""
    if fi.inplace_arg is not None:
        return fi.inplace_arg if args else None
    if fi.inplace_flag is not None:
        if kwargs.get("inplace") is True:
            return 0
        if len(args) > fi.inplace_flag and args[fi.inplace_flag] is True:
            return 0
    return None
