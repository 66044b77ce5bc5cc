"""Every public entry given the wrong type raises a LensError subclass saying what it
expected (not a TypeError or AttributeError from deep inside torch or lens)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import lens as tl

torch.manual_seed(0)
_MODEL = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
_X = torch.randn(2, 4)


def _trace() -> tl.Trace:
    return tl.trace(_MODEL, _X)


m, x = _MODEL, _X
T, S, C, IE, M, A = (tl.ArgumentTypeError, tl.SelectorError, tl.CaptureError,
                    tl.InterventionError, tl.ModelTypeError, tl.LookupKeyError)

# (name, call, expected class, substring of the message)
CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("trace(5, x)", lambda: tl.trace(5, x), M, "nn.Module"),
    ("record(5, x)", lambda: tl.record(5, x), M, "nn.Module"),
    ("run(5, x)", lambda: tl.run(5, x), M, "nn.Module"),
    ("pluck(5, x, site)", lambda: tl.pluck(5, x, "linear_1_1"), M, "nn.Module"),
    ("validate('x')", lambda: tl.validate("x"), M, "nn.Module"),
    ("show_graph(5)", lambda: tl.show_graph(5), M, "nn.Module"),
    ("trace save=5.0", lambda: tl.trace(m, x, save=5.0), S, "Cannot select ops with 5.0"),
    ("trace halt=5.0", lambda: tl.trace(m, x, halt=5.0), S, "Cannot select ops"),
    ("trace save_grads=1.5", lambda: tl.trace(m, x, save_grads=1.5), S, "Cannot select"),
    ("trace intervene=5", lambda: tl.trace(m, x, intervene=5), C, "tl.when"),
    ("run intervene=5", lambda: tl.run(m, x, intervene=5), C, "tl.when"),
    ("trace input_kwargs=5", lambda: tl.trace(m, x, input_kwargs=5), T, "dict"),
    ("record input_kwargs=[]", lambda: tl.record(m, x, input_kwargs=[1]), T, "dict"),
    ("run input_kwargs=5", lambda: tl.run(m, x, input_kwargs=5), T, "dict"),
    ("validate input_kwargs=5", lambda: tl.validate(m, x, input_kwargs=5), T, "dict"),
    ("validate seed='a'", lambda: tl.validate(m, x, seed="a"), T, "an int"),
    ("trace detach='yes'", lambda: tl.trace(m, x, detach="yes"), T, "True or False"),
    ("trace keep_orphans=1", lambda: tl.trace(m, x, keep_orphans=1), T, "True or False"),
    ("record detect_loops=None", lambda: tl.record(m, x, detect_loops=None), T, "True or"),
    ("trace device=5.5", lambda: tl.trace(m, x, device=5.5), T, "torch.device"),
    ("trace dtype='float'", lambda: tl.trace(m, x, dtype="float"), T, "torch.dtype"),
    ("trace lookback='a'", lambda: tl.trace(m, x, lookback="a"), T, "int >= 0"),
    ("trace lookback=-1", lambda: tl.trace(m, x, lookback=-1), T, "int >= 0"),
    ("find_facets(5)", lambda: tl.find_facets(5), T, "takes a trace"),
    ("find_facets kind=5", lambda: tl.find_facets(_trace(), 5), T, "kind of facet"),
    ("find_facets kind typo", lambda: tl.find_facets(_trace(), "atention"), A, "'attention'"),
    ("bundle(5)", lambda: tl.bundle(5), T, "dict of traces"),
    ("bundle([t])", lambda: tl.bundle([_trace()]), T, "dict of traces"),
    ("bundle({'a': 5})", lambda: tl.bundle({"a": 5}), T, "not a Trace"),
    ("bundle baseline=1", lambda: tl.bundle({"a": _trace()}, baseline=1), T, "name"),
    ("when(5.0, action)", lambda: tl.when(5.0, tl.zero_ablate()), S, "Cannot select"),
    ("when(site, 5)", lambda: tl.when(tl.func("gelu"), 5), IE, "(selector, action)"),
    ("when strict='no'", lambda: tl.when("0", tl.zero_ablate(), strict="no"), T, "True"),
    ("func(5)", lambda: tl.func(5), S, "strings"),
    ("module(5)", lambda: tl.module(5), S, "string"),
    ("in_module(5)", lambda: tl.in_module(5), S, "string"),
    ("label(5)", lambda: tl.label(5), S, "string"),
    ("where(5)", lambda: tl.where(5), S, "callable"),
    ("followed_by(5)", lambda: tl.followed_by(5), S, "selector"),
    ("preceded_by(5)", lambda: tl.preceded_by(5), S, "selector"),
    ("facet(5)", lambda: tl.facet(5), S, "facet name"),
    ("action(5)", lambda: tl.action(5), IE, "callable"),
    ("scale('a')", lambda: tl.scale("a"), T, "a number"),
    ("steer('up')", lambda: tl.steer("up"), T, "a direction"),
    ("steer(v, alpha='a')", lambda: tl.steer([1.0], alpha="a"), T, "a number"),
    ("clamp('a')", lambda: tl.clamp("a"), T, "a number"),
    ("noise('a')", lambda: tl.noise("a"), T, "standard deviation"),
    ("noise(1, seed=0.5)", lambda: tl.noise(1.0, seed=0.5), T, "an int"),
    ("project_onto(5)", lambda: tl.project_onto(5), IE, "float vector"),
    ("project_off('a')", lambda: tl.project_off([[True]]), IE, "float vector"),
    ("replace_with('a')", lambda: tl.replace_with("a"), T, "a number, a tensor"),
    ("mean_ablate('a')", lambda: tl.mean_ablate("a"), T, "dimension"),
    ("mean_ablate(source=5)", lambda: tl.mean_ablate(source=5), T, "source"),
    ("resample_ablate(5)", lambda: tl.resample_ablate(5), T, "trace of the same model"),
    ("patch_from(tensor)", lambda: tl.patch_from(x), T, "trace of the same model"),
    ("swap_with(5)", lambda: tl.swap_with(5), T, "or a tensor"),
    ("splice_module(5)", lambda: tl.splice_module(5), T, "module or function"),
    ("trace[5.0]", lambda: _trace()[5.0], A, "label (str)"),
    ("fork().intervene(5, 5)", lambda: _trace().fork().intervene(5, 5), IE, "callable"),
]


@pytest.mark.parametrize(("call", "cls", "text"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_wrong_type_raises_a_lens_error_saying_what_was_expected(call, cls, text):
    with pytest.raises(cls) as info:
        call()
    assert isinstance(info.value, tl.LensError)
    assert text in str(info.value), str(info.value)


def test_argument_type_error_is_a_type_error():
    with pytest.raises(TypeError):
        tl.scale("a")


def test_right_types_still_build():
    """The checks refuse only wrong types: these are all valid."""
    tl.steer(5), tl.steer(torch.tensor([1, 0, 0, 0])), tl.replace_with(0), tl.mean_ablate(0)
    tl.when(-1, tl.zero_ablate()), tl.clamp(max=1), tl.scale(torch.tensor(2.0))
    trace = tl.trace(m, x, device="cpu", dtype=torch.float64, lookback=2, detach=True)
    assert trace["gelu_1_2"].out.dtype == torch.float64
