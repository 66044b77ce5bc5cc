"""The worker side of a sweep: traces the inputs once, then computes rows for cells.

A batch of cells that share a site is computed by replaying only that site's downstream
cone, once per cell, vectorized with ``torch.func.vmap`` over the cells (so N patched runs
cost about one batched replay). Ops without a vmap rule fall back to one replay per cell.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..bundles.core import check_same_graph
from ..errors import InterventionError, LensError
from ..replay.interpreter import Interpreter, downstream
from ..selectors import coerce
from ..tracing import Op, Trace
from ..tracing import trace as _trace
from .spec import SweepSpec

_SOURCES = frozenset({"input", "output", "buffer", "constant"})


@dataclass(frozen=True)
class Cell:
    """One cell of a sweep grid."""

    site: str
    position: int | None = None
    head: int | None = None

    @property
    def key(self) -> tuple[str, int | None, int | None]:
        return (self.site, self.position, self.head)


def as_args(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class SweepRunner:
    """Holds the traces one sweep needs; ``run(cells)`` returns one row per cell."""

    def __init__(self, model: Any, spec: SweepSpec) -> None:
        self.model = model
        self.spec = spec
        kw = dict(spec.input_kwargs)
        with torch.no_grad():
            if spec.kind == "patching":
                clean, corrupted = spec.inputs
                self.source: Trace | None = _trace(model, *as_args(clean), input_kwargs=kw)
                self.base = _trace(model, *as_args(corrupted), input_kwargs=kw)
                check_same_graph("clean", self.source, "corrupted", self.base)
            else:
                self.source = None
                self.base = _trace(model, *as_args(spec.inputs[0]), input_kwargs=kw)
        self.out_op = self._output_op()
        with torch.no_grad():
            self.baseline = float(spec.metric(self.out_op.out))
            self.clean_value = (float(spec.metric(self.source[self.out_op.label].out))
                                if self.source is not None else None)

    def _output_op(self) -> Op:
        if self.spec.output is not None:
            return self.base[self.spec.output]  # type: ignore[no-any-return]
        outs = [op for op in self.base.ops if op.is_output]
        if not outs:
            raise LensError("The model produced no tensor output to compute the metric on.")
        return outs[0]

    # ------------------------------------------------------------------ cells
    def site_ops(self) -> list[Op]:
        sel = coerce(self.spec.sites, module_addresses=set(self.base.modules))
        sel.validate(module_addresses=set(self.base.modules))
        found = [op for op in self.base.ops if op.kind not in _SOURCES and sel(op)
                 and op.dtype is not None and op.dtype.is_floating_point]
        if not found:
            raise InterventionError(
                f"sites={self.spec.sites!r} matched no op with a floating-point output in "
                f"this model; see trace.find_sites(...) or trace.labels for what exists.")
        return found

    def cells(self) -> list[Cell]:
        """Every cell of the grid; positions are checked against every site first."""
        cells = []
        dim = self.spec.position_dim
        for op in self.site_ops():
            positions = self.spec.positions
            if positions is None:
                cells.append(Cell(op.label))
                continue
            if len(op.shape) <= dim:
                raise InterventionError(
                    f"positions={_short(positions)} needs a dimension {dim} at {op.label}, "
                    f"whose shape is {tuple(op.shape)}; pass position_dim=... or "
                    "positions=None.")
            size = op.shape[dim]
            if positions == "each":
                positions = range(size)
            cells.extend(Cell(op.label, p) for p in _checked(positions, size, op, dim))
        return cells

    # ------------------------------------------------------------------ compute
    def edited(self, cell: Cell, op: Op) -> torch.Tensor:
        value = op.out.detach()
        index = _index(cell.position, self.spec.position_dim)
        if self.spec.kind == "patching":
            assert self.source is not None
            src: torch.Tensor = self.source[op.label].out.detach()
            if index is None:
                return src
            new = value.clone()
            new[index] = src[index]
            return new
        action = self.spec.action
        if index is None:
            return _apply(action, value, op)
        new = value.clone()
        new[index] = _apply(action, value[index], op)
        return new

    def run(self, cells: Sequence[Cell]) -> list[dict[str, Any]]:
        groups: dict[str, list[Cell]] = {}
        for c in cells:
            groups.setdefault(c.site, []).append(c)
        rows = []
        for site, group in groups.items():
            op = self.base[site]
            values = [self.edited(c, op) for c in group]
            for c, v in zip(group, self.replay_metric(op, values), strict=True):
                rows.append(self.row(c, v))
        return rows

    def replay_metric(self, op: Op, values: list[torch.Tensor]) -> list[float]:
        cone = downstream(self.base, [op.call_index])
        out_index = self.out_op.call_index
        metric = self.spec.metric

        def one(v: torch.Tensor) -> torch.Tensor:
            env = Interpreter(self.base, values={op.call_index: v}).run(cone)
            return metric(env.get(out_index, self.out_op.out))  # type: ignore[no-any-return]

        with torch.no_grad():
            if len(values) > 1:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)  # no-batch-rule notes
                        res = torch.func.vmap(one)(torch.stack(values))
                    return [float(x) for x in res.reshape(-1)]
                except Exception:  # noqa: BLE001 - an op without a vmap rule: go one by one
                    pass
            return [float(one(v)) for v in values]

    def row(self, cell: Cell, value: float) -> dict[str, Any]:
        return {"site": cell.site, "position": cell.position, "head": cell.head,
                "value": value, "baseline": self.baseline, "clean": self.clean_value,
                "kind": self.spec.kind}


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) < 60 else text[:57] + "..."


def _checked(positions: Any, size: int, op: Op, dim: int) -> list[int]:
    if isinstance(positions, (str, bytes)) or not hasattr(positions, "__iter__"):
        raise InterventionError(f"positions={_short(positions)}: use 'each', None, or a "
                                "list of integer positions.")
    out: list[int] = []
    for p in positions:
        if isinstance(p, torch.Tensor) and p.dim() == 0 and not p.is_floating_point():
            p = int(p)
        if not isinstance(p, int) or isinstance(p, bool):
            raise InterventionError(f"positions: {p!r} is not an integer position.")
        if not 0 <= p < size:
            raise InterventionError(
                f"positions: {p} is out of range at {op.label}, whose dimension {dim} has "
                f"size {size} (shape {tuple(op.shape)}); use positions in 0..{size - 1}.")
        if p in out:
            raise InterventionError(f"positions: {p} is listed twice; list each once.")
        out.append(p)
    return out


def check_same_shapes(clean: Any, corrupted: Any) -> None:
    """Patching copies clean values into the corrupted run position by position, so both
    inputs must have one structure, shapes and dtypes. Checked before any work."""
    a, b = _leaves(as_args(clean)), _leaves(as_args(corrupted))
    if [p for p, _ in a] != [p for p, _ in b]:
        raise InterventionError(
            f"clean and corrupted inputs differ in structure: {[p for p, _ in a]} vs "
            f"{[p for p, _ in b]}; pass the same arguments to both.")
    for (path, x), (_, y) in zip(a, b, strict=True):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor) or (
                isinstance(x, torch.Tensor) and (x.shape != y.shape or x.dtype != y.dtype)):
            raise InterventionError(
                f"clean and corrupted inputs differ at {path}: {_what(x)} vs {_what(y)}. "
                "Patching needs inputs of one shape (e.g. prompts of the same token "
                "length); pad or pick matching pairs.")


def _what(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor {tuple(x.shape)} {x.dtype}"
    return type(x).__name__


def _leaves(x: Any, path: str = "inputs") -> list[tuple[str, Any]]:
    if isinstance(x, (tuple, list)):
        return [leaf for i, v in enumerate(x) for leaf in _leaves(v, f"{path}[{i}]")]
    if isinstance(x, dict):
        return [leaf for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))
                for leaf in _leaves(v, f"{path}[{k!r}]")]
    return [(path, x)]


def _index(position: int | None, dim: int) -> tuple[Any, ...] | None:
    if position is None:
        return None
    return (slice(None),) * dim + (position,)


def _apply(action: Any, value: torch.Tensor, op: Op) -> torch.Tensor:
    if action is None:
        raise LensError("An ablation sweep needs action=..., e.g. tl.zero_ablate().")
    try:
        out = action(value, op)
    except TypeError:
        out = action(value)
    if not isinstance(out, torch.Tensor) or out.shape != value.shape:
        raise InterventionError(
            f"action {action!r} at {op.label} returned "
            f"{getattr(out, 'shape', type(out).__name__)}, expected shape {tuple(value.shape)}.")
    return out
