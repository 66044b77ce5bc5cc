"""Every zoo model: module outputs in the trace equal plain forward hooks, bit for bit."""

from __future__ import annotations

import pytest
import torch

import lens as tl
from tests.helpers import build, hook_outputs, leaves, regular_cases


@pytest.mark.parametrize("case", regular_cases(), ids=lambda c: c.name)
def test_module_outputs_equal_forward_hooks(case):
    model, args, kwargs = build(case)
    expected, raw_out = hook_outputs(model, args, kwargs)
    torch.manual_seed(0)
    tr = tl.trace(model, *args, input_kwargs=kwargs)
    if any(True for _ in model.children()):
        assert expected, "the model has submodules, so hooks must have fired"
    for address, calls in expected.items():
        mod = tr.modules[address]
        assert len(mod.calls) == len(calls), address
        for call, want in zip(mod.calls, calls, strict=True):
            got = [op.out for op in call.outputs]
            assert len(got) == len(want), f"{call.key}: {len(got)} outputs vs {len(want)}"
            for g, w in zip(got, want, strict=True):
                assert torch.equal(g.detach(), w), call.key
    outs = [tr[label].out for label in tr.output_layers]
    for g, w in zip(outs, leaves(raw_out), strict=True):
        assert torch.equal(g.detach(), w.detach())


def _validate_pending(case):
    # The integrator removes these marks when the validate rewrite (w/rngval) lands.
    mark = pytest.mark.xfail(reason="validate rewrite pending (w/rngval)", strict=True)
    return pytest.param(case, marks=mark) if "validate_pending" in case.tags else case


@pytest.mark.parametrize("case", [_validate_pending(c) for c in regular_cases()],
                         ids=lambda c: c.name)
def test_every_zoo_model_validates(case):
    model, args, kwargs = build(case)
    torch.manual_seed(0)
    report = tl.validate(model, *args, input_kwargs=kwargs)
    assert report, str(report)
    assert report.checked > 0
