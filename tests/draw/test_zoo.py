"""Every zoo model draws: a valid SVG with one node per op (unrolled) or per layer
(rolled), and the legend colours on inputs, outputs and parameter ops."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

import lens as tl
import lens.draw  # noqa: F401  (attaches Trace.draw)
from lens.draw.style import INPUT_COLOR, OUTPUT_COLOR, PARAMS_COLOR
from tests.helpers import build, regular_cases

from ._svg import parse

CASES = regular_cases()
NOT_HF = [c for c in CASES if "hf" not in c.tags]


def _param_ops(model: nn.Module, trace: tl.Trace) -> set[str]:
    """Labels of ops that used a parameter, found from the model's own parameter list."""
    names = {n for n, _ in model.named_parameters()}
    return {op.label for op in trace.ops if names & set(op.params)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_unrolled_drawing_has_one_node_per_op_in_legend_colours(case, tmp_path):
    model, args, kwargs = build(case)
    trace = tl.trace(model, *args, input_kwargs=kwargs, save=False)
    svg = parse(Path(trace.draw(tmp_path / case.name)))
    assert len(svg.nodes) == len(trace.ops)
    assert set(svg.nodes) == set(trace.labels)
    inputs = {op.label for op in trace.ops if op.kind == "input"}
    outputs = {op.label for op in trace.ops if op.kind == "output"}
    assert inputs and outputs
    for label in inputs:
        assert svg.nodes[label].fill == INPUT_COLOR.lower()
    for label in outputs:
        assert svg.nodes[label].fill == OUTPUT_COLOR.lower()
    for label in _param_ops(model, trace) - inputs - outputs:
        assert svg.nodes[label].fill == PARAMS_COLOR.lower(), label
    # The header names the model class and the op count.
    header = " ".join(svg.graph_texts)
    assert type(model).__name__ in header
    assert f"{len(trace.ops)} tensors total" in header


@pytest.mark.parametrize("case", NOT_HF, ids=lambda c: c.name)
def test_rolled_drawing_has_one_node_per_layer(case, tmp_path):
    model, args, kwargs = build(case)
    trace = tl.trace(model, *args, input_kwargs=kwargs, save=False)
    svg = parse(Path(trace.draw(tmp_path / case.name, vis_mode="rolled")))
    assert len(svg.nodes) == len(trace.layers)
    assert set(svg.nodes) == {layer.label for layer in trace.layers}
    for layer in trace.layers:
        text = svg.nodes[layer.label].text
        n = len(layer.passes)
        assert (f"(x{n})" in text) == (n > 1), (layer.label, text)
