"""Reading the SVG graphviz writes: nodes, edges and module boxes, as plain data."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

NS = "{http://www.w3.org/2000/svg}"
SHAPES = ("ellipse", "polygon", "path")


@dataclass
class SvgNode:
    id: str
    name: str  # graphviz node name (n0, n1...)
    shape: str  # 'ellipse' or 'polygon' (a box)
    fill: str
    stroke: str
    dashed: bool
    texts: list[str]
    x: float
    y: float
    polylines: int  # box3d (a folded module) draws its 3-D edges as polylines

    @property
    def text(self) -> str:
        return "\n".join(self.texts)


@dataclass
class SvgEdge:
    src: str  # node ids (op labels, layer labels, module keys)
    dst: str
    texts: list[str]
    dashed: bool


@dataclass
class Svg:
    root: ET.Element
    nodes: dict[str, SvgNode] = field(default_factory=dict)
    edges: list[SvgEdge] = field(default_factory=list)
    clusters: dict[str, list[str]] = field(default_factory=dict)  # id -> texts
    graph_texts: list[str] = field(default_factory=list)

    def edge(self, src: str, dst: str) -> SvgEdge:
        hits = [e for e in self.edges if e.src == src and e.dst == dst]
        assert len(hits) == 1, (src, dst, [(e.src, e.dst) for e in self.edges])
        return hits[0]


def _texts(g: ET.Element) -> list[str]:
    return [t.text or "" for t in g.iter(NS + "text")]


def _xy(el: ET.Element) -> tuple[float, float]:
    if el.tag == NS + "ellipse":
        return float(el.get("cx", 0)), float(el.get("cy", 0))
    nums = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", el.get("points") or el.get("d") or "")]
    xs, ys = nums[0::2], nums[1::2]
    return sum(xs) / len(xs), sum(ys) / len(ys)


def parse(source: str | Path) -> Svg:
    text = Path(source).read_text() if isinstance(source, Path) else source
    root = ET.fromstring(text)
    out = Svg(root)
    names: dict[str, str] = {}
    graph = next(g for g in root.iter(NS + "g") if g.get("class") == "graph")
    out.graph_texts = [t.text or "" for t in graph.findall(NS + "text")]
    for g in root.iter(NS + "g"):
        cls = g.get("class")
        if cls == "node":
            shapes = [el for el in g.iter() if el.tag in {NS + s for s in SHAPES}]
            first = shapes[0]
            x, y = _xy(first)
            name = g.findtext(NS + "title") or ""
            node = SvgNode(
                id=g.get("id") or "", name=name, shape=first.tag[len(NS):],
                fill=(first.get("fill") or "").lower(), stroke=(first.get("stroke") or "").lower(),
                dashed=first.get("stroke-dasharray") is not None, texts=_texts(g), x=x, y=y,
                polylines=sum(el.tag == NS + "polyline" for el in g.iter()))
            out.nodes[node.id] = node
            names[name] = node.id
        elif cls == "cluster":
            out.clusters[g.get("id") or ""] = _texts(g)
    for g in root.iter(NS + "g"):
        if g.get("class") == "edge":
            src, dst = (g.findtext(NS + "title") or "").split("->")
            path = g.find(NS + "path")
            dashed = path is not None and path.get("stroke-dasharray") is not None
            out.edges.append(SvgEdge(names[src], names[dst], _texts(g), dashed))
    return out
