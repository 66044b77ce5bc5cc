"""``trace.draw(...)``, the SVG for Jupyter, and ``tl.show_graph(model, x)``."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import DrawError
from . import render
from .dot import RANKDIR, source
from .layout import Plan, plan

if TYPE_CHECKING:
    from ..tracing.traces import Trace

Format = Literal["svg", "pdf", "png", "dot"]
FORMATS: tuple[str, ...] = ("svg", "pdf", "png", "dot")
MODES = ("unrolled", "rolled")


def draw(trace: Trace, path: str | Path | None = None, *, vis_mode: str = "unrolled",
         depth: int | None = None, format: str | None = None,  # noqa: A002 - graphviz's name
         direction: str = "bottomup", timeout: float = 60.0,
         layout: str | None = None, node_colors: Mapping[str, str] | None = None) -> str:
    """Draw the graph of ``trace`` with Graphviz and return the path written.

    - ``path``: where to write. Default: ``<ModelClass>.<format>`` in the current
      directory. A path without a known suffix gets ``.<format>`` appended; a path ending
      in ``.svg``/``.pdf``/``.png``/``.dot`` sets the format when ``format`` is not given.
    - ``vis_mode``: ``'unrolled'`` (one node per op: every pass of a loop separately) or
      ``'rolled'`` (one node per layer, ``(xN)`` for N passes; edges that exist on some
      passes only are marked ``in k``/``out k-m``).
    - ``depth``: fold every module call nested ``depth`` levels deep (1 = top-level
      modules) into a single node; None shows every op.
    - ``format``: ``'svg'`` (default), ``'pdf'``, ``'png'``, or ``'dot'`` (the Graphviz
      source itself; needs no Graphviz program).
    - ``direction``: ``'bottomup'`` (inputs at the bottom), ``'topdown'``, ``'leftright'``.
    - ``timeout``: seconds Graphviz may run in all. Graphs above 2,000 nodes are drawn
      without module boxes, above 4,000 with ``sfdp`` (a fast force-directed layout), and
      a layout that runs out of its share of the time gives way to a faster one (see
      ``lens.draw.render``); past the limit a :class:`~lens.DrawError` says how to draw
      less (``vis_mode='rolled'``, ``depth=1``).
    - ``layout``: force a Graphviz program (``'dot'``, ``'sfdp'``, ``'neato'``...).
    - ``node_colors``: fill colours by op label, overriding the legend's.

    Needs the Graphviz programs (``apt-get install graphviz`` / ``brew install
    graphviz``); without them a :class:`~lens.MissingDependencyError` says so.
    """
    fmt, out = _target(trace, path, format)
    _check(vis_mode, depth, direction, timeout)
    p = plan(trace, vis_mode, depth)  # type: ignore[arg-type]
    layouts = render.layouts_for(len(p.nodes), layout)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "dot":
        out.write_text(_writer(trace, p, direction, node_colors)(render.FULL),
                       encoding="utf-8")
    else:
        render.run(_writer(trace, p, direction, node_colors), fmt, layouts, timeout,
                   out_path=str(out))
    return str(out)


def svg(trace: Trace, **options: Any) -> str:
    """The drawing as SVG text (what Jupyter shows for a trace: ``Trace._repr_svg_``)."""
    vis_mode = options.pop("vis_mode", "unrolled")
    depth = options.pop("depth", None)
    direction = options.pop("direction", "bottomup")
    timeout = options.pop("timeout", 60.0)
    layout = options.pop("layout", None)
    if options:
        raise DrawError(f"svg() got unknown options {sorted(options)}; it takes vis_mode, "
                        "depth, direction, timeout and layout.")
    _check(vis_mode, depth, direction, timeout)
    p = plan(trace, vis_mode, depth)
    layouts = render.layouts_for(len(p.nodes), layout)
    return render.run(_writer(trace, p, direction), "svg", layouts, timeout).decode("utf-8")


def repr_svg(trace: Trace) -> str | None:
    """Jupyter's picture of a trace (``Trace._repr_svg_``), or None (Jupyter then shows the
    text) when Graphviz is missing, the graph has more than ``render.DOT_MAX`` nodes, or
    the layout takes over 10 s: displaying a trace should never stall a notebook. Call
    ``trace.draw(...)`` for those."""
    if shutil.which("dot") is None or len(trace.ops) > render.DOT_MAX:
        return None
    try:
        return svg(trace, timeout=10.0)
    except DrawError:
        return None


def show_graph(model: Any, *args: Any, input_kwargs: dict[str, Any] | None = None,
               **draw_options: Any) -> str:
    """Trace ``model(*args, **input_kwargs)`` without keeping activations and draw it.

    Takes the options of :meth:`Trace.draw` (``path``, ``vis_mode``, ``depth``,
    ``format``, ``direction``...) and returns the path written.
    """
    from ..tracing import trace

    result = trace(model, *args, input_kwargs=input_kwargs, save=False)
    path = draw_options.pop("path", None)
    return draw(result, path, **draw_options)


def _writer(trace: Trace, p: Plan, direction: str,
            node_colors: Mapping[str, str] | None = None) -> Callable[[render.Layout], str]:
    def write(layout: render.Layout) -> str:
        return source(trace, p, direction, fast=layout.fast, clusters=layout.clusters,
                      node_colors=node_colors)

    return write


def _target(trace: Trace, path: str | Path | None, format: str | None  # noqa: A002
            ) -> tuple[str, Path]:
    if format is not None and format not in FORMATS:
        raise DrawError(f"draw(format={format!r}): the formats are {', '.join(FORMATS)}.")
    if path is None:
        fmt = format or "svg"
        return fmt, Path.cwd() / f"{trace.model_name or 'model'}.{fmt}"
    out = Path(path).expanduser()
    suffix = out.suffix[1:].lower()
    suffix = "dot" if suffix == "gv" else suffix
    if suffix in FORMATS:
        if format is not None and format != suffix:
            raise DrawError(
                f"draw(path={str(path)!r}, format={format!r}): the path's suffix says "
                f"{suffix!r}. Give a matching suffix, or leave format out.")
        return suffix, out
    fmt = format or "svg"
    return fmt, out.with_name(out.name + "." + fmt)


def _check(vis_mode: str, depth: int | None, direction: str, timeout: float) -> None:
    if vis_mode not in MODES:
        raise DrawError(f"draw(vis_mode={vis_mode!r}): use 'unrolled' (one node per op) or "
                        "'rolled' (one node per layer).")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int)
                              or depth < 1):
        raise DrawError(f"draw(depth={depth!r}): give an int >= 1 (1 folds each top-level "
                        "module into one node), or None to show every op.")
    if direction not in RANKDIR:
        raise DrawError(f"draw(direction={direction!r}): use one of "
                        f"{', '.join(map(repr, RANKDIR))}.")
    if not timeout > 0:
        raise DrawError(f"draw(timeout={timeout!r}): give a number of seconds > 0.")
