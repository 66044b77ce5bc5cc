"""A :class:`~lens.draw.layout.Plan` as graphviz DOT source (via the ``graphviz`` package)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import style
from .layout import Cluster, Node, Plan

if TYPE_CHECKING:
    from ..tracing.traces import Trace

RANKDIR = {"bottomup": "BT", "topdown": "TB", "leftright": "LR"}

# Layout settings for graphs too large for dot's default effort: fewer network-simplex
# and crossing-minimisation iterations, straight edges. Measured in lens/draw/render.py.
FAST_DOT = {"nslimit": "2", "nslimit1": "2", "mclimit": "0.2", "searchsize": "10",
            "remincross": "false", "splines": "line"}


def source(trace: Trace, p: Plan, direction: str = "bottomup", fast: bool = False,
           clusters: bool = True, node_colors: Mapping[str, str] | None = None) -> str:
    """DOT source for the plan: nodes in their module clusters, edges, the header.

    ``fast``: reduced layout effort (``FAST_DOT``); ``clusters=False`` leaves out the module
    boxes (each node still names its module), which dot lays out far faster.
    ``node_colors``: fill colours by node key (op label), overriding the legend (used to
    colour a graph by some quantity, e.g. a bundle's difference from its baseline).
    """
    graphviz = _graphviz()
    g = graphviz.Digraph(name=trace.model_name or "model")
    attrs: dict[str, str] = {
        "rankdir": RANKDIR[direction],
        "label": style.header(trace, len(p.nodes), p.mode, p.depth,
                              boxes_left_out=bool(p.clusters) and not clusters),
        "labelloc": "t", "labeljust": "l", "fontsize": "12", "id": "lens-graph",
    }
    if fast:
        attrs.update(FAST_DOT)
    g.attr("graph", **attrs)
    g.attr("node", fontsize="10", penwidth="1.2", margin="0.08,0.04")
    g.attr("edge", fontsize="9", arrowsize="0.7")

    rolled = p.mode == "rolled"
    members: dict[str | None, list[Node]] = {}
    for node in p.nodes:
        inner = node.clusters[-1] if node.clusters and clusters else None
        members.setdefault(inner, []).append(node)
    children: dict[str | None, list[Cluster]] = {}
    for c in p.clusters.values() if clusters else ():
        children.setdefault(c.parent, []).append(c)

    def emit(graph: Any, key: str | None) -> None:
        """Nodes directly in cluster ``key`` (None: top level), then its sub-clusters."""
        for node in members.get(key, []):
            attrs = style.node_attrs(node, rolled, clusters)
            if node_colors and node.key in node_colors:
                attrs["fillcolor"] = node_colors[node.key]
            graph.node(node.name, **attrs)
        for c in children.get(key, []):
            with graph.subgraph(name=f"cluster_{number[c.key]}") as sub:
                sub.attr(label=style.cluster_label(c), labeljust="l", style="rounded",
                         color=style.CLUSTER_LINE, id=f"module:{c.key}",
                         tooltip=f"{c.key} ({c.class_name})")
                emit(sub, c.key)

    number = {key: i for i, key in enumerate(p.clusters)}
    emit(g, None)
    for edge in p.edges:
        g.edge(edge.src.name, edge.dst.name, **style.edge_attrs(edge, rolled))
    return str(g.source)


def _graphviz() -> Any:
    try:
        import graphviz
    except ImportError as e:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(
            "Drawing a trace needs the `graphviz` Python package, which is not installed "
            f"({e}). Install it with `pip install graphviz` (it is a dependency of lens: "
            "`pip install lens` brings it), plus the Graphviz program itself "
            "(`apt-get install graphviz` / `brew install graphviz`).") from e
    return graphviz

