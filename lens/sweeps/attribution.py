"""Attribution patching: the first-order estimate of every patch from one backward pass.

For a site with clean value ``c`` and corrupted value ``x``, patching changes the metric by
about ``sum((c - x) * dmetric/dx)``: one clean forward, one corrupted forward and one
backward give the estimate for every (site, position) at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import LensError
from ..tracing import trace as _trace
from .result import SweepResult
from .runner import SweepRunner, as_args, check_same_shapes
from .spec import SweepSpec


class _GradSites:
    """Live rule: make each site's output something autograd can differentiate against."""

    def __init__(self, calls: set[int]) -> None:
        self.calls = calls

    def __call__(self, op: Any, value: torch.Tensor) -> torch.Tensor:
        if op.call_index in self.calls and not value.requires_grad:
            return value.detach().requires_grad_(True)
        return value


def attribution_patching(model: Any, clean: Any, corrupted: Any, sites: Any, *,
                         metric: Callable[[torch.Tensor], torch.Tensor],
                         positions: Any = "each", position_dim: int = 1,
                         output: str | None = None,
                         input_kwargs: dict[str, Any] | None = None) -> SweepResult:
    check_same_shapes(clean, corrupted)
    spec = SweepSpec("attribution", sites, metric, (clean, corrupted), positions,
                     position_dim, None, output, dict(input_kwargs or {}))
    kw = dict(spec.input_kwargs)
    patch_spec = SweepSpec("patching", sites, metric, (clean, corrupted), positions,
                           position_dim, None, output, kw)
    runner = SweepRunner(model, patch_spec)  # clean and corrupted traces, sites, cells
    site_ops = runner.site_ops()
    calls = {op.call_index for op in site_ops}
    with torch.enable_grad():
        graph = _trace(model, *as_args(corrupted), input_kwargs=kw,
                       intervene=[_GradSites(calls)])
        out = graph[runner.out_op.label].out
        value = metric(out)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise LensError("attribution_patching needs metric(output) to return a scalar "
                            "tensor (it is differentiated).")
        leaves = [graph.records[c].out for c in sorted(calls)]
        grads = torch.autograd.grad(value.reshape(()), leaves, allow_unused=True)
    by_call = dict(zip(sorted(calls), grads, strict=True))
    rows = []
    assert runner.source is not None
    for op in site_ops:
        grad = by_call[op.call_index]
        diff = runner.source[op.label].out.detach() - op.out.detach()
        attr = diff * grad if grad is not None else torch.zeros_like(diff)
        for cell in [c for c in runner.cells() if c.site == op.label]:
            if cell.position is None:
                v = float(attr.sum())
            else:
                v = float(attr.select(position_dim, cell.position).sum())
            rows.append(runner.row(cell, v) | {"kind": "attribution"})
    return SweepResult(rows, spec.describe(), spec.digest(model))
