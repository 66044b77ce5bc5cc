"""Notebook display: HTML for a trace (its summary table and, when small enough and
Graphviz is installed, its graph as inline SVG). Everything is escaped."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from . import fmt

if TYPE_CHECKING:
    from .traces import Trace


def table(rows: Sequence[Sequence[object]], caption: str | None = None) -> str:
    """An HTML table; the first row is the header."""
    head, *body = rows
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    th = "".join(f"<th>{escape(str(c))}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>"
                  for r in body)
    return f"<table>{cap}<thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def lines(texts: Sequence[str]) -> str:
    return "".join(f"<div>{escape(t)}</div>" for t in texts)


def trace_html(trace: Trace, svg: str | None) -> str:
    """The summary (table and totals), then the graph's SVG if there is one."""
    rows, tail = fmt.summary_rows(trace)
    parts = [f"<div class='lens-trace'><b>{escape(tail[0])}</b>", table(rows), lines(tail[1:])]
    if svg:
        start = svg.find("<svg")  # drop the XML prolog and doctype: not valid inside HTML
        parts.append(f"<div class='lens-graph'>{svg[start:] if start >= 0 else ''}</div>")
    parts.append("</div>")
    return "".join(parts)
