"""Notebook display of a sweep result: the pivot table and the heatmap as an inline PNG
(drawn on its own figure via lens._optional.new_figure: pyplot state is untouched)."""

from __future__ import annotations

import base64
import io
from html import escape
from typing import TYPE_CHECKING

from ..errors import MissingDependencyError

if TYPE_CHECKING:
    from .result import SweepResult


def sweep_html(result: SweepResult) -> str:
    spec = result.spec
    head = (f"<b>{escape(str(spec.get('kind')))} sweep</b>: metric "
            f"{escape(str(spec.get('metric')))}, {len(result)} rows")
    try:
        table = result.pivot()
    except MissingDependencyError:
        return f"<div class='lens-sweep'>{head} (install pandas for the table)</div>"
    parts = [f"<div class='lens-sweep'>{head}", table.to_html(float_format=_fmt)]
    try:
        fig = result.heatmap()
    except MissingDependencyError:
        fig = None
    if fig is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        parts.append(f"<img alt='heatmap' src='data:image/png;base64,{data}'/>")
    parts.append("</div>")
    return "".join(parts)


def _fmt(v: float) -> str:
    return f"{v:.4g}"
