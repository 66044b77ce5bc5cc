"""What a drawing shows, independent of graphviz: nodes, edges and module clusters.

A *node* stands for a group of ops:

- unrolled view: one op;
- rolled view: every pass of one layer (``op.layer``);
- with ``depth=N``: every op run inside one module call at nesting level ``N`` (unrolled),
  or inside every call of one module at that level (rolled), is folded into one node.

A *cluster* is a module call (unrolled) or a module (rolled) drawn as a box around the
nodes it ran. A bottom-level module (no submodules) that holds a single node gets no box
of its own: its node is drawn as a box and names the module instead (the legend's rule).

Every node also knows the "pass" of each of its ops (the layer pass, or the module call
number for a folded module), so the rolled view can mark edges that exist on some passes
only (``in 2-3``, ``out 1-2``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..capture.records import ModuleCallRecord

if TYPE_CHECKING:
    from ..tracing.modules import Modules
    from ..tracing.op import Op
    from ..tracing.traces import Trace

VisMode = Literal["unrolled", "rolled"]


@dataclass
class Node:
    """One drawn node: a group of ops (see the module docstring)."""

    name: str  # graphviz node id ("n0", "n1", ...)
    key: str  # what it is called: op label, layer label, module call key or address
    ops: list[Op]
    module: str | None = None  # set for a folded module: its address
    module_class: str | None = None
    title: str = ""  # folded module: "features.6", or the call "fc:2" (unrolled, >1 call)
    clusters: tuple[str, ...] = ()  # keys of the clusters it sits in, outermost first
    bottom_level: bool = False  # an op (not a folded module) run in a leaf module
    boxed: bool = False  # its innermost module has a box of its own around it
    passes: dict[int, int] = field(default_factory=dict)  # call_index -> pass number

    @property
    def is_module(self) -> bool:
        return self.module is not None

    @property
    def pass_set(self) -> frozenset[int]:
        return frozenset(self.passes.values())

    @property
    def first(self) -> Op:
        return self.ops[0]


@dataclass
class Edge:
    """Every parent -> child op pair between two nodes."""

    src: Node
    dst: Node
    pairs: list[tuple[Op, Op]] = field(default_factory=list)


@dataclass
class Cluster:
    """A module call (unrolled) or module (rolled) drawn as a box."""

    key: str  # "features.6:1" (unrolled) or "features.6" (rolled)
    title: str  # "features.6", or the call "fc:2" for a module called several times
    address: str
    class_name: str
    calls: int  # how many calls of this module the box stands for
    parent: str | None  # key of the enclosing cluster
    bottom_level: bool


@dataclass
class Plan:
    mode: VisMode
    depth: int | None
    nodes: list[Node]
    edges: list[Edge]
    clusters: dict[str, Cluster]


def plan(trace: Trace, mode: VisMode = "unrolled", depth: int | None = None) -> Plan:
    """Group the ops of ``trace`` into nodes, edges and clusters (see the module docstring)."""
    rolled = mode == "rolled"
    mods = trace.modules
    nodes: dict[tuple[bool, str], Node] = {}  # (folded module?, key) -> node
    node_of: dict[int, Node] = {}  # call_index -> node
    chains: dict[tuple[bool, str], tuple[ModuleCallRecord, ...]] = {}
    for op in trace.ops:
        ctx = op.module_ctx
        folded = depth is not None and len(ctx) >= depth
        if folded:
            assert depth is not None
            rec = ctx[depth - 1]
            key = rec.address if rolled else rec.key
            chain = ctx[: depth - 1]
            pass_num = rec.call_num
        else:
            key = op.layer.label if rolled else op.label
            chain = ctx
            pass_num = op.pass_num if rolled else 1
        node = nodes.get((folded, key))
        if node is None:
            node = Node(name=f"n{len(nodes)}", key=key, ops=[])
            if folded:
                node.module = rec.address
                node.module_class = rec.class_name
                node.title = _title(rec, rolled, mods)
            nodes[(folded, key)] = node
            chains[(folded, key)] = chain
        node.ops.append(op)
        node.passes[op.call_index] = pass_num
        node_of[op.call_index] = node

    clusters: dict[str, Cluster] = {}
    for node_key, chain in chains.items():
        nodes[node_key].clusters = _cluster_keys(chain, rolled, clusters, trace)
    _drop_single_node_leaves(list(nodes.values()), clusters)
    # A folded module that is a single bottom-level op is drawn as that op.
    for node in nodes.values():
        if node.module is not None and len(node.ops) == 1 and _is_leaf(mods, node.module):
            node.module = node.module_class = None
            node.key = node.first.layer.label if rolled else node.first.label
        inner = node.first.module
        node.bottom_level = not node.is_module and inner is not None and _is_leaf(mods, inner)
        node.boxed = bool(node.clusters) and clusters[node.clusters[-1]].address == inner
    return Plan(mode, depth, list(nodes.values()), _edges(trace.ops, node_of, trace),
                clusters)


def _cluster_keys(chain: Sequence[ModuleCallRecord], rolled: bool,
                  clusters: dict[str, Cluster], trace: Trace) -> tuple[str, ...]:
    keys: list[str] = []
    parent: str | None = None
    mods = trace.modules
    for rec in chain:
        key = rec.address if rolled else rec.key
        if key not in clusters:
            n = len(mods[rec.address].calls) if rec.address in mods else 1
            clusters[key] = Cluster(key, _title(rec, rolled, mods), rec.address,
                                    rec.class_name, n if rolled else 1, parent,
                                    _is_leaf(mods, rec.address))
        keys.append(key)
        parent = key
    return tuple(keys)


def _title(rec: ModuleCallRecord, rolled: bool, mods: Modules) -> str:
    """The module's address, or its call (``fc:2``) when unrolled and called repeatedly."""
    calls = len(mods[rec.address].calls) if rec.address in mods else 1
    return rec.key if calls > 1 and not rolled else rec.address


def _is_leaf(mods: Modules, address: str) -> bool:
    """A bottom-level module: one with no submodules."""
    return address not in mods or not mods[address].children


def _drop_single_node_leaves(nodes: list[Node], clusters: dict[str, Cluster]) -> None:
    """A bottom-level module box around exactly one node is dropped (the node is a box)."""
    members: dict[str, int] = {}
    for node in nodes:
        for key in node.clusters:
            members[key] = members.get(key, 0) + 1
    gone = {k for k, c in clusters.items() if c.bottom_level and members.get(k, 0) == 1}
    if not gone:
        return
    for node in nodes:
        if node.clusters and node.clusters[-1] in gone:
            node.clusters = node.clusters[:-1]
    for key in gone:
        del clusters[key]


def _edges(ops: Sequence[Op], node_of: dict[int, Node], trace: Trace) -> list[Edge]:
    edges: dict[tuple[str, str], Edge] = {}
    by_call = trace.records
    for op in ops:
        dst = node_of[op.call_index]
        for p in dict.fromkeys(op.parent_idx):
            src = node_of.get(p)
            if src is None or src is dst:
                continue
            edge = edges.get((src.name, dst.name))
            if edge is None:
                edge = edges[(src.name, dst.name)] = Edge(src, dst)
            edge.pairs.append((by_call[p], op))
    return list(edges.values())


def pass_ranges(passes: Sequence[int] | frozenset[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``'1-3,5'``."""
    runs: list[list[int]] = []
    for n in sorted(set(passes)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
