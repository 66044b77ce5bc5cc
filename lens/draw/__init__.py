"""Graphviz drawings of traces: ``trace.draw(...)``, Jupyter's SVG, ``tl.show_graph``.

``Trace.draw`` and ``Trace._repr_svg_`` call :func:`draw` and :func:`repr_svg` (importing
them when called). The visual legend is described in :mod:`lens.draw.style`.
"""

from __future__ import annotations

from .api import draw, repr_svg, show_graph, svg
from .layout import Plan, plan

__all__ = ["Plan", "draw", "plan", "repr_svg", "show_graph", "svg"]
