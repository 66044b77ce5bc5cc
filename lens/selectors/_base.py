"""The selector base class and the boolean algebra over selectors.

A selector is a frozen dataclass that answers one question about an op. ``&``, ``|``
and ``~`` build :class:`And`, :class:`Or` and :class:`Not` nodes through :func:`all_of`,
:func:`any_of` and ``__invert__``, which keep trees small and their ``repr`` readable:
nested And/Or are flattened, repeats dropped, ``everything()``/``nothing()`` absorbed,
and ``~~s`` is ``s``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

from lens.errors import SelectorError
from lens.selectors._protocol import OpLike, Timing, latest

_BOOL_MISUSE = (
    "A selector has no truth value: {sel!r} was used where Python needs True/False "
    "(`and`, `or`, `not`, `if`). Combine selectors with the operators `&`, `|`, `~`, "
    "e.g. `tl.func('conv2d') & tl.in_module('features')`, and test an op with `sel(op)`."
)


class Selector:
    """A composable, immutable predicate over ops.

    Subclasses are frozen dataclasses (hashable, picklable) that implement
    :meth:`matches`, declare their :attr:`timing`, and print as the lens code that
    builds them.
    """

    __slots__ = ()
    _prec: ClassVar[int] = 3  # binding strength in repr: 1 for |, 2 for &, 3 otherwise

    def matches(self, op: OpLike) -> bool:
        """Whether ``op`` is selected."""
        raise NotImplementedError(f"{type(self).__name__} does not implement matches()")

    def __call__(self, op: OpLike) -> bool:
        return self.matches(op)

    # -- structure ------------------------------------------------------------------

    @property
    def operands(self) -> tuple[Selector, ...]:
        """The selectors this one is built from (empty for a leaf)."""
        return ()

    def walk(self) -> Iterator[Selector]:
        """This selector and every selector inside it, depth first, parents first."""
        yield self
        for part in self.operands:
            yield from part.walk()

    def _with_operands(self, operands: tuple[Selector, ...]) -> Selector:
        """A copy of this node with its operands replaced (leaves return themselves)."""
        return self

    # -- when the answer is known ----------------------------------------------------

    @property
    def timing(self) -> Timing:
        """When the answer is decidable: the latest timing of the parts."""
        return latest(*(part.timing for part in self.operands))

    @property
    def lookahead_depth(self) -> int:
        """How many generations of children must have run before the answer is known.

        0 when no children are needed; ``followed_by(s)`` is one more than ``s``. Through
        ``preceded_by`` the generations are counted below the op's parents.
        """
        return max((part.lookahead_depth for part in self.operands), default=0)

    @property
    def needs_children(self) -> bool:
        """Whether the answer depends on ops that consume this op's tensor."""
        return self.lookahead_depth > 0

    # -- checking against a model or trace -------------------------------------------

    def validate(
        self,
        *,
        module_addresses: Collection[str] | None = None,
        labels: Collection[str] | None = None,
    ) -> None:
        """Raise :class:`SelectorError` if the selector names something that does not exist.

        Module addresses in ``module()``/``in_module()`` are checked against
        ``module_addresses`` and labels in ``label()``/``label_contains()`` against
        ``labels``; a check is skipped when its collection is not given.
        """
        addresses = None if module_addresses is None else frozenset(module_addresses)
        known_labels = None if labels is None else frozenset(labels)
        for node in self.walk():
            node._check(addresses, known_labels)

    def _check(
        self, module_addresses: frozenset[str] | None, labels: frozenset[str] | None
    ) -> None:
        """Raise :class:`SelectorError` if this node (not its operands) names unknowns."""

    def bind_ordinals(self, ops: Sequence[OpLike]) -> Selector:
        """This selector with every ``ordinal(i)`` replaced by ``index(...)`` of ``ops[i]``.

        ``ops`` are the finished trace's ops in order; ordinals count positions in it
        Python-style (``-1`` is the last op).
        """
        new = tuple(part.bind_ordinals(ops) for part in self.operands)
        if all(a is b for a, b in zip(new, self.operands, strict=True)):
            return self
        return self._with_operands(new)

    # -- algebra -----------------------------------------------------------------------

    def __and__(self, other: object) -> Selector:
        return all_of(self, _operand(other, self, "&"))

    def __rand__(self, other: object) -> Selector:
        return all_of(_operand(other, self, "&"), self)

    def __or__(self, other: object) -> Selector:
        return any_of(self, _operand(other, self, "|"))

    def __ror__(self, other: object) -> Selector:
        return any_of(_operand(other, self, "|"), self)

    def __invert__(self) -> Selector:
        return Not(self)

    def __bool__(self) -> bool:
        raise SelectorError(_BOOL_MISUSE.format(sel=self))


def _operand(other: object, sel: Selector, op: str) -> Selector:
    if isinstance(other, Selector):
        return other
    raise SelectorError(
        f"Cannot combine {sel!r} with {other!r} ({type(other).__name__}) using `{op}`: "
        "both sides must be selectors. Build one first, e.g. tl.func('relu'), "
        "tl.label('conv2d_3_7'), tl.module('fc'), or tl.coerce(value)."
    )


def _wrap(part: Selector, tighter_than: int) -> str:
    return f"({part!r})" if part._prec < tighter_than else repr(part)


@dataclass(frozen=True, slots=True, repr=False)
class Everything(Selector):
    """Matches every op (the identity of ``&``)."""

    def matches(self, op: OpLike) -> bool:
        return True

    def __invert__(self) -> Selector:
        return NONE

    def __reduce__(self) -> str:
        return "ALL"  # unpickles as the module's singleton

    def __repr__(self) -> str:
        return "tl.everything()"


@dataclass(frozen=True, slots=True, repr=False)
class Nothing(Selector):
    """Matches no op (the identity of ``|``)."""

    def matches(self, op: OpLike) -> bool:
        return False

    def __invert__(self) -> Selector:
        return ALL

    def __reduce__(self) -> str:
        return "NONE"  # unpickles as the module's singleton

    def __repr__(self) -> str:
        return "tl.nothing()"


ALL: Everything = Everything()
NONE: Nothing = Nothing()


def everything() -> Everything:
    """The selector that matches every op."""
    return ALL


def nothing() -> Nothing:
    """The selector that matches no op."""
    return NONE


def _check_parts(kind: str, parts: object, builder: str) -> None:
    if (
        not isinstance(parts, tuple)
        or len(parts) < 2
        or not all(isinstance(p, Selector) for p in parts)
    ):
        raise SelectorError(
            f"{kind}(...) needs a tuple of at least two selectors, got {parts!r}. "
            f"Combine selectors with {builder} instead of building {kind} directly."
        )


@dataclass(frozen=True, slots=True, repr=False)
class And(Selector):
    """Matches when every part matches (``a & b & c``)."""

    parts: tuple[Selector, ...]
    _prec: ClassVar[int] = 2

    def __post_init__(self) -> None:
        _check_parts("And", self.parts, "`&` or tl.all_of(...)")

    @property
    def operands(self) -> tuple[Selector, ...]:
        return self.parts

    def _with_operands(self, operands: tuple[Selector, ...]) -> Selector:
        return all_of(*operands)

    def matches(self, op: OpLike) -> bool:
        return all(part.matches(op) for part in self.parts)

    def __repr__(self) -> str:
        return " & ".join(_wrap(part, 3) for part in self.parts)


@dataclass(frozen=True, slots=True, repr=False)
class Or(Selector):
    """Matches when any part matches (``a | b | c``)."""

    parts: tuple[Selector, ...]
    _prec: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _check_parts("Or", self.parts, "`|` or tl.any_of(...)")

    @property
    def operands(self) -> tuple[Selector, ...]:
        return self.parts

    def _with_operands(self, operands: tuple[Selector, ...]) -> Selector:
        return any_of(*operands)

    def matches(self, op: OpLike) -> bool:
        return any(part.matches(op) for part in self.parts)

    def __repr__(self) -> str:
        # An And inside an Or is parenthesized although `&` binds tighter: easier to read.
        return " | ".join(_wrap(part, 3) for part in self.parts)


@dataclass(frozen=True, slots=True, repr=False)
class Not(Selector):
    """Matches when the operand does not (``~a``)."""

    operand: Selector

    def __post_init__(self) -> None:
        if not isinstance(self.operand, Selector):
            raise SelectorError(
                f"Not(...) needs a selector, got {self.operand!r} "
                f"({type(self.operand).__name__}); write ~selector instead."
            )

    @property
    def operands(self) -> tuple[Selector, ...]:
        return (self.operand,)

    def _with_operands(self, operands: tuple[Selector, ...]) -> Selector:
        return ~operands[0]

    def matches(self, op: OpLike) -> bool:
        return not self.operand.matches(op)

    def __invert__(self) -> Selector:
        return self.operand

    def __repr__(self) -> str:
        return f"~{_wrap(self.operand, 3)}"


def _require(sel: object, builder: str) -> Selector:
    if isinstance(sel, Selector):
        return sel
    raise SelectorError(
        f"{builder}(...) takes selectors, got {sel!r} ({type(sel).__name__}). "
        "Build one first, e.g. tl.func('relu') or tl.coerce(value)."
    )


def all_of(*selectors: Selector) -> Selector:
    """The selector matching ops that every one of ``selectors`` matches (``everything()``
    when none are given). Same as joining them with ``&``."""
    flat: dict[Selector, None] = {}
    for sel in selectors:
        sel = _require(sel, "tl.all_of")
        if isinstance(sel, Nothing):
            return NONE
        if not isinstance(sel, Everything):
            flat.update(dict.fromkeys(sel.parts if isinstance(sel, And) else (sel,)))
    parts = tuple(flat)
    if not parts:
        return ALL
    return parts[0] if len(parts) == 1 else And(parts)


def any_of(*selectors: Selector) -> Selector:
    """The selector matching ops that any one of ``selectors`` matches (``nothing()``
    when none are given). Same as joining them with ``|``."""
    flat: dict[Selector, None] = {}
    for sel in selectors:
        sel = _require(sel, "tl.any_of")
        if isinstance(sel, Everything):
            return ALL
        if not isinstance(sel, Nothing):
            flat.update(dict.fromkeys(sel.parts if isinstance(sel, Or) else (sel,)))
    parts = tuple(flat)
    if not parts:
        return NONE
    return parts[0] if len(parts) == 1 else Or(parts)
