"""The worker side of a sweep: traces the inputs once, then computes rows for cells.

A batch of cells, of one site or of several, is computed by one replay starting at the
earliest of their sites, vectorized with ``torch.func.vmap`` over the cells (so N patched
runs cost about one batched replay; see :mod:`lens.sweeps.batched`). Ops without a vmap
rule fall back to one replay per cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InterventionError, LensError
from ..facets._edits import Step
from ..interventions._sites import trace_site
from ..selectors import coerce
from ..tracing import Op, Trace
from ..tracing import trace as _trace
from ..tracing.record import record
from . import positions
from .batched import BatchedReplay
from .positions import _short
from .sites import SweepSite, find_sites
from .sources import HookedClean, TracedClean, hooked_clean, hooked_modules
from .sources import matched as candidates
from .spec import SweepSpec

_SOURCES = frozenset({"input", "output", "buffer", "constant"})


@dataclass(frozen=True)
class Cell:
    """One cell of a sweep grid: a site (as the user named it), the op edited there,
    and the position and head (None: all of them)."""

    site: str
    op: str
    position: int | None = None
    head: int | None = None

    @property
    def key(self) -> tuple[str, str, int | None, int | None]:
        return (self.site, self.op, self.position, self.head)


def as_args(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class SweepRunner:
    """Holds the traces one sweep needs; ``run(cells)`` returns one row per cell."""

    def __init__(self, model: Any, spec: SweepSpec, *, clean_trace: bool = False) -> None:
        """``clean_trace=True``: trace the clean run in full even when its module
        outputs would do (``source`` is then that trace; attribution reads its graph)."""
        self.model = model
        self.spec = spec
        kw = dict(spec.input_kwargs)
        self.source: Trace | None = None
        self._sites: dict[tuple[str, str], SweepSite] | None = None
        rec = None
        with torch.no_grad():
            if spec.kind == "patching":
                clean, corrupted = spec.inputs
                hooked = None if clean_trace else hooked_modules(model, spec.sites)
                if hooked:
                    rec = record(model, *as_args(clean), input_kwargs=kw, save=hooked,
                                 sparse=True)
                else:
                    self.source = _trace(model, *as_args(clean), input_kwargs=kw)
                self.base = _trace(model, *as_args(corrupted), input_kwargs=kw)
            else:
                self.base = _trace(model, *as_args(spec.inputs[0]), input_kwargs=kw)
        self.out_op = self._output_op()
        self.clean = self._clean(rec)
        self.replay = BatchedReplay(self.base, self.out_op, spec.metric)
        with torch.no_grad():
            self.baseline = float(spec.metric(self.out_op.out))
            self.clean_value = (None if self.clean is None else float(spec.metric(
                self.clean.output if isinstance(self.clean, HookedClean)
                else self.clean.twin(self.out_op).out)))

    def _clean(self, rec: Any) -> TracedClean | HookedClean | None:
        """Where clean values come from: the hook recording when it has every site's
        value, else a full trace of the clean run (traced now if not yet)."""
        if self.spec.kind != "patching":
            return None
        if rec is not None:
            found = hooked_clean(rec, [s.op for s in self.sites()], self.out_op)
            if found is not None:
                return found
            with torch.no_grad():
                self.source = _trace(self.model, *as_args(self.spec.inputs[0]),
                                     input_kwargs=dict(self.spec.input_kwargs))
        assert self.source is not None
        return TracedClean(self.source, self.base)

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
        found = [op for op in candidates(self.base, sel) if op.kind not in _SOURCES
                 and op.dtype is not None and op.dtype.is_floating_point]
        if not found:
            raise InterventionError(
                f"sites={self.spec.sites!r} matched no op with a floating-point output in "
                f"this model; see trace.find_sites(...) or trace.labels for what exists.")
        return found

    def sites(self) -> list[SweepSite]:
        """The named sites (computed once; a worker computes the same from its traces)."""
        if self._sites is None:
            # Held while sites are found: the trace shares its modules view (weakly
            # cached) instead of building one per lookup.
            modules = self.base.modules
            sel = coerce(self.spec.sites, module_addresses=set(modules))
            self._sites = {s.key(): s for s in find_sites(self.base, sel, self.site_ops())}
        return list(self._sites.values())

    def site(self, cell: Cell) -> SweepSite:
        self.sites()
        assert self._sites is not None
        return self._sites[(cell.site, cell.op)]

    def pos_dim(self, site: SweepSite) -> int:
        """Positions of a facet with heads follow its head axis (``[batch, head, pos,
        ...]``); elsewhere they are along ``position_dim``."""
        return site.head_dim + 1 if site.head_dim is not None else self.spec.position_dim

    def cells(self) -> list[Cell]:
        """Every cell of the grid; positions are checked against every site first."""
        cells: list[Cell] = []
        for site in self.sites():
            shape = tuple(self._value(site).shape)
            dim = self.pos_dim(site)
            where = site.name if site.facet is not None else site.op.label
            if self.spec.positions is not None and len(shape) <= dim:
                raise InterventionError(
                    f"positions={_short(self.spec.positions)} needs a dimension {dim} at "
                    f"{where}, whose shape is {shape}; pass position_dim=... or "
                    "positions=None.")
            cols = positions.columns(self.spec.positions, shape[dim] if len(shape) > dim
                                     else 0, shape[0] if shape else None, where, shape, dim)
            cells.extend(Cell(site.name, site.op.label, p, h)
                         for h in site.heads for p in cols)
        return cells

    def _value(self, site: SweepSite) -> torch.Tensor:
        if site.facet is None:
            return site.op.out
        owner, name, group, _ = site.facet
        return group.value(self.base, name)

    # ------------------------------------------------------------------ compute
    def edited(self, cell: Cell, site: SweepSite) -> torch.Tensor:
        """The value of the site's op with this cell's edit made."""
        op = site.op
        value = op.out.detach()
        keys = positions.cell_keys(self.spec.positions, cell.position, self.pos_dim(site),
                                   cell.head, site.head_dim)
        if site.facet is None:
            return self._edit(value, keys, lambda: self._source_of(op), op)
        owner, name, _, carrier = site.facet
        step = Step(owner, name, "lens", (), None, carrier, cell.head)
        return step.apply(value, _CarrierSite(op, value), _CellEdit(self, keys, op))

    def _source_of(self, op: Op) -> torch.Tensor:
        assert self.clean is not None
        return self.clean.value(op)

    def _edit(self, value: torch.Tensor, keys: list[tuple[Any, ...]] | None,
              source: Callable[[], torch.Tensor], op: Op) -> torch.Tensor:
        if self.spec.kind == "patching":
            src = source()
            if keys is None:
                return src
            new = value.clone()
            for k in keys:
                new[k] = src[k]
            return new
        if keys is None:
            return _apply(self.spec.action, value, op)
        new = value.clone()
        for k in keys:
            new[k] = _apply(self.spec.action, value[k], op)
        return new

    def run(self, cells: Sequence[Cell]) -> list[dict[str, Any]]:
        """Rows of ``cells``, scored by one batched replay from the earliest of their
        sites (see :mod:`lens.sweeps.batched`), whatever sites they are at."""
        sites = [self.site(c) for c in cells]
        values = [self.edited(c, s) for c, s in zip(cells, sites, strict=True)]
        at = [s.op.call_index for s in sites]
        scores = self.replay.scores(at, values)
        return [self.row(c, v) for c, v in zip(cells, scores, strict=True)]

    def row(self, cell: Cell, value: float) -> dict[str, Any]:
        return {"site": cell.site, "layer": self.site(cell).layer, "op": cell.op,
                "head": cell.head, "position": cell.position, "value": value,
                "baseline": self.baseline, "clean": self.clean_value,
                "kind": self.spec.kind}


class _CarrierSite:
    """The site a facet step edits at: inputs from the base trace's saved payloads;
    ``op`` None, so the step keeps no record of the edit on the base trace."""

    op = None

    def __init__(self, op: Op, value: torch.Tensor) -> None:
        self._site = trace_site(op, value)
        self.call_index = op.call_index

    def name(self) -> str:
        return self._site.name()

    def inputs(self) -> list[torch.Tensor]:
        return self._site.inputs()


class _CellEdit:
    """The action a facet step runs: this cell's edit of the facet (patch or ablate)."""

    def __init__(self, runner: SweepRunner, keys: list[tuple[Any, ...]] | None,
                 op: Op) -> None:
        self.runner, self.keys, self.op = runner, keys, op

    def edit(self, shown: torch.Tensor, site: Any, path: tuple[Any, ...] = ()
             ) -> torch.Tensor:
        source = self.runner.source

        def clean() -> torch.Tensor:
            return site.value_in(source, "a patching sweep").detach()  # type: ignore[no-any-return]

        return self.runner._edit(shown, self.keys, clean, self.op)


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
