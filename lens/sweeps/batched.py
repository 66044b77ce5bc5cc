"""One batched replay for cells of several sites.

A batch of cells, each with its own site op and its own edited value there, is scored by
one pass over the ops downstream of its earliest site, vectorized with
``torch.func.vmap`` over the cells. The pass is cut at each later site op into segments,
and the batch grows at each cut::

    sites s0 < s1 < s2        segment 0: ops after s0 up to s1, cells of s0
                              segment 1: ops after s1 up to s2, cells of s0, s1
                              segment 2: ops after s2 to the end, all cells

Between segments only the values read later (the *live* ones, e.g. the residual stream)
are handed on, batched over the cells. The cells that join at ``s`` are unpatched
upstream of ``s``, so their live values are exactly the recorded base (corrupted-run)
values, and at ``s`` they take their edited value (computed from the same recorded base
values); the cells already in the batch carry their own patches' consequences through,
``s`` itself recomputed for them. So each cell's output is the one its own patched run
gives; a grid of N cells over K sites costs one pass of dispatched ops from the earliest
site instead of K replays (what counts when each torch call costs microseconds of
launch), and no cell computes the ops upstream of its own site (what counts when compute
does).

Memory: a segment's batch holds the cells that joined so far, so a batch of N cells costs
at most N times one forward's activations downstream of its earliest site; the sweep's
``batch_size`` bounds N.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..capture.records import OpRecord
from ..replay.interpreter import Interpreter, dependents, downstream
from ..replay.steps import Step, prepare_all
from ..tracing import Op, Trace


@dataclass(frozen=True)
class Segment:
    """Ops recomputed after site ``start`` up to the next site (inclusive), as replay
    steps prepared once per plan, and the call indices of the values handed to the next
    segment (empty for the last one)."""

    start: int
    steps: tuple[Step, ...]
    live: tuple[int, ...]


class BatchedReplay:
    """Scores cells (site op call index, edited value) with one vmapped pass per batch;
    without a vmap rule for some op, one replay per cell."""

    def __init__(self, base: Trace, out_op: Op, metric: Callable[[Tensor], Any]) -> None:
        self.base = base
        self.out_op = out_op
        self.metric = metric
        self._plans: dict[tuple[int, ...], list[Segment] | None] = {}

    def scores(self, at: Sequence[int], values: Sequence[Tensor]) -> list[float]:
        """``metric(output)`` of each cell: cell ``i`` edited at op ``at[i]`` to
        ``values[i]``."""
        with torch.no_grad():
            if len(values) > 1:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)  # no-batch-rule notes
                        res = self._vmapped(at, values)
                    if res is not None:
                        return res
                except Exception:  # noqa: BLE001 - an op without a vmap rule: one by one
                    pass
            return [float(self._one(ci, v)) for ci, v in zip(at, values, strict=True)]

    def plan(self, sources: tuple[int, ...]) -> list[Segment] | None:
        """The segments of a pass over the sorted site ops ``sources``; None when some
        site's edit stops mattering before the next site (no value to hand on)."""
        if sources not in self._plans:
            self._plans[sources] = self._make_plan(sources)
        return self._plans[sources]

    def _make_plan(self, sources: tuple[int, ...]) -> list[Segment] | None:
        cone, known = _cone(self.base, sources)
        last: dict[int, float] = {}
        for rec in cone:
            for p in rec.parent_idx:
                if p in known:
                    last[p] = max(last.get(p, -1), rec.call_index)
        last[self.out_op.call_index] = float("inf")
        segments = []
        for k, start in enumerate(sources):
            end = sources[k + 1] if k + 1 < len(sources) else float("inf")
            steps = prepare_all(r for r in cone if start < r.call_index <= end)
            live = tuple(sorted(c for c in known if c <= end and last.get(c, -1) > end))
            if end != float("inf") and not live:
                return None
            segments.append(Segment(start, steps, live if k + 1 < len(sources) else ()))
        return segments

    def _vmapped(self, at: Sequence[int], values: Sequence[Tensor]) -> list[float] | None:
        sources = tuple(sorted(set(at)))
        plan = self.plan(sources)
        if plan is None:
            return None
        order = sorted(range(len(at)), key=lambda i: (at[i], i))
        keys: tuple[int, ...] = ()
        state: tuple[Tensor, ...] = ()
        out: Any = None
        for seg in plan:
            joining = [values[i] for i in order if at[i] == seg.start]
            keys, state = self._join(keys, state, seg.start, joining)
            out = torch.func.vmap(self._segment(seg, keys))(*state)
            if seg.live:
                keys, state = seg.live, tuple(out)
        scores = [float(x) for x in out.reshape(-1)]
        got = [0.0] * len(at)
        for i, s in zip(order, scores, strict=True):
            got[i] = s
        return got

    def _join(self, keys: tuple[int, ...], state: tuple[Tensor, ...], site: int,
              joining: list[Tensor]) -> tuple[tuple[int, ...], tuple[Tensor, ...]]:
        """The state with the cells of ``site`` appended: their edited value at the site,
        the recorded base value for every other live value."""
        n = len(joining)
        if site not in keys:  # not recomputed for the cells already in: its base value
            old = len(state[0]) if state else 0
            keys, state = (*keys, site), (*state, self._base(site, old))
        grown = []
        for ci, v in zip(keys, state, strict=True):
            new = torch.stack(joining) if ci == site else self._base(ci, n)
            grown.append(torch.cat([v, new]) if len(v) else new)
        return keys, tuple(grown)

    def _base(self, call_index: int, n: int) -> Tensor:
        v = Interpreter(self.base).value(call_index)
        return v.unsqueeze(0).expand(n, *v.shape)

    def _segment(self, seg: Segment, keys: tuple[int, ...]) -> Callable[..., Any]:
        out_index = self.out_op.call_index

        def run(*vals: Tensor) -> Any:
            it = Interpreter(self.base, values=dict(zip(keys, vals, strict=True)))
            it.run_steps(seg.steps)
            if not seg.live:
                return self.metric(it.value(out_index))
            return tuple(it.value(ci) for ci in seg.live)

        return run

    def _one(self, call_index: int, value: Tensor) -> Tensor:
        """One cell, one replay of its site's downstream cone."""
        cone = downstream(self.base, [call_index])
        env = Interpreter(self.base, values={call_index: value}).run(cone)
        return self.metric(env.get(self.out_op.call_index, self.out_op.out))  # type: ignore[no-any-return]


def _cone(trace: Trace, sources: tuple[int, ...]) -> tuple[list[OpRecord], set[int]]:
    """The ops after the first of ``sources`` whose value depends on any of them, later
    sources included (recomputed for the cells patched earlier); and the call indices
    of every value a pass may hold batched (those ops and the sources)."""
    cone = dependents(trace, sources, sources_too=True)
    return cone, {*sources, *(rec.call_index for rec in cone)}
