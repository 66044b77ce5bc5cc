"""Selectors on an op's neighbours in the graph: :func:`followed_by` (some child matches)
and :func:`preceded_by` (some parent matches)."""

from __future__ import annotations

from dataclasses import dataclass

from lens.errors import SelectorError
from lens.selectors._base import Selector
from lens.selectors._protocol import OpLike, Timing, latest


def _require_inner(kind: str, sel: object) -> None:
    if not isinstance(sel, Selector):
        raise SelectorError(
            f"tl.{kind}() needs a selector for the neighbour, got {sel!r} "
            f"({type(sel).__name__}); e.g. tl.{kind}(tl.func('relu'))."
        )


@dataclass(frozen=True, slots=True, repr=False)
class FollowedBy(Selector):
    """Matches ops with at least one child (consumer of its tensor) matching ``selector``."""

    selector: Selector

    def __post_init__(self) -> None:
        _require_inner("followed_by", self.selector)

    @property
    def operands(self) -> tuple[Selector, ...]:
        return (self.selector,)

    def _with_operands(self, operands: tuple[Selector, ...]) -> Selector:
        return FollowedBy(operands[0])

    def matches(self, op: OpLike) -> bool:
        return any(self.selector.matches(child) for child in op.children)

    @property
    def timing(self) -> Timing:
        return latest("lookahead", self.selector.timing)

    @property
    def lookahead_depth(self) -> int:
        return 1 + self.selector.lookahead_depth

    def __repr__(self) -> str:
        return f"tl.followed_by({self.selector!r})"


def followed_by(selector: Selector) -> FollowedBy:
    """Ops whose tensor is consumed by an op matching ``selector``:
    ``tl.func('linear') & tl.followed_by(tl.func('relu'))``. Decidable once the
    consumers have run."""
    return FollowedBy(selector)


@dataclass(frozen=True, slots=True, repr=False)
class PrecededBy(Selector):
    """Matches ops with at least one parent (an op whose tensor it consumed) matching
    ``selector``."""

    selector: Selector

    def __post_init__(self) -> None:
        _require_inner("preceded_by", self.selector)

    @property
    def operands(self) -> tuple[Selector, ...]:
        return (self.selector,)

    def _with_operands(self, operands: tuple[Selector, ...]) -> Selector:
        return PrecededBy(operands[0])

    def matches(self, op: OpLike) -> bool:
        return any(self.selector.matches(parent) for parent in op.parents)

    @property
    def timing(self) -> Timing:
        # Parents are known when the op runs, so this is as early as the inner selector.
        return self.selector.timing

    def __repr__(self) -> str:
        return f"tl.preceded_by({self.selector!r})"


def preceded_by(selector: Selector) -> PrecededBy:
    """Ops that consumed the tensor of an op matching ``selector``:
    ``tl.func('maxpool2d') & tl.preceded_by(tl.func('relu'))``."""
    return PrecededBy(selector)
