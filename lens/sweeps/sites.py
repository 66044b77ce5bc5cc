"""Sweep sites in the user's terms: which ops a ``sites=`` selector finds, each named as
the user named it (a module address, a facet of a module call, a label), with the block
index it sits in and, for facets, how to edit one head of it.

    'transformer.h.0'                        -> site 'transformer.h.0', layer 0
    tl.facet('z', module='transformer.h.1.attn', head='each')
                                             -> site 'transformer.h.1.attn.z', layer 1,
                                                one cell per head
    tl.func('relu')                          -> site 'relu_2_5' (the op's label)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InterventionError
from ..facets import Facet, FacetGroup, Owner
from ..facets._registry import Carrier
from ..facets.selector import facet_nodes
from ..selectors import And, Label, Module, Not, Or, Selector
from ..tracing import Op, Trace


@dataclass(frozen=True, eq=False)
class SweepSite:
    """One named site: the op edited (for a facet, its carrier), and the facet if any."""

    name: str
    op: Op
    layer: int | None
    facet: tuple[Owner, str, FacetGroup, Carrier] | None = None
    heads: tuple[int | None, ...] = (None,)
    head_dim: int | None = None

    def key(self) -> tuple[str, str]:
        return (self.name, self.op.label)


def find_sites(trace: Trace, sel: Selector, ops: list[Op]) -> list[SweepSite]:
    """The sites of ``ops`` (the ops ``sel`` matched in ``trace``), in op order; an op
    matched through facets gives one site per facet it carries."""
    nodes = facet_nodes(sel)
    sites: list[SweepSite] = []
    for op in ops:
        named = _facet_sites(trace, op, nodes)
        if not named or _matches_without_facets(sel, op):
            named.insert(0, SweepSite(user_name(sel, op), op,
                                      layer_of(trace, _address_of(sel, op))))
        sites.extend(named)
    seen: set[tuple[str, str]] = set()
    return [s for s in sites if not (s.key() in seen or seen.add(s.key()))]  # type: ignore[func-returns-value]


def _facet_sites(trace: Trace, op: Op, nodes: list[Facet]) -> list[SweepSite]:
    found = []
    for node in nodes:
        for owner, group, carrier in node.sites(trace, op.call_index):
            dim = group.head_dim(node.name)
            heads = _heads(node, owner, group, trace, dim)
            found.append(SweepSite(facet_name(owner, node.name), op,
                                   layer_of(trace, owner.address),
                                   (owner, node.name, group, carrier), heads, dim))
    return found


def _heads(node: Facet, owner: Owner, group: FacetGroup, trace: Trace, dim: int | None
           ) -> tuple[int | None, ...]:
    if node.head is None:
        return (None,)
    if dim is None:
        raise InterventionError(
            f"{node!r}: facet {node.name!r} of {owner.name()} ({group.describe()}) has no "
            "head dimension; leave out head=.")
    count = int(group.value(trace, node.name).shape[dim])
    if node.head == "each":
        return tuple(range(count))
    heads: tuple[int, ...] = ((node.head,) if isinstance(node.head, int)
                              else tuple(int(h) for h in node.head))
    for h in heads:
        if not -count <= h < count:
            raise InterventionError(
                f"{node!r}: head {h} is out of range for {owner.name()}, which has "
                f"{count} heads; use heads in 0..{count - 1} or head='each'.")
    return tuple(h % count for h in heads)


def _matches_without_facets(sel: Selector, op: Op) -> bool:
    """Whether ``sel`` matches ``op`` with every facet inside it read as no match."""
    if isinstance(sel, Facet):
        return False
    parts = sel.operands
    if not parts:
        return bool(sel(op))
    if isinstance(sel, And):
        return all(_matches_without_facets(p, op) for p in parts)
    if isinstance(sel, Or):
        return any(_matches_without_facets(p, op) for p in parts)
    return bool(sel(op))  # ~ (facets are refused under it), graph selectors


def facet_name(owner: Owner, name: str) -> str:
    """``'transformer.h.0.attn.z'``; a module's later call: ``'fc:2.h'``."""
    if not owner.address:
        return name if owner.call_num == 1 else f":{owner.call_num}.{name}"
    where = owner.address if owner.call_num == 1 else owner.key
    return f"{where}.{name}"


def user_name(sel: Selector, op: Op) -> str:
    """The first name the user gave that matches ``op`` (a module address, a label),
    else the op's label."""
    for part in _named_parts(sel):
        if isinstance(part, Module) and part(op):
            return _module_name(part.address, op)
        if isinstance(part, Label):
            for name in part.labels:
                if name in op.labels:
                    return name
    return str(op.label)


def _address_of(sel: Selector, op: Op) -> str:
    for part in _named_parts(sel):
        if isinstance(part, Module) and part(op):
            return part.address.partition(":")[0]
    ctx = op.record.module_ctx
    return ctx[-1].address if ctx else ""


def _named_parts(sel: Selector) -> list[Selector]:
    """Module and label selectors in ``sel``, outside any ``~``, in the order written."""
    found: list[Selector] = []

    def walk(s: Selector) -> None:
        if isinstance(s, Not):
            return
        if isinstance(s, (Module, Label)):
            found.append(s)
        for p in s.operands:
            walk(p)

    walk(sel)
    return found


def _module_name(address: str, op: Op) -> str:
    """``address``, with the call number when the module ran more than once."""
    if ":" in address:
        return address
    calls = [a for a in op.module_outputs if a.startswith(address + ":")]
    modules = op.trace.modules
    if calls and address in modules and modules[address].num_calls > 1:
        return str(calls[0])
    return address


def layer_of(trace: Trace, address: str) -> int | None:
    """The index of the repeated block ``address`` lies in: the first numbered part of it
    whose siblings (other numbered children of its parent) include one of the same
    class, as in ``transformer.h.3.mlp`` -> 3. None outside any repeated block."""
    parts = address.split(".") if address else []
    modules = trace.modules
    for i, part in enumerate(parts):
        if not part.isdigit():
            continue
        here, parent = ".".join(parts[:i + 1]), ".".join(parts[:i])
        if here not in modules or parent not in modules:
            continue
        rec, up = modules[here], modules[parent]
        same = [c for c in up.children if c != here and c.rpartition(".")[2].isdigit()
                and _class(modules, c) == rec.class_name]
        if same:
            return int(part)
    return None


def _class(modules: Any, address: str) -> str | None:
    return str(modules[address].class_name) if address in modules else None
