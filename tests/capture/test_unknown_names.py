"""Nothing silent: a selector naming a function, label or module that cannot exist in this
model is an error with close matches, in tl.trace, tl.record, tl.run and tl.pluck alike.

Function names are checked (when the selector meets a model) against the op types torch
can produce; labels against the finished trace (or before the run when no op of any run
could carry them); module addresses against the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import lens as tl
from lens.capture.known import op_types
from tests.helpers import build, regular_cases


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 2)), torch.randn(3, 4)


_CASES = regular_cases()


@pytest.mark.parametrize("case", _CASES, ids=[c.name for c in _CASES])
def test_every_op_type_the_engine_records_is_a_known_op_type(case):
    """Ground truth from the engine itself: no real op type may be refused by tl.func."""
    model, args, kwargs = build(case)
    trace = tl.trace(model, *args, input_kwargs=kwargs, save=False)
    assert {op.type for op in trace.ops} <= op_types()


def _entries(model: nn.Module, x: torch.Tensor) -> dict[str, Callable[[Any], Any]]:
    """Every way a selector reaches a run; each takes the selector."""
    act = tl.zero_ablate()
    return {
        "trace save=": lambda s: tl.trace(model, x, save=s),
        "trace halt=": lambda s: tl.trace(model, x, halt=s),
        "trace intervene=": lambda s: tl.trace(model, x, intervene=tl.when(s, act)),
        "trace save_grads=": lambda s: tl.trace(model, x, save_grads=s),
        "record save=": lambda s: tl.record(model, x, save=s).to_trace(),
        "record halt=": lambda s: tl.record(model, x, halt=s),
        "record intervene=": lambda s: tl.record(model, x, intervene=tl.when(s, act)),
        "run intervene=": lambda s: tl.run(model, x, intervene=tl.when(s, act)),
        "pluck": lambda s: tl.pluck(model, x, s),
    }


@pytest.mark.parametrize("entry", list(_entries(*_model())))
def test_a_misspelt_function_name_is_refused_with_close_matches(entry):
    model, x = _model()
    with pytest.raises(tl.SelectorError, match=r"tl\.func\('gleu'\).*'gelu'"):
        _entries(model, x)[entry](tl.func("gleu"))
    with pytest.raises(tl.SelectorError, match="no op type torch can produce"):
        _entries(model, x)[entry](tl.func("linear") | ~tl.func("no_such_func"))


@pytest.mark.parametrize("entry", ["trace save=", "record save=", "trace intervene=",
                                   "record intervene=", "run intervene=", "pluck"])
@pytest.mark.parametrize("spec", ["linear_9_9", "gelu_1_7", tl.label("linear_1_1", "nope")])
def test_a_label_no_op_carries_is_refused_with_close_matches(entry, spec):
    model, x = _model()
    with pytest.raises((tl.SelectorError, tl.LookupKeyError),
                       match="linear_1_1|gelu_1_2|neither a label"):
        _entries(model, x)[entry](spec)


@pytest.mark.parametrize("entry", ["trace save=", "record save=", "trace intervene=",
                                   "run intervene=", "trace halt="])
def test_an_unknown_module_is_refused_with_close_matches(entry):
    model, x = _model()
    with pytest.raises(tl.SelectorError, match="'1'"):
        _entries(model, x)[entry](tl.in_module("11"))


def test_an_unknown_substring_in_save_is_refused():
    model, x = _model()
    with pytest.raises(tl.SelectorError, match="no label contains 'relu'"):
        tl.trace(model, x, save=["linear_1_1", "relu"])
    with pytest.raises(tl.SelectorError, match="no label contains 'relu'"):
        tl.record(model, x, save="relu").to_trace()


def test_record_raises_like_trace_when_a_strict_rule_matched_nothing():
    model, x = _model()
    rule = tl.when(tl.func("relu"), tl.zero_ablate())  # a real op type, absent here
    for entry in ("trace intervene=", "record intervene=", "run intervene="):
        with pytest.raises(tl.InterventionError, match="matched no op"):
            _entries(model, x)[entry](tl.func("relu"))
    lenient = tl.when(tl.func("relu"), tl.zero_ablate(), strict=False)
    with pytest.warns(tl.InterventionWarning):
        tl.record(model, x, intervene=lenient)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = tl.record(model, x, intervene=tl.when(tl.func("gelu"), tl.zero_ablate()))
    assert torch.equal(rec.output, model[2](torch.zeros(3, 6)))
    assert rule.strict


def test_valid_names_still_work_and_save_what_they_name():
    model, x = _model()
    trace = tl.trace(model, x, save=[tl.func("gelu"), "linear_1_1", "2"])
    kept = {op.label for op in trace.ops if op.payload is not None and op.kind == "op"}
    assert kept == {"linear_1_1", "gelu_1_2", "linear_2_3"}
    with torch.no_grad():
        assert torch.allclose(trace["gelu_1_2"].out, nn.functional.gelu(model[0](x)))
