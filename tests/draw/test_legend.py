"""The visual legend on the seed models, checked against what their code does."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import lens as tl
import lens.draw  # noqa: F401  (attaches Trace.draw)
from lens.draw import plan
from lens.draw.style import BUFFER_COLOR, IF_COLOR, INPUT_COLOR, OUTPUT_COLOR, PARAMS_COLOR
from tests.models import get

from ._svg import Svg, parse


def _draw(name: str, tmp_path: Path, **options) -> tuple[tl.Trace, Svg, nn.Module]:
    model, args, kwargs = get(name).build()
    trace = tl.trace(model, *args, input_kwargs=kwargs)
    return trace, parse(Path(trace.draw(tmp_path / name, **options))), model


def _one(trace: tl.Trace, **where) -> str:
    """Label of the single op whose attributes match ``where``."""
    hits = [op.label for op in trace.ops
            if all(getattr(op, k) == v for k, v in where.items())]
    assert len(hits) == 1, (where, hits)
    return hits[0]


def test_demo_network_colours_shapes_and_outlines(tmp_path):
    trace, svg, model = _draw("demo_network", tmp_path)
    linear = _one(trace, func_name="linear")
    assert svg.nodes[_one(trace, kind="input")].fill == INPUT_COLOR.lower()
    assert svg.nodes[_one(trace, kind="output")].fill == OUTPUT_COLOR.lower()
    assert svg.nodes[linear].fill == PARAMS_COLOR.lower()
    buffer = svg.nodes[_one(trace, kind="buffer")]
    assert buffer.fill == BUFFER_COLOR.lower()
    assert "@example_buffer" in buffer.text
    # torch.randn inside forward: dashed; nothing else is.
    randn = _one(trace, func_name="randn")
    assert [n.id for n in svg.nodes.values() if n.dashed] == [randn]
    # nn.ReLU module -> box naming the module; F.relu at top level -> oval.
    relus = [op for op in trace.ops if op.type == "relu"]
    in_module = [op.label for op in relus if op.module_ctx]
    free = [op.label for op in relus if not op.module_ctx]
    assert len(in_module) == len(free) == 1
    assert svg.nodes[in_module[0]].shape == "polygon"
    assert "@relu_module" in svg.nodes[in_module[0]].text
    assert svg.nodes[free[0]].shape == "ellipse"
    assert svg.nodes[linear].shape == "polygon"
    # Node text: label, output shape and size, parameter shapes, module address.
    text = svg.nodes[linear].text
    w, b = model.fc.weight.shape, model.fc.bias.shape
    assert linear in text and "5x5 (100 B)" in text and "@fc" in text
    assert f"params: {w[0]}x{w[1]}, x{b[0]}" in text
    # Header: class, op count, parameter count and size.
    header = " ".join(svg.graph_texts)
    n_params = sum(p.numel() for p in model.parameters())
    assert "DemoNetwork" in header
    assert f"{len(trace.ops)} tensors total" in header
    assert f"{n_params} params total ({n_params * 4} B)" in header


def test_non_commutative_edges_carry_argument_positions(tmp_path):
    trace, svg, _ = _draw("demo_network", tmp_path)
    # forward: ...; x = x + randn; y = x ** 2; x = x / y; x = x * buffer
    div = trace[_one(trace, type="truediv")]
    numerator = _one(trace, type="add", module_ctx=(), parent_idx=div.parents[0].parent_idx)
    power = _one(trace, type="pow")
    assert svg.edge(numerator, div.label).texts == ["arg 0"]
    assert svg.edge(power, div.label).texts == ["arg 1"]
    mul = trace[_one(trace, type="mul")]  # commutative: no positions
    assert all(svg.edge(p.label, mul.label).texts == [] for p in mul.parents)


class _Ordered(nn.Module):
    def forward(self, a, b):
        return torch.cat([b, a], dim=0), torch.sub(a, b, alpha=2), torch.matmul(b, a)


def test_argument_positions_of_lists_keywords_and_matmul(tmp_path):
    a, b = torch.rand(3, 3), torch.rand(3, 3)
    trace = tl.trace(_Ordered(), a, b)
    svg = parse(Path(trace.draw(tmp_path / "ordered")))
    a_label, b_label = trace.input_layers
    cat, matmul = _one(trace, type="cat"), _one(trace, type="matmul")
    assert svg.edge(b_label, cat).texts == ["arg 0[0]"]
    assert svg.edge(a_label, cat).texts == ["arg 0[1]"]
    assert svg.edge(b_label, matmul).texts == ["arg 0"]
    assert svg.edge(a_label, matmul).texts == ["arg 1"]
    sub = _one(trace, type="sub")
    assert svg.edge(a_label, sub).texts == ["arg 0"]
    assert svg.edge(b_label, sub).texts == ["arg 1"]


def test_conditional_branch_is_yellow_and_marked_if(tmp_path):
    trace, svg, _ = _draw("nested_demo", tmp_path)
    # forward starts with `if torch.sum(x) > 0:` -> sum feeds gt, a bool nobody uses.
    gt = _one(trace, type="gt")
    total = _one(trace, type="sum")
    assert svg.nodes[gt].fill == IF_COLOR.lower()
    assert svg.edge(trace.input_layers[0], total).texts == ["IF"]
    if_edges = [e for e in svg.edges if "IF" in e.texts]
    assert len(if_edges) == 1


def test_nested_modules_are_nested_boxes_with_address_and_class(tmp_path):
    trace, svg, model = _draw("nested_demo", tmp_path)
    boxes = {" ".join(t) for t in svg.clusters.values()}
    assert boxes == {"@submodule1 Submodule1", "@submodule1.submodule2 Submodule2"}
    p = plan(trace)
    inner = next(c for c in p.clusters.values() if c.address == "submodule1.submodule2")
    assert inner.parent is not None and p.clusters[inner.parent].address == "submodule1"
    # Every op run inside submodule2 (plain forward hooks) sits in its box.
    seen: list[torch.Tensor] = []
    model.submodule1.submodule2.register_forward_hook(lambda m, i, o: seen.append(o))
    model(torch.rand(5, 5))
    assert len(seen) == 1
    in_inner = [n for n in p.nodes if inner.key in n.clusters]
    assert in_inner and all(n.first.module == "submodule1.submodule2" for n in in_inner)
    assert len(in_inner) == sum(op.module == "submodule1.submodule2" for op in trace.ops)


def test_rolled_view_marks_passes_and_pass_dependent_edges(tmp_path):
    trace, svg, model = _draw("recurrent_demo", tmp_path, vis_mode="rolled")
    assert len(svg.nodes) == len(trace.layers)
    assert trace.is_recurrent
    n = model.n_loops  # forward: for _ in range(n): x = fc(x); x = x + 1; x = x * 2
    linear, mul = _one(trace, type="linear", pass_num=1), _one(trace, type="mul", pass_num=1)
    linear, mul = trace[linear].layer_label, trace[mul].layer_label
    assert f"(x{n})" in svg.nodes[linear].text and "@fc" in svg.nodes[linear].text
    assert svg.edge(trace.input_layers[0], linear).texts == ["in 1"]
    assert sorted(svg.edge(mul, linear).texts) == sorted([f"in 2-{n}", f"out 1-{n - 1}"])
    assert svg.edge(mul, trace.output_layers[0]).texts == [f"out {n}"]
    unrolled = parse(Path(trace.draw(tmp_path / "unrolled", vis_mode="unrolled")))
    assert len(unrolled.nodes) == len(trace.ops)
    assert "@fc:2" in unrolled.nodes[f"{linear}:2"].text
