"""Trace, Bundle and SweepResult render in Jupyter through ``_repr_html_``; checked here
without Jupyter: the HTML is well formed and carries the rows the objects hold."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser

import pytest
import torch

import lens as tl
from tests.models.seeds import DemoNetwork
from tests.sweeps import _kill

_VOID = {"img", "br", "hr", "meta", "input", "link", "path", "polygon", "ellipse",
         "polyline", "stop", "rect", "circle", "line", "use"}


class _Checker(HTMLParser):
    """Tag balance, the text of every table row, and the tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.rows: list[list[str]] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.add(tag)

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(html: str) -> _Checker:
    c = _Checker()
    c.feed(html)
    c.close()
    assert c.stack == []
    return c


def test_trace_html_is_the_summary_table_and_the_graph():
    torch.manual_seed(0)
    tr = tl.trace(DemoNetwork(), torch.rand(2, 5))
    page = _parse(tr._repr_html_())
    first = [r[0] for r in page.rows]
    assert first[0] == "Layer" and "input_1" in first and "output_1" in first
    assert "fc (Linear)" in first and "relu_module (ReLU)" in first
    fc = page.rows[first.index("fc (Linear)")]
    assert fc[2] == "30"  # 5*5 weights + 5 biases
    if shutil.which("dot"):
        assert "svg" in page.tags
    assert ("svg" in page.tags) == (tr._repr_svg_() is not None)


def test_trace_html_escapes_what_it_shows(monkeypatch):
    tr = tl.trace(DemoNetwork(), torch.rand(2, 5))
    tr.model_name = "<script>x</script>"
    html = tr._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_bundle_html_lists_members_and_the_baseline_summary():
    x = torch.rand(2, 5)
    model = DemoNetwork()
    torch.manual_seed(0)
    clean = tl.trace(model, x)
    torch.manual_seed(0)
    scaled = tl.trace(model, x, intervene=tl.when(tl.func("relu"), tl.scale(0.5)))
    page = _parse(tl.bundle({"clean": clean, "scaled": scaled})._repr_html_())
    members = {r[0]: r for r in page.rows if r and r[0] in ("clean", "scaled")}
    assert members["clean"][1] == str(len(clean.ops)) and members["clean"][3] == "yes"
    assert members["scaled"][3] == ""
    assert any(r and r[0] == "fc (Linear)" for r in page.rows)


def test_sweep_html_has_the_pivot_table_and_an_inline_heatmap(tmp_path):
    pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    result = _kill.run_sweep_job(str(tmp_path / "sweep"))
    page = _parse(result._repr_html_())
    table = result.pivot()
    body = [r for r in page.rows if r and r[0] in {str(i) for i in table.index}]
    assert len(body) == table.shape[0]
    assert "img" in page.tags and "data:image/png;base64," in result._repr_html_()
    assert plt.get_fignums() == before
