"""When a selector's answer becomes decidable, and how combinations inherit it."""

from __future__ import annotations

import pytest

import lens.selectors as tl


def big(op: tl.OpLike) -> bool:
    return True


@pytest.mark.parametrize(
    ("sel", "timing"),
    [
        (tl.func("relu"), "live"),
        (tl.in_module("features"), "live"),
        (tl.index(3), "live"),
        (tl.where(big), "live"),
        (tl.preceded_by(tl.func("relu")), "live"),
        (tl.everything(), "live"),
        (tl.nothing(), "live"),
        (tl.module("fc"), "module_exit"),
        (tl.followed_by(tl.func("relu")), "lookahead"),
        (tl.label("conv2d_1_1"), "final"),
        (tl.label_contains("conv"), "final"),
        (tl.ordinal(-1), "final"),
        (tl.where(big, timing="module_exit"), "module_exit"),
    ],
)
def test_leaf_timings(sel: tl.Selector, timing: tl.Timing) -> None:
    assert sel.timing == timing


@pytest.mark.parametrize(
    ("sel", "timing"),
    [
        (tl.func("relu") & tl.module("fc"), "module_exit"),
        (tl.func("relu") | tl.followed_by(tl.func("add")), "lookahead"),
        (tl.module("fc") & tl.followed_by(tl.func("add")) | tl.label("x_1"), "final"),
        (~tl.module("fc"), "module_exit"),
        (tl.preceded_by(tl.module("fc")), "module_exit"),
        (tl.preceded_by(tl.label("relu_1")), "final"),
        (tl.followed_by(tl.label("relu_1")), "final"),
        (tl.followed_by(tl.func("add")) & tl.nothing(), "live"),  # simplified away
    ],
)
def test_combinations_take_the_latest_timing(sel: tl.Selector, timing: tl.Timing) -> None:
    assert sel.timing == timing


def test_latest_orders_timings() -> None:
    assert tl.TIMINGS == ("live", "module_exit", "lookahead", "final")
    assert tl.latest() == "live"
    assert tl.latest("final", "live", "module_exit") == "final"


@pytest.mark.parametrize(
    ("sel", "depth"),
    [
        (tl.func("relu"), 0),
        (tl.module("fc"), 0),
        (tl.followed_by(tl.func("relu")), 1),
        (tl.followed_by(tl.followed_by(tl.func("relu"))), 2),
        (tl.func("a") & ~tl.followed_by(tl.followed_by(tl.func("b"))), 2),
        (tl.preceded_by(tl.followed_by(tl.func("relu"))), 1),
        (tl.preceded_by(tl.func("relu")), 0),
        (tl.where(big, timing="lookahead"), 1),
    ],
)
def test_lookahead_depth_counts_generations_of_children(sel: tl.Selector, depth: int) -> None:
    assert sel.lookahead_depth == depth
    assert sel.needs_children == (depth > 0)
