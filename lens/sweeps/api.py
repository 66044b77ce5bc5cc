"""``tl.sweep.patching`` / ``ablation`` / ``attribution_patching``: grids in one call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import LensError
from ..io._lock import FolderLock
from .executors import Job, resolve_executor
from .result import SweepResult
from .runner import Cell, SweepRunner, check_same_shapes
from .spec import SweepSpec, describe_digest
from .store import ResultStore, Resume, cell_key


def patching(model: Any, clean: Any, corrupted: Any, sites: Any, *,
             metric: Callable[[torch.Tensor], Any], positions: Any = "each",
             position_dim: int = 1, batch_size: int = 32, executor: Any = "local",
             out: str | None = None, output: str | None = None,
             input_kwargs: dict[str, Any] | None = None, model_fn: Any = None,
             progress: bool = True, resume: Resume = True) -> SweepResult:
    """Patch each site (x head x position) from the clean run into the corrupted run;
    score each patched run with ``metric(output)``. ``sites`` takes module addresses,
    labels, any selector, and facets (``tl.facet('z', module=..., head='each')``: one cell
    per head); ``positions`` takes 'each', None, a list, or a per-row LongTensor
    ``[batch]`` (padded batches: row b patched at ``positions[b]``). Rows name the site as
    given, with its ``layer`` (block index), ``op`` (label), ``head`` and ``position``.
    Cells are replayed downstream of their sites only: up to ``batch_size`` cells, of
    one site or several, share one vmapped replay from the earliest of their sites. When
    every site is a module output, the clean run is recorded with forward hooks on those
    modules only (it must make the same calls of them, returning the same shapes); other
    sites trace it in full (same graph as the corrupted run). With ``out=``,
    rows are stored there and a rerun computes only the missing ones; ``resume='force'``
    keeps rows even though the metric's code changed."""
    check_same_shapes(clean, corrupted)
    spec = SweepSpec("patching", sites, metric, (clean, corrupted), positions, position_dim,
                     None, output, dict(input_kwargs or {}), model_fn)
    return run_sweep(spec, model, batch_size, executor, out, progress, resume)


def ablation(model: Any, inputs: Any, sites: Any, *, metric: Callable[[torch.Tensor], Any],
             action: Any = None, positions: Any = None, position_dim: int = 1,
             batch_size: int = 32, executor: Any = "local", out: str | None = None,
             output: str | None = None, input_kwargs: dict[str, Any] | None = None,
             model_fn: Any = None, progress: bool = True, resume: Resume = True
             ) -> SweepResult:
    """Apply ``action`` (default: zero ablation) at each site (x position) and score."""
    if action is None:
        from ..interventions import zero_ablate

        action = zero_ablate()
    spec = SweepSpec("ablation", sites, metric, (inputs,), positions, position_dim, action,
                     output, dict(input_kwargs or {}), model_fn)
    return run_sweep(spec, model, batch_size, executor, out, progress, resume)


def run_sweep(spec: SweepSpec, model: Any, batch_size: int, executor: Any,
              out: str | None, progress: bool = True, resume: Resume = True) -> SweepResult:
    if out is None:
        return _run(spec, model, batch_size, executor, None, progress, resume)
    Path(out).mkdir(parents=True, exist_ok=True)
    with FolderLock(out, "sweep"):
        return _run(spec, model, batch_size, executor, out, progress, resume)


def _run(spec: SweepSpec, model: Any, batch_size: int, executor: Any,
         out: str | None, progress: bool, resume: Resume) -> SweepResult:
    if model is None:
        if spec.model_fn is None:
            raise LensError("Pass a model, or model_fn= (a picklable function building it).")
        model = spec.model_fn()
    if batch_size < 1:
        raise LensError(f"batch_size must be >= 1, got {batch_size}.")
    runner = SweepRunner(model, spec)
    cells = runner.cells()
    described = spec.describe_with(model)
    digest = describe_digest(described)
    store = ResultStore(out, described, digest, resume) if out is not None else None
    done: dict[tuple[Any, ...], dict[str, Any]] = {}
    if store is not None:
        for row in store.load():
            done[cell_key(row)] = row
    todo = [c for c in cells if c.key not in done]
    ex = resolve_executor(executor)
    if progress is False and hasattr(ex, "progress"):
        ex.progress = False
    for rows in ex.map(Job(spec, model, runner), _batches(todo, batch_size)):
        if store is not None:
            store.append(rows)
        for row in rows:
            done[cell_key(row)] = row
    ordered = [done[c.key] for c in cells]
    result = SweepResult(ordered, spec.describe(), digest)
    result.damaged = [] if store is None else store.damaged
    return result


def _batches(cells: list[Cell], size: int) -> list[list[Cell]]:
    """Consecutive cells, at most ``size`` per batch, whatever their sites: each batch is
    one replay from its earliest site (cells come in site order, so consecutive chunks
    start as late as they can). ``size`` bounds a replay's memory: about ``size`` times
    the activations downstream of that site."""
    return [cells[i:i + size] for i in range(0, len(cells), size)]
