"""Property: for random small MLPs, random selectors and random actions, replaying a fork
equals the live edit, which equals a rerun; the source trace is left as it was."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lens as tl
import lens.interventions as li

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid)


@st.composite
def mlps(draw: Any) -> tuple[nn.Module, torch.Tensor]:
    widths = draw(st.lists(st.integers(2, 6), min_size=2, max_size=5))
    blocks = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers: list[nn.Module] = [nn.Linear(a, b)]
        if draw(st.booleans()):
            layers.append(ACTIVATIONS[draw(st.integers(0, len(ACTIVATIONS) - 1))]())
        if draw(st.booleans()):
            layers.append(nn.LayerNorm(b))
        blocks.append(nn.Sequential(*layers))
    torch.manual_seed(draw(st.integers(0, 1000)))
    model = nn.Sequential(*blocks).eval()
    return model, torch.randn(draw(st.integers(1, 4)), widths[0])


def _selector(draw: Any, tr: tl.Trace) -> Any:
    ops = [op for op in tr.ops if op.kind == "op"]
    op = ops[draw(st.integers(0, len(ops) - 1))]
    kind = draw(st.sampled_from(["func", "label", "module", "in_module", "preceded", "or"]))
    if kind == "func":
        return tl.func(op.type)
    if kind == "label":
        return op.label
    addresses = sorted(tr.module_info)
    address = addresses[draw(st.integers(0, len(addresses) - 1))] if addresses else "0"
    if kind == "module":
        return address
    if kind == "in_module":
        return tl.in_module(address.split(".")[0])
    if kind == "preceded":
        return tl.func(op.type) & tl.preceded_by(tl.func(op.parents[0].type))
    return tl.func(op.type) | tl.label(ops[-1].label)


def _action(draw: Any) -> li.Action:
    kind = draw(st.sampled_from(["scale", "zero_at", "clamp", "noise", "mean", "replace",
                                 "fn"]))
    if kind == "scale":
        return li.scale(draw(st.floats(-2, 2, allow_nan=False)))
    if kind == "zero_at":
        return li.zero_ablate().at[:, draw(st.integers(0, 1))]
    if kind == "clamp":
        return li.clamp(min=draw(st.floats(-1, 0)), max=draw(st.floats(0, 1)))
    if kind == "noise":
        return li.noise(draw(st.floats(0.01, 1.0)), seed=draw(st.integers(0, 9)))
    if kind == "mean":
        return li.mean_ablate(over=0)
    if kind == "replace":
        return li.replace_with(draw(st.floats(-1, 1)))
    return li.action(lambda t, op: t.flip(-1) * 0.5)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_replay_equals_live_equals_rerun(data: Any) -> None:
    model, x = data.draw(mlps())
    src = tl.trace(model, x, intervention_ready=True)
    payloads = [op.payload for op in src.ops]
    rules = [(_selector(data.draw, src), _action(data.draw))
             for _ in range(data.draw(st.integers(1, 3)))]
    f = src.fork()
    for site, act in rules:
        f.intervene(site, act)
    f.replay()
    live = tl.trace(model, x, intervene=[li.when(site, act) for site, act in rules])
    assert torch.equal(f.output, live.output)
    assert torch.equal(f.rerun(model, x).output, live.output)
    assert [op.label for op in f.ops if op.fired] == [op.label for op in live.ops if op.fired]
    assert all(op.payload is p for op, p in zip(src.ops, payloads, strict=True))
    assert torch.equal(src.output, model(x))
