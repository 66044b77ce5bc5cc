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


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", regular_cases(irregular=True), ids=lambda c: c.name)
def test_every_zoo_model_validates(case, train):
    from tests.replay.test_zoo_exact import same_state, state_of

    model, args, kwargs = build(case)
    model.train(train)
    before = state_of(model)
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    report = tl.validate(model, *args, input_kwargs=kwargs)
    assert report, str(report)
    assert report.checked > 0
    assert same_state(before, state_of(model)), "validate changed the model"
    assert torch.equal(torch.get_rng_state(), rng), "validate moved the caller's generator"
