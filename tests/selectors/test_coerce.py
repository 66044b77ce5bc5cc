"""coerce() turns what users pass (layers_to_save=...) into one selector."""

from __future__ import annotations

import pytest

import lens.selectors as tl
from lens.errors import SelectorError
from tests.selectors._fakes import MODULE_ADDRESSES, small_cnn


def co(spec: object) -> tl.Selector:
    return tl.coerce(spec, module_addresses=MODULE_ADDRESSES)


def test_selectors_pass_through_unchanged() -> None:
    sel = tl.func("relu") & tl.in_module("features")
    assert co(sel) is sel


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (True, tl.ALL),
        ("all", tl.ALL),
        (False, tl.NONE),
        (None, tl.NONE),
        ("none", tl.NONE),
        ([], tl.NONE),
        ((), tl.NONE),
    ],
)
def test_constants(spec: object, expected: tl.Selector) -> None:
    assert co(spec) is expected


@pytest.mark.parametrize(
    "spec", ["conv2d_3_7", "conv2d_3", "conv2d_3_7:2", "input_1", "scaleddotproductattention_1_4"]
)
def test_label_like_strings_become_labels(spec: str) -> None:
    assert co(spec) == tl.label(spec)
    assert tl.coerce(spec) == tl.label(spec)  # no module addresses needed


@pytest.mark.parametrize("spec", ["features", "features.2", "features:1", "classifier.0:2"])
def test_module_addresses_become_module_outputs(spec: str) -> None:
    assert co(spec) == tl.module(spec)


def test_a_module_address_that_looks_like_a_label_is_a_module() -> None:
    assert tl.coerce("block_1", module_addresses=["block_1"]) == tl.module("block_1")


@pytest.mark.parametrize("spec", [0, 3, -5])
def test_ints_become_ordinals(spec: int) -> None:
    assert co(spec) == tl.ordinal(spec)
    assert co(spec).timing == "final"


def test_other_strings_become_label_substrings() -> None:
    assert co("linear") == tl.label_contains("linear")
    assert co("linear").timing == "final"


def test_strings_are_ambiguous_without_module_addresses() -> None:
    with pytest.raises(SelectorError, match=r"tl\.module\('features'\) or tl\.label_contains"):
        tl.coerce("features")


def test_lists_become_the_or_of_their_items() -> None:
    sel = co(["conv2d_3_7", "features", -5, "linear"])
    assert sel == (
        tl.label("conv2d_3_7")
        | tl.module("features")
        | tl.ordinal(-5)
        | tl.label_contains("linear")
    )
    assert co(("relu_1", ["features.0", tl.func("add")])) == (
        tl.label("relu_1") | tl.module("features.0") | tl.func("add")
    )
    assert co(["relu_1", True]) is tl.ALL


def test_coerced_seed_example_selects_the_expected_ops() -> None:
    ops = small_cnn()
    sel = co(["conv2d_1_1", "features", "linear", -1]).bind_ordinals(list(ops.values()))
    assert [name for name, op in ops.items() if sel(op)] == ["conv", "pool", "fc", "output"]


@pytest.mark.parametrize("spec", [1.5, {"a": 1}, {"features"}, b"conv", object()])
def test_other_types_raise_naming_the_type_and_what_is_accepted(spec: object) -> None:
    with pytest.raises(SelectorError, match=type(spec).__name__) as info:
        co(spec)
    assert "a module address" in str(info.value)


def test_callables_get_a_hint_to_use_where() -> None:
    with pytest.raises(SelectorError, match=r"tl\.where\(fn\)"):
        co(lambda op: True)


@pytest.mark.parametrize("spec", ["", "   "])
def test_empty_strings_raise(spec: str) -> None:
    with pytest.raises(SelectorError, match="empty string"):
        co(spec)
