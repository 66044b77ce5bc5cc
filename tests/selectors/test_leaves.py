"""Each leaf selector matches the ops it should, and rejects bad arguments when built."""

from __future__ import annotations

import pytest

import lens.selectors as tl
from lens.errors import SelectorError
from tests.selectors._fakes import FakeOp, small_cnn


@pytest.fixture
def ops() -> dict[str, FakeOp]:
    return small_cnn()


def selected(sel: tl.Selector, ops: dict[str, FakeOp]) -> list[str]:
    return [name for name, op in ops.items() if sel(op)]


def test_fake_op_satisfies_the_protocol(ops: dict[str, FakeOp]) -> None:
    assert all(isinstance(op, tl.OpLike) for op in ops.values())


def test_func_matches_by_normalized_type(ops: dict[str, FakeOp]) -> None:
    assert selected(tl.func("conv2d"), ops) == ["conv"]
    assert selected(tl.func("max_pool2d"), ops) == ["pool"]
    assert selected(tl.func("MaxPool2d"), ops) == ["pool"]
    assert selected(tl.func("__add__"), ops) == ["add"]
    assert selected(tl.func("relu", "linear"), ops) == ["relu", "fc"]
    assert selected(tl.func("input", "output"), ops) == ["input", "output"]


def test_func_names_normalize_to_equal_selectors() -> None:
    assert tl.func("max_pool2d") == tl.func("maxpool2d") == tl.Func(("max_pool2d",))
    assert tl.func("__add__") == tl.func("add")
    assert tl.func("__iadd__") == tl.func("add")  # in-place dunders record their operator
    assert tl.func("__radd__") == tl.func("add")
    assert tl.func("relu", "relu_", "ReLU").types == ("relu",)
    assert tl.normalize_op_type("scaled_dot_product_attention") == "scaleddotproductattention"


@pytest.mark.parametrize("args", [(), ("",), ("__",), (3,), ("relu", None)])
def test_func_rejects_missing_or_non_string_names(args: tuple[object, ...]) -> None:
    with pytest.raises(SelectorError, match="tl.func"):
        tl.func(*args)  # type: ignore[arg-type]


def test_module_matches_the_module_output(ops: dict[str, FakeOp]) -> None:
    assert selected(tl.module("features"), ops) == ["pool"]
    assert selected(tl.module("features.0"), ops) == ["conv"]
    assert selected(tl.module("features:1"), ops) == ["pool"]
    assert selected(tl.module("features:2"), ops) == []


def test_module_selects_one_call_with_a_call_suffix() -> None:
    first = FakeOp("linear", index=1, module_outputs=("fc", "fc:1"))
    second = FakeOp("linear", index=2, module_outputs=("fc", "fc:2"))
    assert [tl.module("fc")(op) for op in (first, second)] == [True, True]
    assert [tl.module("fc:2")(op) for op in (first, second)] == [False, True]


@pytest.mark.parametrize("address", ["", "fc:0", "fc:x", "a b", "fc:1:2", 7])
def test_module_rejects_malformed_addresses(address: object) -> None:
    with pytest.raises(SelectorError):
        tl.module(address)  # type: ignore[arg-type]


def test_in_module_matches_the_whole_subtree(ops: dict[str, FakeOp]) -> None:
    assert selected(tl.in_module("features"), ops) == ["conv", "relu", "pool"]
    assert selected(tl.in_module("features.1"), ops) == ["relu"]
    assert selected(tl.in_module("classifier"), ops) == ["fc"]


def test_in_module_includes_outputs_computed_outside_the_module() -> None:
    passthrough = FakeOp("identity", module_outputs=("skip", "skip:1"))
    assert tl.in_module("skip")(passthrough)


def test_in_module_rejects_a_call_suffix_and_points_to_module() -> None:
    with pytest.raises(SelectorError, match=r"tl\.module\('fc:2'\)"):
        tl.in_module("fc:2")


def test_label_matches_any_lookup_key(ops: dict[str, FakeOp]) -> None:
    assert selected(tl.label("conv2d_1_1"), ops) == ["conv"]
    assert selected(tl.label("conv2d_1"), ops) == ["conv"]
    assert selected(tl.label("relu_1_2:1", "features.2"), ops) == ["relu", "pool"]
    assert selected(tl.label("conv2d_9"), ops) == []


@pytest.mark.parametrize("args", [(), ("",), (1,)])
def test_label_rejects_missing_or_empty_labels(args: tuple[object, ...]) -> None:
    with pytest.raises(SelectorError):
        tl.label(*args)  # type: ignore[arg-type]


def test_label_contains_matches_substrings_of_keys(ops: dict[str, FakeOp]) -> None:
    assert selected(tl.label_contains("linear"), ops) == ["fc"]
    assert selected(tl.label_contains("features"), ops) == ["conv", "relu", "pool"]


def test_followed_by_looks_at_children(ops: dict[str, FakeOp]) -> None:
    assert selected(tl.followed_by(tl.func("relu")), ops) == ["conv"]
    assert selected(tl.followed_by(tl.func("add")), ops) == ["flat", "fc"]
    assert selected(tl.func("conv2d") & tl.followed_by(tl.func("relu")), ops) == ["conv"]


def test_preceded_by_looks_at_parents(ops: dict[str, FakeOp]) -> None:
    assert selected(tl.preceded_by(tl.func("relu")), ops) == ["pool"]
    assert selected(tl.preceded_by(tl.func("flatten")), ops) == ["fc", "add"]
    assert selected(tl.preceded_by(tl.followed_by(tl.func("relu"))), ops) == ["relu"]


@pytest.mark.parametrize("maker", [tl.followed_by, tl.preceded_by])
def test_graph_selectors_need_a_selector(maker: object) -> None:
    with pytest.raises(SelectorError, match="tl.func"):
        maker("relu")  # type: ignore[operator]


def is_late(op: tl.OpLike) -> bool:
    return op.index >= 6


def test_where_calls_the_predicate(ops: dict[str, FakeOp]) -> None:
    assert selected(tl.where(is_late), ops) == ["add", "output"]
    assert selected(tl.where(lambda op: op.func_name.startswith("__")), ops) == ["add"]


def test_where_rejects_non_callables_and_unknown_timings() -> None:
    with pytest.raises(SelectorError, match="callable"):
        tl.where(3)  # type: ignore[arg-type]
    with pytest.raises(SelectorError, match="'live', 'module_exit'"):
        tl.where(is_late, timing="soon")  # type: ignore[arg-type]


def test_index_matches_call_order(ops: dict[str, FakeOp]) -> None:
    assert selected(tl.index(0, 3), ops) == ["input", "pool"]
    assert tl.index(3, 0, 3).indices == (3, 0)


def test_index_rejects_negatives_and_points_to_ordinal() -> None:
    with pytest.raises(SelectorError, match=r"tl\.ordinal\(-5\)"):
        tl.index(-5)
    for bad in [(), (True,), (1.0,)]:
        with pytest.raises(SelectorError):
            tl.index(*bad)  # type: ignore[arg-type]


def test_ordinal_binds_to_positions_in_the_finished_trace(ops: dict[str, FakeOp]) -> None:
    finished = [op for name, op in ops.items() if name != "flat"]  # one op pruned
    assert tl.ordinal(-1).bind_ordinals(finished) == tl.index(7)
    assert tl.ordinal(4, -3).bind_ordinals(finished) == tl.index(5)
    sel = tl.func("relu") | ~tl.ordinal(0)
    assert sel.bind_ordinals(finished) == tl.func("relu") | ~tl.index(0)
    assert tl.func("relu").bind_ordinals(finished) == tl.func("relu")


def test_ordinal_refuses_to_match_unbound_or_out_of_range(ops: dict[str, FakeOp]) -> None:
    with pytest.raises(SelectorError, match="bind_ordinals"):
        tl.ordinal(-1)(ops["conv"])
    with pytest.raises(SelectorError, match="has 8 ops"):
        tl.ordinal(-9).bind_ordinals(list(ops.values()))


def test_everything_and_nothing(ops: dict[str, FakeOp]) -> None:
    assert selected(tl.everything(), ops) == list(ops)
    assert selected(tl.nothing(), ops) == []
    assert tl.everything() is tl.ALL and tl.nothing() is tl.NONE


def test_step_selects_one_call_of_the_top_module_and_steps_a_closed_range() -> None:
    ops = [FakeOp("add", index=i, step=s) for i, s in enumerate([0, 1, 1, 0, 2, 3, 0, 4])]
    assert [op.index for op in ops if tl.step(1)(op)] == [1, 2]
    assert [op.index for op in ops if tl.steps(2, 3)(op)] == [4, 5]
    assert [op.index for op in ops if tl.steps(3)(op)] == [5, 7]
    assert [op.index for op in ops if (tl.step(2) | tl.step(4))(op)] == [4, 7]
    assert tl.step(2).timing == "live"
    assert repr(tl.steps(2, 2)) == "tl.step(2)" and repr(tl.steps(2)) == "tl.steps(2)"


@pytest.mark.parametrize("build", [lambda: tl.step(0), lambda: tl.steps(3, 2),
                                   lambda: tl.step(True), lambda: tl.steps(1, 0),
                                   lambda: tl.step("2")])  # type: ignore[arg-type]
def test_step_rejects_what_is_not_a_1_based_call_number(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SelectorError, match="tl.step"):
        build()
