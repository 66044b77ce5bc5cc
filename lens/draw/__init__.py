"""Graphviz drawings of traces: ``trace.draw(...)``, Jupyter's SVG, ``tl.show_graph``.

Importing this room attaches ``draw`` and the Jupyter SVG to ``Trace`` through the
extension registry (``lens.trace.ext``), so ``lens.trace`` never imports it. The visual
legend is described in :mod:`lens.draw.style`.
"""

from __future__ import annotations

from ..trace import ext
from .api import draw, repr_svg, show_graph, svg
from .plan import Plan, plan

ext.register("draw", draw)
ext.register("svg", repr_svg)

__all__ = ["Plan", "draw", "plan", "show_graph", "svg"]
