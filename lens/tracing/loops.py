"""Recurrence: which ops are passes of one layer (the paper's three rules).

``find_layers(ops)`` returns, for each kept op (in execution order), the position of the
first op of its layer; ops sharing that value are passes of one layer.

1. Ops applying the same parameters (same function, same parameter names, same output
   slot) several times are passes of one layer.
2. Around those passes, repeated parameter-free ops grow the layer block outwards: for
   two consecutive passes ``a``, ``b`` of a layer, a neighbour of ``a`` (child, parent or
   sibling output) and the *corresponding* neighbour of ``b`` (same signature, same
   argument slot, same rank among like neighbours) become consecutive passes of one
   layer, and the pair is grown from in turn. A guard keeps every pass of a grown layer
   in a distinct iteration of the loop it grew from (see ``_Groups.union``).
3. A parameter-free sequence that repeats back to back (XYZXYZXYZ) with each block fed by
   the previous one gives passes; separated repeats (XYZ A XYZ) do not.

A *signature* is what makes two ops "the same op": kind, function, output slot,
parameters, non-tensor arguments and the module path (addresses, not call numbers). The
module path keeps ops of distinct modules apart (the two residual adds of two distinct
transformer blocks are never one layer); a module called repeatedly keeps its path, so
its ops still group.

Everything is bucketed by interned signature ids: cost is near-linear in the number of
ops (no all-pairs comparison).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Hashable, Iterable, Sequence
from itertools import compress, pairwise
from operator import and_, attrgetter, not_

from ..capture.records import IDENTITY, OP, ModuleCallRecord, OpRecord
from .argkeys import _Keys
from .loopgroups import _Groups

# Rule 3: how far back to look for the previous block, and how many earlier occurrences
# of a signature to try as its start.
MAX_PERIOD = 1024
MAX_TRIES = 8



def find_layers(ops: Sequence[OpRecord], detect_loops: bool = True) -> list[int]:
    """For each op, the position of the first op of its layer (see module docstring)."""
    groups = _Groups(len(ops))
    seeds = _rule1(ops, groups)
    if detect_loops:
        g = _Graph(ops)
        g.compute_signatures()
        if seeds:  # rule 2 compares neighbours anywhere: read them all at once
            g.refine_run(0, len(ops))
            g.read_all_neighbours()
        _rule2(g, groups, seeds)
        _rule3(g, groups)
    return groups.firsts()


# --------------------------------------------------------------------------- graph
class _Graph:
    """Positions, neighbours and interned signatures of the kept ops.

    Signatures are compared for growable ops only (rule 2 pairs and rule 3 blocks hold
    growable ops alone, and a growable op's signature never equals another op's: both
    hold kind and parameters); other ops are left with their head's id (see
    :meth:`compute_signatures`). Parents and children (as positions) are made per op on
    first use: rule 3 reads a few ops' parents, and only rule 2 reads children.
    """

    def __init__(self, ops: Sequence[OpRecord]) -> None:
        self.ops = ops
        self.sig: list[int] = []
        self.eligible = list(map(and_, map(_GROWABLE.__contains__, map(_kind, ops)),
                                 map(not_, map(_params, ops))))
        by_call: dict[int, list[int]] = {}
        for i in compress(range(len(ops)), map(_out_index, ops)):  # multi-output calls
            by_call.setdefault(ops[i].call_id, []).append(i)
        self.siblings = by_call
        # no reference back to the graph: a cycle would keep the records (and payloads)
        # alive past their trace while the collector is paused
        pos = dict(zip(map(_call_index, ops), range(len(ops)), strict=True))
        self.parents: _Positions | list[list[int]] = _Positions(ops, pos, "parent_idx")
        self.children: _Positions | list[list[int]] = _Positions(ops, pos, "child_idx")

    def read_all_neighbours(self) -> None:
        """Parents and children of every op as lists, read at once."""
        if isinstance(self.parents, _Positions):
            self.parents = self.parents.all()
        if isinstance(self.children, _Positions):
            self.children = self.children.all()

    def compute_signatures(self) -> None:
        """Intern the *head* of every op's signature (kind, function, type, output slot,
        parameters, module path), read with C-level calls, as the position of its first
        op. Ops of one head are told apart by their argument templates only where a rule
        compares them (:meth:`refine`)."""
        ops = self.ops
        ctxs = list(map(_ctx, ops))  # held, so that their ids stay distinct
        ctx_ids = list(map(id, ctxs))
        path_of = dict(zip(ctx_ids, ctxs, strict=True))
        paths: dict[tuple[str, ...], int] = {}
        for k, ctx in path_of.items():  # one per distinct module context
            path_of[k] = paths.setdefault(_addresses(ctx), len(paths))
        heads = zip(map(_head, ops), map(path_of.__getitem__, ctx_ids), strict=True)
        first: dict[Hashable, int] = {}
        self.sig = list(map(first.setdefault, heads, range(len(ops))))
        self.unique = len(first) == len(ops)
        self._refined = [False] * len(ops)
        self._table: dict[Hashable, int] = {}
        self._keys = _Keys()

    def refine(self, positions: Iterable[int]) -> None:
        """Complete the signatures of these ops (growable ones; ids from ``n`` up): two
        refined ops then have equal signatures exactly when their whole signatures are
        equal, and a refined op's never equals an unrefined op's."""
        ops, sig, done, eligible = self.ops, self.sig, self._refined, self.eligible
        table, n = self._table, len(ops)
        args_key, kwargs_key = self._keys.args, self._keys.kwargs
        for i in positions:
            if done[i] or not eligible[i]:
                continue
            done[i] = True
            op = ops[i]
            kwargs = op.kwargs
            key = (sig[i], args_key(op.args), kwargs_key(kwargs) if kwargs else ())
            sig[i] = table.setdefault(key, n + len(table))

    def refine_run(self, start: int, end: int) -> list[int]:
        """:meth:`refine` the ops in [start, end) whose head another of them has; their
        signatures."""
        run = self.sig[start:end]
        if self.unique or len(set(run)) == len(run):
            return run
        seen: set[int] = set()
        again: set[int] = set()  # heads met twice or more
        for h in run:
            (again if h in seen else seen).add(h)
        self.refine([i for i, h in enumerate(run, start) if h in again])
        return self.sig[start:end]

    def corresponding(self, a: int, b: int) -> list[tuple[int, int]]:
        """Pairs (x, y): a neighbour x of op ``a`` and the neighbour y of op ``b`` in the
        same relation (same signature, same argument slot, same rank among like ones)."""
        sig, parents, children = self.sig, self.parents, self.children
        pa, pb = parents[a], parents[b]
        # parents, slot by slot (a first pass may have fewer: loop entry)
        out = [(x, y) for x, y in zip(pa, pb, strict=False) if sig[x] == sig[y]]
        ca, cb = children[a], children[b]
        if len(ca) == 1 and len(cb) == 1:  # the common case: no dict needed
            x, y = ca[0], cb[0]
            if sig[x] == sig[y] and parents[x].index(a) == parents[y].index(b):
                out.append((x, y))
        elif ca and cb:
            kb = self._keyed_children(b)
            out.extend((x, kb[k]) for k, x in self._keyed_children(a).items() if k in kb)
        ops = self.ops
        if ops[a].out_index and ops[b].out_index:  # other outputs of a multi-output call
            sb = {sig[y]: y for y in self.siblings[ops[b].call_id] if y != b}
            out.extend((x, sb[sig[x]]) for x in self.siblings[ops[a].call_id]
                       if x != a and sig[x] in sb)
        return out

    def _keyed_children(self, i: int) -> dict[tuple[int, int, int], int]:
        """Children keyed by (signature, slot of ``i`` among its parents, rank)."""
        sig, parents = self.sig, self.parents
        out: dict[tuple[int, int, int], int] = {}
        seen: dict[tuple[int, int], int] = {}
        for c in self.children[i]:
            like = (sig[c], parents[c].index(i))
            rank = seen[like] = seen.get(like, -1) + 1
            out[(like[0], like[1], rank)] = c
        return out


_GROWABLE = frozenset({OP, IDENTITY})
_head = attrgetter("kind", "func_name", "type", "out_index", "params")
_ctx = attrgetter("module_ctx")
_params = attrgetter("params")
_kind = attrgetter("kind")
_out_index = attrgetter("out_index")
_call_index = attrgetter("call_index")


class _Positions(dict[int, list[int]]):
    """Parents or children of each op as positions among the kept ops (call indices of
    ops not kept dropped), made on first use."""

    def __init__(self, ops: Sequence[OpRecord], pos: dict[int, int], attr: str) -> None:
        super().__init__()
        self.ops = ops
        self.pos = pos
        self.attr = attr

    def all(self) -> list[list[int]]:
        """Every op's, as a list (cheaper to index once every op is read)."""
        return [self._read(idx) for idx in map(attrgetter(self.attr), self.ops)]

    def __missing__(self, i: int) -> list[int]:
        out = self[i] = self._read(getattr(self.ops[i], self.attr))
        return out

    def _read(self, idx: Sequence[int]) -> list[int]:
        pos = self.pos
        try:
            return list(map(pos.__getitem__, idx))
        except KeyError:
            return [pos[c] for c in idx if c in pos]


def _addresses(ctx: tuple[ModuleCallRecord, ...]) -> tuple[str, ...]:
    return tuple([c.address for c in ctx])


# --------------------------------------------------------------------------- rule 1
def _rule1(ops: Sequence[OpRecord], groups: _Groups) -> list[tuple[list[int], int]]:
    """Same parameters applied several times: passes. Returns (positions, seed id)."""
    by_key: dict[Hashable, list[int]] = {}
    for i in compress(range(len(ops)), map(_params, ops)):  # ops with parameters
        op = ops[i]
        if op.kind == OP:
            by_key.setdefault((op.func_name, op.type, op.params, op.out_index), []).append(i)
    seeds = []
    for positions in by_key.values():
        if len(positions) < 2:
            continue
        root = positions[0]
        for p in positions[1:]:
            root = groups.merge(groups.find(root), groups.find(p))
        groups.seeds.append(positions)
        seeds.append((positions, len(groups.seeds) - 1))
    return seeds


# --------------------------------------------------------------------------- rule 2
def _rule2(g: _Graph, groups: _Groups, seeds: list[tuple[list[int], int]]) -> None:
    """Grow rule-1 layers through corresponding neighbours of consecutive passes."""
    work = [(a, b, s) for positions, s in seeds for a, b in pairwise(positions)]
    eligible = g.eligible
    while work:
        a, b, s = work.pop()
        for x, y in g.corresponding(a, b):
            if x < y and eligible[x] and eligible[y] and groups.union(x, y, s):
                work.append((x, y, s))


# --------------------------------------------------------------------------- rule 3
def _rule3(g: _Graph, groups: _Groups) -> None:
    """Back-to-back repeats of a parameter-free block, each block fed by the previous."""
    # free: growable and still alone in its group
    free = g.eligible
    if groups.members:  # ops already in a group are not free
        free = list(free)
        for members in groups.members.values():
            for m in members:
                free[m] = False
    sig = g.sig
    # Blocks lie inside runs of consecutive free ops [start, end): a run whose ops all
    # differ holds none. A repeat found ends its last block at ``lo``, where the search
    # goes on; an op can start a second block only if its signature occurred before.
    for start, end in _runs(free):
        run = g.refine_run(start, end)  # rule 3 compares ops of one run only
        if len(set(run)) == len(run):
            continue
        occurrences: dict[int, list[int]] = {}  # positions in the run, by signature
        again = []  # ops whose signature occurred earlier in the run
        for i, s in enumerate(run, start):
            occ = occurrences.get(s)
            if occ is None:
                occurrences[s] = [i]
            else:
                occ.append(i)
                again.append(i)
        lo = start
        for i in again:
            if i <= lo:
                continue
            occ = occurrences[sig[i]]
            k = bisect_right(occ, i - 1)
            if occ[k - 1] < lo:  # the nearest earlier occurrence is out of reach
                continue
            best = _best_repeat(g, free, occ, k, lo, end)
            if best is None:
                continue
            first, period, count = best
            for t in range(period):
                root = groups.find(first + t)
                for m in range(1, count):
                    root = groups.merge(root, groups.find(first + m * period + t))
            lo = first + count * period


def _runs(free: list[bool]) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of consecutive free ops, two ops long or more."""
    runs = []
    start = -1
    for i, f in enumerate(free):
        if f:
            if start < 0:
                start = i
        elif start >= 0:
            if i - start > 1:
                runs.append((start, i))
            start = -1
    if start >= 0 and len(free) - start > 1:
        runs.append((start, len(free)))
    return runs


def _best_repeat(g: _Graph, free: list[bool], occ: list[int], k: int, lo: int, hi: int
                 ) -> tuple[int, int, int] | None:
    """The longest repeat whose second block starts at ``i = occ[k]``: (start, period,
    blocks). ``occ`` holds the positions of the signature of ``i`` in its run.

    The first block may start no earlier than ``lo``; both blocks end by ``hi``.
    """
    i = occ[k]
    for j in reversed(occ[max(0, k - MAX_TRIES):k]):
        period = i - j
        if j < lo or period > MAX_PERIOD:
            break
        if i + period > hi:
            continue
        count = _count_blocks(g, free, j, period)
        if count < 2:
            continue
        best = (j, period, count)
        # A shorter repeat may sit inside a longer one (XXY XXY XXY): prefer the longer.
        m = bisect_right(occ, j + count * period - 1)
        for nxt in occ[m:m + MAX_TRIES]:
            p2 = nxt - j
            if p2 > MAX_PERIOD or j + 2 * p2 > hi:
                break
            c2 = _count_blocks(g, free, j, p2)
            if c2 >= 2 and c2 * p2 > best[1] * best[2]:
                best = (j, p2, c2)
        return best
    return None


def _count_blocks(g: _Graph, free: list[bool], start: int, period: int) -> int:
    """How many consecutive blocks of ``period`` ops from ``start`` repeat the first."""
    sig = g.sig
    if sig[start:start + period] != sig[start + period:start + 2 * period]:
        return 1  # the second block differs: no need to follow parents
    count = 1
    n = len(free)
    while start + (count + 1) * period <= n and _block_follows(
            g, free, start, start + (count - 1) * period, period):
        count += 1
    return count


def _block_follows(g: _Graph, free: list[bool], first: int, j: int, period: int) -> bool:
    """Block B = [j+p, j+2p) repeats block A = [j, j+p) and is fed by it.

    Corresponding ops must have equal signatures and corresponding parents: a parent
    inside B matches the op one period earlier; a parent in A (the feed) matches the op
    one period earlier, or anything before A when A is the first block; a parent before
    A is shared.
    """
    sig, parents = g.sig, g.parents
    b0 = j + period
    fed = False
    for t in range(period):
        x2, x1 = b0 + t, j + t
        if not (free[x1] and free[x2]) or sig[x1] != sig[x2]:
            return False
        p2, p1 = parents[x2], parents[x1]
        if len(p2) != len(p1):
            return False
        for q2, q1 in zip(p2, p1, strict=True):
            if q2 >= b0:
                ok = q1 == q2 - period
            elif q2 >= j:
                fed = True
                ok = q1 == q2 - period or (j == first and q1 < j)
            else:
                ok = q1 == q2
            if not ok:
                return False
    return fed
