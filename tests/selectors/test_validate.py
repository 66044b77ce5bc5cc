"""validate() rejects names the model does not have, and suggests the right ones."""

from __future__ import annotations

import pytest

import lens.selectors as tl
from lens.errors import SelectorError
from tests.selectors._fakes import MODULE_ADDRESSES, all_labels, small_cnn

LABELS = all_labels(small_cnn())


def test_known_names_pass() -> None:
    sel = (tl.module("features.0") | tl.in_module("classifier")) & ~tl.label("conv2d_1_1")
    sel.validate(module_addresses=MODULE_ADDRESSES, labels=LABELS)
    tl.module("features:3").validate(module_addresses=MODULE_ADDRESSES)  # call not checked
    tl.label_contains("linear").validate(labels=LABELS)


def test_nothing_is_checked_without_collections() -> None:
    (tl.module("nope") & tl.label("nope_1")).validate()
    tl.label("nope_1").validate(module_addresses=MODULE_ADDRESSES)
    tl.module("nope").validate(labels=LABELS)


@pytest.mark.parametrize(
    ("sel", "suggestion"),
    [
        (tl.module("featurs"), "'features'"),
        (tl.module("features.3:2"), "'features.2'"),
        (tl.in_module("clasifier"), "'classifier'"),
        (tl.func("relu") & tl.followed_by(~tl.in_module("feature.1")), "'features.1'"),
    ],
)
def test_unknown_module_addresses_raise_with_close_matches(
    sel: tl.Selector, suggestion: str
) -> None:
    with pytest.raises(SelectorError, match="names no module") as info:
        sel.validate(module_addresses=MODULE_ADDRESSES)
    assert f"Did you mean {suggestion}" in str(info.value)
    assert "named_modules()" in str(info.value)


def test_unknown_label_raises_with_close_matches() -> None:
    with pytest.raises(SelectorError, match="no op has the label 'conv2d_1_2'") as info:
        (tl.label("relu_1_2", "conv2d_1_2") | tl.func("add")).validate(labels=LABELS)
    assert "'conv2d_1_1'" in str(info.value)


def test_label_substring_that_matches_nothing_raises() -> None:
    with pytest.raises(SelectorError, match="no label contains 'lienar'") as info:
        tl.label_contains("lienar").validate(labels=LABELS)
    assert "'linear_1_5'" in str(info.value)


def test_without_close_matches_the_message_lists_some_that_exist() -> None:
    with pytest.raises(SelectorError, match="Some that exist: 'classifier'"):
        tl.module("zzzzzzzz").validate(module_addresses=MODULE_ADDRESSES)


def test_selector_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        tl.module("x").validate(module_addresses=[])
