"""True division is recorded as 'truediv' (the seed legend's name for ``x / y``); 'div'
stays a lookup alias and names division with a rounding mode."""

from __future__ import annotations

import pickle

import pytest
import torch

import lens as tl
from tests.models.seeds import DemoNetwork


def _divisions(x, y):
    a = x / y
    b = torch.true_divide(x, y)
    c = x.div(y)
    d = torch.div(x, y, rounding_mode="floor")
    return a + b + c + d


def test_every_true_division_is_truediv_and_rounding_division_is_div():
    x, y = torch.rand(3) + 1, torch.rand(3) + 1
    tr = tl.trace(_divisions, x, y)
    types = [op.type for op in tr.ops if op.func_name in ("div", "true_divide")]
    assert types == ["truediv", "truediv", "truediv", "div"]
    floor = next(op for op in tr.ops if op.type == "div")
    assert torch.equal(floor.out, torch.div(x, y, rounding_mode="floor"))


def test_seed_demo_labels_the_division_truediv_1_8_and_div_1_8_still_finds_it():
    torch.manual_seed(0)
    tr = tl.trace(DemoNetwork(), torch.rand(2, 5))
    op = tr["truediv_1_8"]
    assert op.func_name == "div"
    assert tr["div_1_8"] == op and tr["div_1"] == op
    assert "div_1_8" in op.labels


def test_func_div_selects_true_division_and_func_truediv_only_true_division():
    x, y = torch.rand(3) + 1, torch.rand(3) + 1
    by_div = tl.trace(_divisions, x, y, save=tl.func("div"))
    saved = [op.type for op in by_div.ops if op.kind == "op" and op.has_payload]
    assert saved == ["truediv", "truediv", "truediv", "div"]
    by_true = tl.trace(_divisions, x, y, save=tl.func("truediv"))
    saved = [op.type for op in by_true.ops if op.kind == "op" and op.has_payload]
    assert saved == ["truediv"] * 3
    assert tl.func("true_divide")(by_true.ops[2]) and not tl.func("truediv")(by_true["div_1"])
    assert pickle.loads(pickle.dumps(tl.func("div"))) == tl.func("div")


def test_div_label_is_not_an_alias_when_a_real_div_op_owns_it():
    tr = tl.trace(_divisions, torch.rand(3) + 1, torch.rand(3) + 1)
    assert tr["div_1"].type == "div"
    with pytest.raises(tl.LookupKeyError, match="truediv"):
        tr["div_1_99"]
