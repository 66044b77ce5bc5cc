"""Selectors on what an op is: its function (:func:`func`), its position in call order
(:func:`index`), its position in the finished trace (:func:`ordinal`), or anything a
callable decides (:func:`where`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lens.errors import SelectorError
from lens.selectors._base import Selector
from lens.selectors._protocol import TIMINGS, OpLike, Timing

# Kept in step with lens.capture.funcs.op_type, which decides the types ops carry.
_REFLECTED = {
    "__radd__": "add",
    "__rmul__": "mul",
    "__rand__": "and",
    "__ror__": "or",
    "__rxor__": "xor",
}
_INPLACE_DUNDERS = frozenset(
    {
        "__iadd__",
        "__isub__",
        "__imul__",
        "__itruediv__",
        "__idiv__",
        "__ifloordiv__",
        "__imod__",
        "__ipow__",
        "__iand__",
        "__ior__",
        "__ixor__",
        "__ilshift__",
        "__irshift__",
        "__imatmul__",
    }
)


def normalize_op_type(name: str) -> str:
    """The op type a function name is recorded under: lowercase, underscores removed.

    ``'max_pool2d'`` and ``'MaxPool2d'`` give ``'maxpool2d'``, ``'__add__'`` gives ``'add'``;
    reflected and in-place dunders give their plain operator (``'__iadd__'`` -> ``'add'``),
    as the capture engine records them.
    """
    name = _REFLECTED.get(name, name)
    if name in _INPLACE_DUNDERS:
        name = name[3:-2]
    return name.replace("_", "").lower()


# Names that also find ops recorded under another type: ``x / y``, ``torch.true_divide``
# and ``torch.div`` without a rounding mode are recorded as ``'truediv'`` (the Python
# operator's name), so ``tl.func('div')`` (any division through div) still finds them.
TYPE_ALIASES: dict[str, tuple[str, ...]] = {
    "div": ("truediv",),
    "divide": ("div", "truediv"),
    "truedivide": ("truediv",),
}


def _tuple_of(
    kind: str, values: object, check: Callable[[object], str | None]
) -> tuple[object, ...]:
    if not isinstance(values, tuple) or not values:
        raise SelectorError(f"{kind}() needs at least one argument, got none.")
    for value in values:
        problem = check(value)
        if problem:
            raise SelectorError(f"{kind}({value!r}): {problem}")
    return tuple(dict.fromkeys(values))


def _args(values: tuple[object, ...]) -> str:
    return ", ".join(repr(v) for v in values)


def _name_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"function names are strings, got {type(value).__name__}."
    if not normalize_op_type(value):
        return "a function name needs at least one letter or digit, e.g. 'conv2d'."
    return None


@dataclass(frozen=True, slots=True, repr=False)
class Func(Selector):
    """Matches ops whose normalized type is one of ``types``."""

    types: tuple[str, ...]
    accepts: frozenset[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = _tuple_of("tl.func", self.types, _name_problem)
        normalized = tuple(dict.fromkeys(normalize_op_type(str(n)) for n in names))
        object.__setattr__(self, "types", normalized)
        extra = (alias for t in normalized for alias in TYPE_ALIASES.get(t, ()))
        object.__setattr__(self, "accepts", frozenset((*normalized, *extra)))

    def matches(self, op: OpLike) -> bool:
        return op.type in self.accepts

    @property
    def timing(self) -> Timing:
        return "live"

    def __repr__(self) -> str:
        return f"tl.func({_args(self.types)})"


def func(*names: str) -> Func:
    """Ops running any of the functions ``names``: ``tl.func('conv2d', 'linear')``.

    Names are normalized like op types, so ``'max_pool2d'`` and ``'maxpool2d'`` are the
    same, and ``'__add__'`` matches the op type ``'add'``. Special sources are
    ``'input'``, ``'output'``, ``'buffer'`` and ``'constant'``.

    Selectors hold no torch state, so names are checked when the selector meets a model
    (``tl.trace``, ``tl.record``, ``tl.run``, ``tl.pluck``): a name torch cannot produce
    raises :class:`SelectorError` listing the closest op types.
    """
    return Func(names)


def _position_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"positions are ints, got {type(value).__name__}."
    return None


def _index_problem(value: object) -> str | None:
    problem = _position_problem(value)
    if problem is None and isinstance(value, int) and value < 0:
        return (
            "call order counts from 0 and cannot be negative; to count from the end "
            f"of the finished trace use tl.ordinal({value})."
        )
    return problem


@dataclass(frozen=True, slots=True, repr=False)
class Index(Selector):
    """Matches ops at the given 0-based positions in call order."""

    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        _tuple_of("tl.index", self.indices, _index_problem)
        object.__setattr__(self, "indices", tuple(dict.fromkeys(self.indices)))

    def matches(self, op: OpLike) -> bool:
        return op.index in self.indices

    @property
    def timing(self) -> Timing:
        return "live"

    def __repr__(self) -> str:
        return f"tl.index({_args(self.indices)})"


def index(*indices: int) -> Index:
    """Ops by their 0-based position in call order: ``tl.index(0, 5)``."""
    return Index(indices)


@dataclass(frozen=True, slots=True, repr=False)
class Ordinal(Selector):
    """Ops by position in the finished trace, Python-style (``-1`` is the last op).

    Positions are only known once the trace is finished, so an ordinal must be bound to
    the trace's ops with :meth:`Selector.bind_ordinals` before it can match.
    """

    positions: tuple[int, ...]

    def __post_init__(self) -> None:
        _tuple_of("tl.ordinal", self.positions, _position_problem)
        object.__setattr__(self, "positions", tuple(dict.fromkeys(self.positions)))

    def matches(self, op: OpLike) -> bool:
        raise SelectorError(
            f"{self!r} counts positions in the finished trace, so it cannot be tested on "
            "one op by itself. Bind it to the trace's ops first: "
            "`sel.bind_ordinals(ops)`, or use tl.index(...) for call order."
        )

    @property
    def timing(self) -> Timing:
        return "final"

    def bind_ordinals(self, ops: Sequence[OpLike]) -> Selector:
        n = len(ops)
        for pos in self.positions:
            if not -n <= pos < n:
                raise SelectorError(
                    f"{self!r}: position {pos} is out of range, the trace has {n} ops "
                    f"(valid positions are {-n} to {n - 1})."
                )
        return Index(tuple(ops[pos].index for pos in self.positions))

    def __repr__(self) -> str:
        return f"tl.ordinal({_args(self.positions)})"


def ordinal(*positions: int) -> Ordinal:
    """Ops by position in the finished trace, like list indexing: ``tl.ordinal(2, -5)``."""
    return Ordinal(positions)


@dataclass(frozen=True, slots=True, repr=False)
class Where(Selector):
    """Matches ops for which ``fn(op)`` is true; ``declared`` says when that is decidable."""

    fn: Callable[[OpLike], bool]
    declared: Timing = "live"

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise SelectorError(
                f"tl.where() needs a callable fn(op) -> bool, got {self.fn!r} "
                f"({type(self.fn).__name__})."
            )
        if self.declared not in TIMINGS:
            raise SelectorError(
                f"tl.where(..., timing={self.declared!r}): timing must be one of "
                f"{', '.join(map(repr, TIMINGS))}."
            )

    def matches(self, op: OpLike) -> bool:
        return bool(self.fn(op))

    @property
    def timing(self) -> Timing:
        return self.declared

    @property
    def lookahead_depth(self) -> int:
        return 1 if self.declared == "lookahead" else 0

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        timing = "" if self.declared == "live" else f", timing={self.declared!r}"
        return f"tl.where({name}{timing})"


def where(fn: Callable[[OpLike], bool], timing: Timing = "live") -> Where:
    """Ops for which ``fn(op)`` is true. Say with ``timing`` when ``fn`` can decide:
    ``'live'`` (default) if it reads only what is known when the op runs, ``'lookahead'``
    if it reads the op's children, ``'final'`` if it reads labels. Use a module-level
    function (not a lambda) if the selector must be pickled.
    """
    return Where(fn, timing)
