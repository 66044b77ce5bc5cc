"""Bad input gets a clear lens error, not a traceback from deep inside."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens as tl


def test_not_a_model():
    with pytest.raises(tl.ModelTypeError, match="nn.Module"):
        tl.trace(42, torch.randn(2))


def test_inputs_that_do_not_fit_forward():
    with pytest.raises(tl.CaptureError, match=r"forward\(input"):
        tl.trace(nn.Linear(3, 3), torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(tl.CaptureError, match="do not fit"):
        tl.trace(nn.Linear(3, 3), input_kwargs={"wrong": torch.randn(2, 3)})


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_is_refused_with_advice():
    scripted = torch.jit.script(nn.Linear(3, 3))
    with pytest.raises(tl.ModelTypeError, match="TorchScript"):
        tl.trace(scripted, torch.randn(2, 3))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compiled_model_is_refused_with_advice():
    compiled = torch.compile(nn.Linear(3, 3))
    with pytest.raises(tl.ModelTypeError, match="_orig_mod"):
        tl.trace(compiled, torch.randn(2, 3))


def test_lens_errors_subclass_builtins():
    assert issubclass(tl.LookupKeyError, KeyError)
    assert issubclass(tl.SelectorError, ValueError)
    assert issubclass(tl.CaptureError, RuntimeError)
    assert issubclass(tl.ModelTypeError, TypeError)
    assert issubclass(tl.MissingDependencyError, ImportError)
