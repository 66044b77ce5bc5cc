"""Graph facts of a finished trace: distances, ancestry, conditional branches.

Computed once per trace, on first access (``Trace._graph``), in a few linear sweeps over
the ops in execution order (parents always come before children). ``Op`` and ``Trace``
expose the results as properties (``op.min_distance_from_input``, ``op.in_cond_branch``,
``trace.has_conditional_branching``, ...).

Module containment of internally generated tensors (``torch.zeros``, ``torch.randn``...
inside ``forward``): the reference system infers containment from the tensors that
enter and leave modules, so it has to repair ops whose tensors were made inside a module
by borrowing the module of their first descendant computed from the input. ``lens``
records the live stack of module calls (pre/post hooks) with every op, so ``op.module``
and ``op.module_addresses`` are already the module the op ran in, for generated tensors
too. The paper's repair would make them worse (an RNN's initial ``torch.zeros`` state
made at top level would be credited to the cell that first consumes it), so it is not
applied.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..capture.records import INPUT, OP, OUTPUT, OpRecord


class GraphFacts:
    """Per-op graph facts, indexed by ``op.index``."""

    __slots__ = ("min_from_input", "max_from_input", "min_to_output", "max_to_output",
                 "terminal_bool", "cond_branch")

    def __init__(self, ops: Sequence[OpRecord]) -> None:
        n = len(ops)
        pos = {op.call_index: i for i, op in enumerate(ops)}
        parents = [[pos[c] for c in op.parent_idx if c in pos] for op in ops]
        children = [[pos[c] for c in op.child_idx if c in pos] for op in ops]
        self.min_from_input, self.max_from_input = _distances(
            range(n), parents, [op.kind == INPUT for op in ops])
        self.min_to_output, self.max_to_output = _distances(
            range(n - 1, -1, -1), children, [op.kind == OUTPUT for op in ops])
        self.terminal_bool = [_is_terminal_bool(op, not children[i])
                              for i, op in enumerate(ops)]
        conditions = [i for i, op in enumerate(ops) if self.terminal_bool[i] or
                      (op.bool_used and op.kind == OP)]
        self.cond_branch = _flood_cond(conditions, parents, self.min_to_output)


def _distances(order: range, edges: list[list[int]], is_source: list[bool]
               ) -> tuple[list[int | None], list[int | None]]:
    """Min and max number of edges from the nearest / farthest source, along ``edges``
    (visited in ``order``, which lists every edge's far end first); None if unreachable."""
    n = len(is_source)
    lo: list[int | None] = [None] * n
    hi: list[int | None] = [None] * n
    for i in order:
        if is_source[i]:
            lo[i] = hi[i] = 0
            continue
        best: int | None = None
        worst: int | None = None
        for e in edges[i]:
            a, b = lo[e], hi[e]
            if a is None or b is None:
                continue
            if best is None or a < best:
                best = a
            if worst is None or b > worst:
                worst = b
        if best is not None and worst is not None:
            lo[i], hi[i] = best + 1, worst + 1
    return lo, hi


def _is_terminal_bool(op: OpRecord, childless: bool) -> bool:
    """A single-element boolean tensor that feeds nothing: the test of an ``if``."""
    return (childless and op.kind == OP and op.dtype == torch.bool
            and all(s == 1 for s in op.shape))


def _flood_cond(conditions: list[int], parents: list[list[int]],
                to_output: list[int | None]) -> list[bool]:
    """Mark each condition op and the ops computing it, walking to parents and stopping
    at ops that are ancestors of an output (they belong to the main computation)."""
    marked = [False] * len(parents)
    stack = list(conditions)
    for i in conditions:
        marked[i] = True
    while stack:
        i = stack.pop()
        for p in parents[i]:
            if not marked[p] and to_output[p] is None:
                marked[p] = True
                stack.append(p)
    return marked
