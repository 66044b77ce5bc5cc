"""The visual legend: colours, shapes and the text of nodes, edges and the header.

The legend (TorchLens' figure legend, our contract):

- model inputs green, model outputs red;
- ops that use trainable parameters have a grey background;
- buffers (tensors stored with the model, not trainable) light grey;
- ops inside a bottom-level module (one with no submodules) are boxes, others ovals;
- internally generated tensors (``torch.randn``, ``torch.zeros``... inside ``forward``)
  have a dashed outline;
- the single boolean that decides a Python ``if`` is yellow, and the edge where the
  computation of that test branches off the main graph is marked with a bold "IF";
- edges into a non-commutative op with several tensor parents carry the argument
  position (``arg 0``, ``arg 1``, or the keyword name);
- modules are boxes around their ops, labelled ``@address`` and the module class;
- the rolled view shows each layer once with ``(xN)`` passes, and marks edges that exist
  on some passes only (``in 2-3`` at the head, ``out 1-2`` at the tail).
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import TYPE_CHECKING, Any

from ..capture.records import BUFFER, CONSTANT, INPUT, OP, OUTPUT, Ref
from ..tracing import fmt
from .layout import Cluster, Edge, Node, pass_ranges

if TYPE_CHECKING:
    from ..tracing.op import Op
    from ..tracing.traces import Trace

INPUT_COLOR = "#98FB98"  # pale green
OUTPUT_COLOR = "#FF9999"  # light red
PARAMS_COLOR = "#C8C8C8"  # grey
BUFFER_COLOR = "#EDEDED"  # light grey
BUFFER_LINE = "#888888"
IF_COLOR = "#FFFF66"  # yellow: the boolean deciding an ``if``
PLAIN_COLOR = "white"
CLUSTER_LINE = "#555555"

# Op types whose tensor arguments may be swapped without changing the result: their
# edges carry no argument position.
COMMUTATIVE = frozenset({
    "add", "mul", "eq", "ne", "maximum", "minimum", "fmax", "fmin", "hypot", "and", "or",
    "xor", "logicaland", "logicalor", "logicalxor", "bitwiseand", "bitwiseor",
    "bitwisexor",
})


def fill_color(node: Node) -> str:
    """Legend colour of a node (first match wins: input, output, if-test, buffer, params)."""
    ops = node.ops
    if any(op.kind == INPUT for op in ops):
        return INPUT_COLOR
    if any(op.kind == OUTPUT for op in ops):
        return OUTPUT_COLOR
    if any(getattr(op, "is_terminal_bool", False) for op in ops):
        return IF_COLOR
    if all(op.kind == BUFFER for op in ops):
        return BUFFER_COLOR
    if any(op.params for op in ops):
        return PARAMS_COLOR
    return PLAIN_COLOR


def node_attrs(node: Node, rolled: bool, boxes: bool = True) -> dict[str, str]:
    """Graphviz attributes of a node (``boxes``: module boxes are drawn)."""
    shape = "box3d" if node.is_module else "box" if node.bottom_level else "ellipse"
    styles = ["filled"]
    if all(_generated(op) for op in node.ops):
        styles.append("dashed")
    attrs = {"shape": shape, "style": ",".join(styles), "fillcolor": fill_color(node),
             "label": node_label(node, rolled, boxes), "id": node.key,
             "tooltip": _tooltip(node)}
    if all(op.kind == BUFFER for op in node.ops):
        attrs["color"] = BUFFER_LINE
    return attrs


def _generated(op: Op) -> bool:
    """Made inside the model from no tensor (``torch.randn``...), or a constant tensor."""
    return op.kind == CONSTANT or (op.kind == OP and not op.parent_idx and not op.params)


def node_label(node: Node, rolled: bool, boxes: bool = True) -> str:
    """HTML-like label: name (xN), output shape and size, parameter shapes, module."""
    if node.is_module:
        return _module_label(node)
    op = node.first
    n = len(node.ops)
    lines = [f"<b>{escape(node.key)}</b>" + (f" (x{n})" if n > 1 else "")]
    lines.append(escape(_shape_size(op)))
    if op.params:
        shapes = ", ".join(shape_text(s) for _, s in op.params_used)
        lines.append(escape(f"params: {shapes}"))
    if op.kind == BUFFER and op.address:
        lines.append(escape(f"@{op.address}"))
    elif op.module is not None and (not boxes or node.bottom_level and not node.boxed):
        lines.append(escape("@" + _module_text(op, rolled)))
    return "<" + "<br/>".join(lines) + ">"


def _module_text(op: Op, rolled: bool) -> str:
    """``fc`` (rolled, or a module called once) or the call, ``fc:2`` (unrolled)."""
    assert op.module is not None
    mods = op.trace.modules
    calls = len(mods[op.module].calls) if op.module in mods else 1
    return op.module_call or op.module if calls > 1 and not rolled else op.module


def _module_label(node: Node) -> str:
    ops = node.ops
    calls = len(node.pass_set)
    head = f"<b>{escape('@' + node.title)}</b>" + (f" (x{calls})" if calls > 1 else "")
    lines = [head, escape(node.module_class or "")]
    outs = [op for op in ops if any(c.address == node.module for c in op.output_of)]
    if outs:
        lines.append(escape(_shape_size(outs[-1])))
    lines.append(f"{len(ops)} ops")
    names = dict.fromkeys(n for op in ops for n in op.params)
    meta = ops[0].trace.param_meta
    if names:
        lines.append(f"{fmt.count(sum(meta[n][1] for n in names if n in meta))} params")
    return "<" + "<br/>".join(lines) + ">"


def _shape_size(op: Op) -> str:
    return f"{shape_text(op.shape)} ({fmt.nbytes(op.nbytes)})"


def shape_text(shape: Iterable[int]) -> str:
    """``(5, 5)`` -> ``5x5``; a 1-D shape keeps a leading ``x`` (``x5``), as in the legend."""
    dims = tuple(shape)
    if not dims:
        return "scalar"
    text = "x".join(str(d) for d in dims)
    return "x" + text if len(dims) == 1 else text


def _tooltip(node: Node) -> str:
    op = node.first
    if node.is_module:
        return f"{node.key} ({node.module_class}): {len(node.ops)} ops"
    return f"{node.key}: {op.func_name}"


def cluster_label(cluster: Cluster) -> str:
    calls = f" (x{cluster.calls})" if cluster.calls > 1 else ""
    return (f"<<b>{escape('@' + cluster.title)}</b>{calls}<br/>"
            f"{escape(cluster.class_name)}>")


# ----------------------------------------------------------------------------- edges
def edge_attrs(edge: Edge, rolled: bool) -> dict[str, str]:
    """Argument positions, the IF marker, and (rolled) the passes an edge exists on."""
    parts: list[str] = []
    if any(_starts_if(p, c) for p, c in edge.pairs):
        parts.append("<b>IF</b>")
    args = _arg_labels(edge)
    if args:
        parts.append(escape(args))
    attrs: dict[str, str] = {}
    if parts:
        attrs["label"] = "<" + " ".join(parts) + ">"
    if rolled:
        heads = frozenset(edge.dst.passes[c.call_index] for _, c in edge.pairs)
        tails = frozenset(edge.src.passes[p.call_index] for p, _ in edge.pairs)
        if heads != edge.dst.pass_set:
            attrs["headlabel"] = f"in {pass_ranges(heads)}"
        if tails != edge.src.pass_set:
            attrs["taillabel"] = f"out {pass_ranges(tails)}"
    if all(_generated(p) for p, _ in edge.pairs):
        attrs["style"] = "dashed"
    return attrs


def _starts_if(parent: Op, child: Op) -> bool:
    return bool(getattr(child, "in_cond_branch", False)) and not getattr(
        parent, "in_cond_branch", False)


def _arg_labels(edge: Edge) -> str:
    if edge.dst.is_module:
        return ""
    found: dict[str, None] = {}
    for parent, child in edge.pairs:
        if _ordered(child):
            for pos in arg_positions(child, parent.call_index):
                found[pos] = None
    if not found:
        return ""
    return "arg " + ", ".join(found)


def _ordered(op: Op) -> bool:
    """A non-commutative op with several distinct tensor parents: argument order matters."""
    if len(set(op.parent_idx)) < 2:
        return False
    return op.type not in COMMUTATIVE or "alpha" in op.kwargs


def arg_positions(op: Op, parent: int) -> list[str]:
    """Where ``parent`` (a call index) appears in ``op``'s arguments: ``0``, ``0[1]``
    (second item of a list argument, e.g. ``torch.cat``), or a keyword name."""
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Ref):
            if value.op == parent:
                found.append(path)
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    for i, a in enumerate(op.args):
        walk(a, str(i))
    for k, v in op.kwargs.items():
        walk(v, k)
    return found


# ----------------------------------------------------------------------------- header
def header(trace: Trace, shown: int, mode: str, depth: int | None,
           boxes_left_out: bool = False) -> str:
    """Graph label: model class, op count and total size, parameter count and size."""
    param_bytes = sum(numel * dtype.itemsize for _, numel, dtype, _ in
                      trace.param_meta.values())
    lines = [f"<b>{escape(trace.model_name)}</b>",
             f"{len(trace.ops)} tensors total ({fmt.nbytes(trace.total_nbytes)})",
             f"{trace.num_params:,} params total ({fmt.nbytes(param_bytes)})"]
    view = [mode + " view"] if mode == "rolled" else []
    if depth is not None:
        view.append(f"modules at depth {depth} folded")
    if view or shown != len(trace.ops):
        lines.append(escape(", ".join(view + [f"{shown} nodes"])))
    if boxes_left_out:
        lines.append(escape("large graph: module boxes left out (nodes name their module); "
                            "draw(depth=1) or vis_mode='rolled' shows less"))
    return "<" + '<br align="left"/>'.join(lines) + '<br align="left"/>>'

