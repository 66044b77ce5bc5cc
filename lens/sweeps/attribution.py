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
from .positions import cell_keys
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
    sites = runner.sites()
    for site in sites:
        if site.facet is not None and (site.facet[3].rewrite is not None
                                       or site.facet[3].perm is not None):
            raise LensError(
                f"attribution_patching: facet site {site.name} is computed inside "
                f"{site.op.label} (not its output), so it has no gradient of its own; "
                "use tl.sweep.patching for it, or select its carrier op.")
    calls = {site.op.call_index for site in sites}
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
    for cell in runner.cells():
        site = runner.site(cell)
        grad = by_call[site.op.call_index]
        diff = runner.source[site.op.label].out.detach() - site.op.out.detach()
        attr = diff * grad if grad is not None else torch.zeros_like(diff)
        keys = cell_keys(positions, cell.position, runner.pos_dim(site), cell.head,
                         site.head_dim)
        v = float(attr.sum()) if keys is None else sum(float(attr[k].sum()) for k in keys)
        rows.append(runner.row(cell, v) | {"kind": "attribution"})
    return SweepResult(rows, spec.describe(), spec.digest(model))
