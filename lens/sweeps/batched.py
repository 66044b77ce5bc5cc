"""One batched replay for cells of several sites.

A batch of cells, each with its own site op and its own edited value there, is scored by
one replay vectorized with ``torch.func.vmap`` over the cells. The replay starts at the
earliest site op of the batch and runs every op downstream of any site op, plus the site
ops themselves. At a site op ``s`` each cell takes

    its edited value        if its own site is s,
    the value computed here otherwise.

A cell whose site comes later than ``s`` is unpatched upstream of its own site, so until
it reaches its site it carries exactly the base (corrupted-run) values; its edited value
was computed from those same recorded base values. A cell whose site came earlier carries
its patch's consequences through ``s``. So each cell's output is the one its own patched
run gives, and a grid of N cells over K sites costs one replay from the earliest site
instead of K replays (one per site), which is what counts when each torch call costs
microseconds of dispatch.

Edited values are stored once per cell (``[cells at s, *shape]`` per site op), and each
cell gathers its row by index inside the vmapped function, so memory stays at one value
per cell whatever the number of sites.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..replay.interpreter import Interpreter, downstream
from ..tracing import Op, Trace


class BatchedReplay:
    """Scores cells (site op call index, edited value) with one vmapped replay per batch;
    without a vmap rule for some op, one replay per cell."""

    def __init__(self, base: Trace, out_op: Op, metric: Callable[[Tensor], Any]) -> None:
        self.base = base
        self.out_op = out_op
        self.metric = metric
        self._cones: dict[tuple[int, ...], list[tuple[Op, int | None, bool]]] = {}

    def scores(self, at: Sequence[int], values: Sequence[Tensor]) -> list[float]:
        """``metric(output)`` of each cell: cell ``i`` edited at op ``at[i]`` to
        ``values[i]``."""
        with torch.no_grad():
            if len(values) > 1:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)  # no-batch-rule notes
                        res = self._vmapped(at, values)
                    return [float(x) for x in res.reshape(-1)]
                except Exception:  # noqa: BLE001 - an op without a vmap rule: one by one
                    pass
            return [float(self._one(ci, v)) for ci, v in zip(at, values, strict=True)]

    def cone(self, sources: tuple[int, ...]) -> list[tuple[Op, int | None, bool]]:
        """The ops the replay runs, in order, each with the position of its site in
        ``sources`` (None: not a site) and whether it is recomputed (a site op none of
        whose inputs change keeps its recorded value)."""
        got = self._cones.get(sources)
        if got is None:
            where = {ci: k for k, ci in enumerate(sources)}
            dirty = {op.call_index for op in downstream(self.base, sources)}
            got = []
            for op in self.base.ops:
                ci = op.call_index
                if ci in where:
                    got.append((op, where[ci], any(p in dirty or p in where
                                                   for p in op.parent_idx)))
                elif ci in dirty:
                    got.append((op, None, True))
            self._cones[sources] = got
        return got

    def _vmapped(self, at: Sequence[int], values: Sequence[Tensor]) -> Tensor:
        sources = tuple(sorted(set(at)))
        cone = self.cone(sources)
        n, k = len(at), len(sources)
        rows: list[list[int]] = [[] for _ in sources]
        idx = torch.zeros(n, k, dtype=torch.long)
        mask = torch.zeros(n, k, dtype=torch.bool)
        pos = {ci: j for j, ci in enumerate(sources)}
        for i, ci in enumerate(at):
            j = pos[ci]
            idx[i, j], mask[i, j] = len(rows[j]), True
            rows[j].append(i)
        edits = [torch.stack([values[i] for i in r]) for r in rows]
        whole = [len(r) == n for r in rows]  # every cell edits this site: no mixing
        out_index = self.out_op.call_index

        def one(idx: Tensor, mask: Tensor) -> Tensor:
            run = Interpreter(self.base)
            for op, j, recompute in cone:
                if j is None:
                    run.env[op.call_index] = run.run_op(op)
                    continue
                mine = edits[j][idx[j]]
                if not whole[j]:
                    here = run.run_op(op) if recompute else run.value(op.call_index)
                    mine = torch.where(mask[j], mine, here)
                run.env[op.call_index] = mine
            return self.metric(run.env.get(out_index, self.out_op.out))  # type: ignore[no-any-return]

        return torch.func.vmap(one)(idx, mask)

    def _one(self, call_index: int, value: Tensor) -> Tensor:
        """One cell, one replay of its site's downstream cone."""
        cone = [op for op, j, _ in self.cone((call_index,)) if j is None]
        env = Interpreter(self.base, values={call_index: value}).run(cone)
        return self.metric(env.get(self.out_op.call_index, self.out_op.out))  # type: ignore[no-any-return]
