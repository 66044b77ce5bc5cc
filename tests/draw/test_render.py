"""Running Graphviz: files and formats, direction, a missing or hanging program, big graphs,
Jupyter's SVG and ``show_graph``."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import lens as tl
from lens.draw import render, show_graph
from lens.errors import DrawError, MissingDependencyError
from tests.models import get

from ._svg import parse

SLEEP = shutil.which("sleep") or "/bin/sleep"


@pytest.fixture
def demo():
    model, args, kwargs = get("demo_network").build()
    return tl.trace(model, *args, input_kwargs=kwargs)


def test_default_path_is_model_class_in_cwd(demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = demo.draw()
    assert Path(path) == tmp_path / "DemoNetwork.svg"
    assert len(parse(Path(path)).nodes) == len(demo.ops)


def test_formats_from_suffix_or_argument(demo, tmp_path):
    assert Path(demo.draw(tmp_path / "g.pdf")).read_bytes().startswith(b"%PDF")
    png = demo.draw(tmp_path / "g", format="png")
    assert png.endswith("g.png")
    assert Path(png).read_bytes().startswith(b"\x89PNG")
    dot = Path(demo.draw(tmp_path / "g", format="dot")).read_text()
    assert dot.startswith("digraph") and all(f'"{op.label}"' in dot or f"={op.label} " in dot
                                             for op in demo.ops)
    assert demo.draw(tmp_path / "sub" / "dir" / "g").endswith("sub/dir/g.svg")


@pytest.mark.parametrize("options", [
    {"vis_mode": "folded"}, {"depth": 0}, {"depth": 1.5}, {"direction": "up"},
    {"format": "jpg"}, {"timeout": 0},
])
def test_bad_options_say_what_is_allowed(demo, tmp_path, options):
    with pytest.raises(DrawError) as info:
        demo.draw(tmp_path / "g", **options)
    assert next(iter(options)) in str(info.value)


def test_suffix_and_format_must_agree(demo, tmp_path):
    with pytest.raises(DrawError, match="suffix"):
        demo.draw(tmp_path / "g.svg", format="pdf")


@pytest.mark.parametrize("direction", ["bottomup", "topdown", "leftright"])
def test_direction_places_input_and_output(demo, tmp_path, direction):
    svg = parse(Path(demo.draw(tmp_path / direction, direction=direction)))
    i, o = svg.nodes[demo.input_layers[0]], svg.nodes[demo.output_layers[0]]
    if direction == "bottomup":  # SVG y grows downwards
        assert o.y < i.y
    elif direction == "topdown":
        assert i.y < o.y
    else:
        assert i.x < o.x


def test_missing_dot_raises_with_install_hint_and_capture_still_works(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert shutil.which("dot") is None
    model, args, kwargs = get("demo_network").build()
    trace = tl.trace(model, *args, input_kwargs=kwargs)  # capture needs no Graphviz
    assert trace.output_layers
    with pytest.raises(MissingDependencyError) as info:
        trace.draw(tmp_path / "g")
    assert isinstance(info.value, ImportError)
    msg = str(info.value)
    assert "apt-get install graphviz" in msg and "brew install graphviz" in msg
    assert Path(trace.draw(tmp_path / "g", format="dot")).exists()  # source needs none


def _fake(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)


def test_a_hanging_layout_gives_way_to_a_faster_one(demo, tmp_path, monkeypatch):
    real_sfdp = shutil.which("sfdp")
    assert real_sfdp is not None
    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "dot", f"exec {SLEEP} 60")
    _fake(bin_dir, "sfdp", f'exec {real_sfdp} "$@"')
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    out = tmp_path / "g.svg"
    t0 = time.monotonic()
    render.run(lambda layout: _source(demo, layout), "svg",
               [render.FULL, render.SFDP], timeout=4, out_path=str(out))
    assert time.monotonic() - t0 < 30  # bounded, not the fake dot's 60 s
    assert len(parse(out).nodes) == len(demo.ops)


def test_when_every_layout_hangs_drawing_stops_with_advice(demo, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "dot", f"exec {SLEEP} 60")
    _fake(bin_dir, "sfdp", f"exec {SLEEP} 60")
    monkeypatch.setenv("PATH", str(bin_dir))
    t0 = time.monotonic()
    with pytest.raises(DrawError) as info:
        demo.draw(tmp_path / "g", timeout=1)
    assert time.monotonic() - t0 < 30
    assert "rolled" in str(info.value) and "depth" in str(info.value)


def _source(trace, layout):
    from lens.draw.dot import source
    from lens.draw.layout import plan

    return source(trace, plan(trace), fast=layout.fast, clusters=layout.clusters)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x + torch.relu(self.fc(x)) * 0.5


class _Deep(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.blocks = nn.Sequential(*[_Block() for _ in range(n)])

    def forward(self, x):
        return self.blocks(x)


def test_a_graph_too_large_for_dot_still_renders(tmp_path):
    trace = tl.trace(_Deep(1100), torch.randn(1, 4), save=False)
    assert len(trace.ops) > 4000
    assert render.layouts_for(len(trace.ops), None) == [render.SFDP]
    svg = parse(Path(trace.draw(tmp_path / "deep")))
    assert len(svg.nodes) == len(trace.ops)
    assert any("module boxes left out" in t for t in svg.graph_texts)
    assert "@blocks.7.fc" in svg.nodes[trace.modules["blocks.7.fc"].calls[0].outputs[0].label].text


def test_repr_svg_is_the_drawing(demo, monkeypatch, tmp_path):
    svg = parse(demo._repr_svg_())
    assert len(svg.nodes) == len(demo.ops)
    assert svg.root.tag.endswith("svg")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no Graphviz: Jupyter shows text
    assert demo._repr_svg_() is None


def test_show_graph_traces_without_saving_and_draws(tmp_path):
    model, args, kwargs = get("nested_demo").build()
    calls: list[int] = []
    model.register_forward_hook(lambda m, i, o: calls.append(1))
    path = show_graph(model, *args, input_kwargs=kwargs, path=tmp_path / "g", depth=1)
    assert len(calls) == 1
    reference = tl.trace(model, *args, input_kwargs=kwargs)
    inside = sum(bool(op.module_ctx) for op in reference.ops)
    assert len(parse(Path(path)).nodes) == len(reference.ops) - inside + 1
