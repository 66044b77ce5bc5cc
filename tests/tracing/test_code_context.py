"""``op.code_context``: the user's frames that ran each op, innermost first."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import lens as tl


def _scaled(x):
    return x * 3  # MARK-helper


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        x = self.fc(x)  # MARK-fc
        return _scaled(x)  # MARK-call


def _line(fn, marker: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, text in enumerate(lines) if marker in text)


def test_frames_are_the_user_frames_innermost_first_with_their_source():
    tr = tl.trace(_Net(), torch.rand(2, 4), code_context=True)
    linear = tr["linear_1_1"].code_context
    assert [(f.func_name, f.line_number) for f in linear] == [
        ("forward", _line(_Net.forward, "MARK-fc"))]
    assert linear[0].file == __file__ and "self.fc(x)" in linear[0].code
    mul = tr["mul_1_2"].code_context
    assert [(f.func_name, f.line_number) for f in mul] == [
        ("_scaled", _line(_scaled, "MARK-helper")),
        ("forward", _line(_Net.forward, "MARK-call"))]  # the caller of tl.trace is not in it


def test_without_code_context_asking_says_how_to_record_it():
    tr = tl.trace(_Net(), torch.rand(2, 4))
    assert tr["linear_1_1"].code is None
    with pytest.raises(tl.PayloadError, match="code_context=True"):
        _ = tr["linear_1_1"].code_context


def test_code_context_survives_save_and_load(tmp_path):
    tr = tl.trace(_Net(), torch.rand(2, 4), code_context=True)
    tl.save(tr, tmp_path / "t")
    back = tl.load(tmp_path / "t")
    assert back["mul_1_2"].code_context == tr["mul_1_2"].code_context


def test_tl_summary_is_the_summary_of_a_trace_without_payloads():
    torch.manual_seed(0)
    model, x = _Net(), torch.rand(2, 4)
    text = tl.summary(model, x)
    saved = tl.trace(model, x).summary()
    assert text.splitlines()[:-1] == saved.splitlines()[:-1]  # all but the payload count
    assert text == tl.trace(model, x, save=False).summary()
    assert "fc (Linear)" in text and "Forward FLOPs" in text
