"""Bundles align traces op by op and compare them to a baseline."""

from __future__ import annotations

import math

import pytest
import torch

import lens as tl
from tests.helpers import build
from tests.models import get


@pytest.fixture
def three_traces():
    model, args, _ = build(get("alexnet_small"))
    x = args[0]
    traces = {name: tl.trace(model, x * s) for name, s in
              (("clean", 1.0), ("half", 0.5), ("noisy", 1.0))}
    torch.manual_seed(1)
    traces["noisy"] = tl.trace(model, x + 0.3 * torch.randn_like(x))
    return model, traces


def _cos(a, b):
    a, b = a.detach().reshape(-1).double(), b.detach().reshape(-1).double()
    return float(a @ b / (a.norm() * b.norm()))


def test_compare_at_matches_a_hand_computed_metric(three_traces):
    _, traces = three_traces
    b = tl.bundle(traces, baseline="clean")
    frame = b.compare_at(tl.func("relu"), metric="cosine")
    relus = [op for op in traces["clean"].ops if op.type == "relu"]
    assert list(frame.index) == [op.label for op in relus]
    assert list(frame.columns[-2:]) == ["half", "noisy"]
    for op in relus:
        want = _cos(traces["noisy"][op.label].out, op.out)
        assert math.isclose(frame.loc[op.label, "noisy"], want, rel_tol=1e-9)
    rel = b.compare_at(tl.func("conv2d"), metric="relative_l2")
    conv = traces["clean"]["conv2d_1_1"]
    half = traces["half"]["conv2d_1_1"].out.detach()
    want = float((half - conv.out.detach()).norm() / conv.out.detach().norm())
    assert math.isclose(rel.loc["conv2d_1_1", "half"], want, rel_tol=1e-6)


def test_callable_metric_and_most_changed(three_traces):
    _, traces = three_traces
    b = tl.bundle(traces, baseline="clean")

    def max_abs(a, base):
        return float((a - base).abs().max())

    frame = b.compare_at(None, metric=max_abs)
    assert frame.attrs["metric"] == "max_abs"
    top = b.most_changed(3, metric="l2", member="noisy")
    full = b.compare_at(None, metric="l2")["noisy"].sort_values(ascending=False)
    assert list(top.index) == list(full.index[:3])


def test_traces_of_different_graphs_are_refused():
    model, args, _ = build(get("nested_demo"))
    x = args[0]
    pos = tl.trace(model, x)
    neg = tl.trace(model, -x)  # the `if torch.sum(x) > 0` takes the other branch
    with pytest.raises(tl.LensError, match="first difference is at op #"):
        tl.bundle({"pos": pos, "neg": neg})
    with pytest.raises(KeyError, match="members are"):
        tl.bundle({"pos": pos}, baseline="nope")


def test_plot_draws_one_line_per_member(three_traces):
    _, traces = three_traces
    b = tl.bundle(traces, baseline="clean")
    fig = b.plot(tl.func("relu"))
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    assert [line.get_label() for line in ax.lines] == ["half", "noisy"]


def test_draw_colours_changed_ops(three_traces, tmp_path):
    import shutil
    import xml.etree.ElementTree as ET

    if shutil.which("dot") is None:
        pytest.skip("graphviz 'dot' binary not installed")
    _, traces = three_traces
    b = tl.bundle(traces, baseline="clean")
    path = b.draw(str(tmp_path / "diff.svg"), member="half")
    fills = {}
    for g in ET.parse(path).getroot().iter("{http://www.w3.org/2000/svg}g"):
        if g.get("class") == "node":
            shape = next((e for e in g.iter()
                          if e.tag.endswith(("}polygon", "}ellipse"))), None)
            fills[g.get("id")] = shape.get("fill") if shape is not None else None
    frame = b.compare_at(None, "relative_l2")["half"]
    most = frame.idxmax()
    assert fills[most] == "#ff0000"  # the most changed op is drawn full red
    unchanged = frame[frame == 0].index
    assert all(fills[s] == "#ffffff" for s in unchanged)
