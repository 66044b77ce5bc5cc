"""Attribution patching: the first-order estimate of every patch from one backward pass.

For a site with clean value ``c`` and corrupted value ``x``, patching changes the metric by
about ``sum((c - x) * dmetric/dx)``: one clean forward, one corrupted forward and one
backward give the estimate for every (site, position) at once. Facet sites take the
facet's gradient (lens.facets._grads), so ``tl.facet('z', head='each')`` or ``'pattern'``
of a fused attention call gives one row per head from the same three passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import LensError
from ..facets._grads import facet_grad
from ..facets._mapping import facets_of
from ..tracing import Trace
from ..tracing import trace as _trace
from .positions import cell_keys
from .result import SweepResult
from .runner import SweepRunner, as_args, check_same_shapes
from .sites import SweepSite
from .spec import SweepSpec


class _GradSites:
    """Live rule: make each site's output something autograd can differentiate against."""

    def __init__(self, calls: set[int]) -> None:
        self.calls = calls

    def __call__(self, op: Any, value: torch.Tensor) -> torch.Tensor:
        if op.call_index in self.calls and not value.requires_grad:
            return value.detach().requires_grad_(True)
        return value


def _carriers(trace: Trace, site: SweepSite) -> list[int]:
    """The ops whose gradients a site's attribution needs (a facet's carrier ops)."""
    if site.facet is None:
        return [site.op.call_index]
    _, name, group, _ = site.facet
    return [c.op for c in group.carriers(trace, name)]


def _attribution(site: SweepSite, clean: Trace, graph: Trace,
                 by_call: Mapping[int, torch.Tensor | None]) -> torch.Tensor:
    """``(clean - corrupted) * dmetric/dcorrupted`` at a site, in its layout (a facet's
    gradient is mapped from its carrier ops' gradients: lens.facets._grads)."""
    if site.facet is None:
        grad = by_call[site.op.call_index]
        diff = clean[site.op.label].out.detach() - site.op.out.detach()
        return diff * grad if grad is not None else torch.zeros_like(diff)
    owner, name, _, _ = site.facet
    here = facets_of(graph, owner)
    grad = facet_grad(graph, here.group(name), name, grad_of=by_call.get)
    return (facets_of(clean, owner)[name] - here[name]) * grad


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
    runner = SweepRunner(model, patch_spec, clean_trace=True)  # both traces, sites, cells
    sites = runner.sites()
    calls = {c for site in sites for c in _carriers(runner.base, site)}
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
    per_site: dict[tuple[str, str], torch.Tensor] = {}
    for cell in runner.cells():
        site = runner.site(cell)
        attr = per_site.get(site.key())
        if attr is None:
            attr = per_site[site.key()] = _attribution(site, runner.source, graph, by_call)
        keys = cell_keys(positions, cell.position, runner.pos_dim(site), cell.head,
                         site.head_dim)
        v = float(attr.sum()) if keys is None else sum(float(attr[k].sum()) for k in keys)
        rows.append(runner.row(cell, v) | {"kind": "attribution"})
    return SweepResult(rows, spec.describe(), spec.digest(model))
