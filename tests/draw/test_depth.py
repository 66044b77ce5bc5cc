"""``depth=N`` folds every module call at nesting level N into one node."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import lens as tl
import lens.draw  # noqa: F401  (attaches Trace.draw)
from tests.models import get

from ._svg import parse

MODELS = ["nested_demo", "alexnet_small", "resnet_block", "albert_shared",
          "tiny_transformer_2block"]


def _calls_at_level(model: nn.Module, args, kwargs, level: int) -> list[tuple[str, int]]:
    """(address, call number) of every module call made at nesting level ``level``
    (1 = called by the root's forward), found with plain module hooks."""
    names = {m: n for n, m in model.named_modules() if n}
    stack: list[str] = []
    calls: list[tuple[str, int]] = []
    counts: dict[str, int] = {}
    handles = []

    def pre(m, _):
        name = names[m]
        counts[name] = counts.get(name, 0) + 1
        stack.append(name)
        if len(stack) == level:
            calls.append((name, counts[name]))

    def post(m, _, __):
        stack.pop()

    for m in names:
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return calls


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("level", [1, 2])
def test_depth_folds_each_module_call_at_that_level(name, level, tmp_path):
    model, args, kwargs = get(name).build()
    trace = tl.trace(model, *args, input_kwargs=kwargs, save=False)
    calls = _calls_at_level(model, args, kwargs, level)
    folded = [op for op in trace.ops if len(op.module_ctx) >= level]
    svg = parse(Path(trace.draw(tmp_path / name, depth=level)))
    assert len(svg.nodes) == len(trace.ops) - len(folded) + len(calls)
    if len(folded) > len(calls):
        assert len(svg.nodes) < len(trace.ops)
    # A call that ran several ops is one box3d node named after the call.
    multi = {f"{a}:{k}" for a, k in calls
             if sum(op.module_ctx[level - 1].key == f"{a}:{k}" for op in folded) > 1}
    boxes = {n.id for n in svg.nodes.values() if n.polylines}
    assert boxes == multi


@pytest.mark.parametrize("name", ["albert_shared", "nested_demo"])
def test_rolled_depth_folds_each_module_once(name, tmp_path):
    model, args, kwargs = get(name).build()
    trace = tl.trace(model, *args, input_kwargs=kwargs, save=False)
    calls = _calls_at_level(model, args, kwargs, 1)
    modules = {a for a, _ in calls}
    kept_layers = {op.layer_label for op in trace.ops if not op.module_ctx}
    svg = parse(Path(trace.draw(tmp_path / name, vis_mode="rolled", depth=1)))
    assert len(svg.nodes) == len(kept_layers) + len(modules)
    repeated = [a for a in modules if sum(c[0] == a for c in calls) > 1]
    for address in repeated:
        n = sum(c[0] == address for c in calls)
        assert f"(x{n})" in svg.nodes[address].text


def test_folded_module_node_names_address_class_and_op_count(tmp_path):
    model, args, kwargs = get("nested_demo").build()
    trace = tl.trace(model, *args, input_kwargs=kwargs)
    svg = parse(Path(trace.draw(tmp_path / "nested", depth=1)))
    ran: list[int] = []
    model.submodule1.register_forward_hook(lambda m, i, o: ran.append(1))
    model(*args)
    node = svg.nodes["submodule1:1"]
    inside = [op for op in trace.ops if op.module_ctx and op.module_ctx[0].address == "submodule1"]
    assert len(ran) == 1
    assert node.texts[:2] == ["@submodule1", type(model.submodule1).__name__]
    assert f"{len(inside)} ops" in node.texts
    # Edges now end at the module node: the op that fed submodule1 points at it.
    feeder = {p.label for op in inside for p in op.parents if p not in inside}
    assert {e.src for e in svg.edges if e.dst == "submodule1:1"} == feeder
