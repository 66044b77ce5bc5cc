"""Combining selectors: operators, simplification, repr, equality, hashing, pickling."""

from __future__ import annotations

import pickle

import pytest

import lens.selectors as tl
from lens.errors import SelectorError
from tests.selectors._fakes import small_cnn

conv, relu, fc = tl.func("conv2d"), tl.func("relu"), tl.func("linear")


def is_late(op: tl.OpLike) -> bool:
    return op.index >= 6


EXAMPLES = [
    tl.func("conv2d"),
    tl.func("conv2d", "linear"),
    tl.module("features.6"),
    tl.module("fc:2"),
    tl.in_module("transformer.h.0.attn"),
    tl.label("conv2d_3_7", "conv2d_3_7:1"),
    tl.label_contains("linear"),
    tl.index(0, 4),
    tl.ordinal(-5),
    tl.everything(),
    tl.nothing(),
    tl.followed_by(tl.func("relu")),
    tl.preceded_by(tl.module("fc") | tl.func("add")),
    tl.func("conv2d") & tl.followed_by(tl.func("relu")),
    ~(tl.func("a") & tl.func("b")) | tl.index(3),
    ~tl.func("relu"),
    tl.where(is_late, timing="final"),
]


def test_operators_build_and_or_not_nodes() -> None:
    assert conv & relu == tl.And((conv, relu))
    assert conv | relu == tl.Or((conv, relu))
    assert ~conv == tl.Not(conv)


def test_nested_and_or_are_flattened() -> None:
    assert (conv & relu) & fc == conv & (relu & fc) == tl.And((conv, relu, fc))
    assert (conv | relu) | (fc | conv) == tl.Or((conv, relu, fc))
    assert tl.all_of(conv, relu, fc) == conv & relu & fc
    assert tl.any_of() is tl.NONE and tl.all_of() is tl.ALL


def test_simplification_of_constants_repeats_and_double_negation() -> None:
    assert conv & conv == conv
    assert ~~conv == conv
    assert conv & tl.ALL == conv and conv | tl.NONE == conv
    assert conv & tl.NONE is tl.NONE and conv | tl.ALL is tl.ALL
    assert ~tl.ALL is tl.NONE and ~tl.NONE is tl.ALL


def test_mixed_trees_keep_their_shape() -> None:
    sel = (conv | relu) & ~fc
    assert sel == tl.And((tl.Or((conv, relu)), tl.Not(fc)))
    assert sel(small_cnn()["relu"])


@pytest.mark.parametrize(
    ("sel", "text"),
    [
        (conv & tl.followed_by(relu), "tl.func('conv2d') & tl.followed_by(tl.func('relu'))"),
        (conv & relu | fc, "(tl.func('conv2d') & tl.func('relu')) | tl.func('linear')"),
        ((conv | relu) & fc, "(tl.func('conv2d') | tl.func('relu')) & tl.func('linear')"),
        (~(conv | relu), "~(tl.func('conv2d') | tl.func('relu'))"),
        (~conv & relu, "~tl.func('conv2d') & tl.func('relu')"),
        (tl.func("max_pool2d", "__add__"), "tl.func('maxpool2d', 'add')"),
        (tl.module("fc:2") | tl.index(3), "tl.module('fc:2') | tl.index(3)"),
        (tl.where(is_late), "tl.where(is_late)"),
        (tl.where(is_late, "lookahead"), "tl.where(is_late, timing='lookahead')"),
    ],
)
def test_repr_reads_as_lens_code(sel: tl.Selector, text: str) -> None:
    assert repr(sel) == text


@pytest.mark.parametrize("sel", EXAMPLES, ids=repr)
def test_repr_evaluates_back_to_an_equal_selector(sel: tl.Selector) -> None:
    assert eval(repr(sel), {"tl": tl, "is_late": is_late}) == sel


@pytest.mark.parametrize("sel", EXAMPLES, ids=repr)
def test_pickle_round_trip_gives_an_equal_selector(sel: tl.Selector) -> None:
    back = pickle.loads(pickle.dumps(sel))
    assert back == sel and hash(back) == hash(sel)


def test_constants_unpickle_as_the_singletons() -> None:
    assert pickle.loads(pickle.dumps(tl.everything())) is tl.ALL
    assert pickle.loads(pickle.dumps([tl.nothing()]))[0] is tl.NONE


def test_selectors_are_immutable_and_hashable() -> None:
    with pytest.raises(AttributeError):
        conv.types = ("relu",)  # type: ignore[misc]
    assert len({tl.func("relu"), tl.func("relu"), tl.func("relu_")}) == 1
    assert {conv & relu: 1}[tl.func("conv2d") & tl.func("relu")] == 1


def test_call_and_matches_agree() -> None:
    for op in small_cnn().values():
        for sel in EXAMPLES:
            if sel.timing != "final" or isinstance(sel, tl.Where):
                assert sel(op) == sel.matches(op)


@pytest.mark.parametrize(
    "misuse", [lambda: conv and relu, lambda: not conv, lambda: bool(conv | relu)]
)
def test_python_boolean_operators_raise_instead_of_silently_picking_one(misuse: object) -> None:
    with pytest.raises(SelectorError, match="operators `&`, `|`, `~`"):
        misuse()  # type: ignore[operator]


@pytest.mark.parametrize("other", ["relu", True, 3, None])
def test_combining_with_a_non_selector_raises(other: object) -> None:
    with pytest.raises(SelectorError, match="both sides must be selectors"):
        conv & other
    with pytest.raises(SelectorError, match="both sides must be selectors"):
        other | conv


def test_building_and_or_directly_needs_two_selectors() -> None:
    with pytest.raises(SelectorError, match="`&`"):
        tl.And((conv,))
    with pytest.raises(SelectorError):
        tl.Or((conv, "relu"))  # type: ignore[arg-type]
    with pytest.raises(SelectorError):
        tl.any_of(conv, "relu")  # type: ignore[arg-type]


def test_walk_visits_every_node_parents_first() -> None:
    sel = conv & ~tl.followed_by(relu)
    assert list(sel.walk()) == [sel, conv, ~tl.followed_by(relu), tl.followed_by(relu), relu]
