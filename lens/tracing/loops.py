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
from collections.abc import Hashable, Sequence
from functools import cached_property
from itertools import pairwise
from operator import itemgetter
from types import NoneType
from typing import Any

from ..capture.records import IDENTITY, OP, ModuleCallRecord, OpRecord, ParamRef, Ref

# Rule 3: how far back to look for the previous block, and how many earlier occurrences
# of a signature to try as its start.
MAX_PERIOD = 1024
MAX_TRIES = 8

_TENSOR = ("T",)
_SCALARS = frozenset({bool, int, float, str})


def find_layers(ops: Sequence[OpRecord], detect_loops: bool = True) -> list[int]:
    """For each op, the position of the first op of its layer (see module docstring)."""
    groups = _Groups(len(ops))
    seeds = _rule1(ops, groups)
    if detect_loops:
        g = _Graph(ops)
        g.compute_signatures()
        _rule2(g, groups, seeds)
        _rule3(g, groups)
    return groups.firsts()


# --------------------------------------------------------------------------- graph
class _Graph:
    """Positions, neighbours and interned signatures of the kept ops.

    Only growable ops (``eligible``) get a signature: the rules compare signatures of
    those alone (rule 2 pairs and rule 3 blocks hold growable ops only). Every other op
    gets a signature of its own (``-1 - position``), equal to no other. Parents and
    children (as positions) are made on first use: a graph without repeated parameters
    never reads children.
    """

    def __init__(self, ops: Sequence[OpRecord]) -> None:
        self.ops = ops
        self.sig: list[int] = []
        self.eligible = [op.kind in _GROWABLE and not op.params for op in ops]
        by_call: dict[int, list[int]] = {}
        for i, op in enumerate(ops):
            if op.out_index:
                by_call.setdefault(op.call_id, []).append(i)
        self.siblings = by_call

    @cached_property
    def _pos(self) -> dict[int, int]:
        return {op.call_index: i for i, op in enumerate(self.ops)}

    @cached_property
    def parents(self) -> list[list[int]]:
        return _positions(self._pos, [op.parent_idx for op in self.ops])

    @cached_property
    def children(self) -> list[list[int]]:
        return _positions(self._pos, [op.child_idx for op in self.ops])

    def compute_signatures(self) -> None:
        """Intern signatures: ops are first split by what is cheap to read (kind,
        function, type, output slot, parameters, module path); only classes of two ops
        or more are split further by their argument templates."""
        ops = self.ops
        path_of: dict[int, int] = {}  # id of a module context -> id of its address path
        paths: dict[tuple[str, ...], int] = {}
        classes: dict[Hashable, list[int]] = {}
        for i, (op, eligible) in enumerate(zip(ops, self.eligible, strict=True)):
            if eligible:
                ctx = op.module_ctx
                path = path_of.get(id(ctx))
                if path is None:
                    path = path_of[id(ctx)] = paths.setdefault(_addresses(ctx), len(paths))
                head = (op.kind, op.func_name, op.type, op.out_index, op.params, path)
                found = classes.get(head)
                if found is None:
                    classes[head] = [i]
                else:
                    found.append(i)
        sig = self.sig = [-1 - i for i in range(len(ops))]
        key_of = _Keys().of
        n = 0
        for members in classes.values():
            if len(members) == 1:
                sig[members[0]] = n
                n += 1
                continue
            table: dict[Hashable, int] = {}
            for i in members:
                op = ops[i]
                kwargs = op.kwargs
                key = (key_of(op.args), key_of(kwargs) if kwargs else ())
                s = table.get(key)
                if s is None:
                    s = table[key] = n
                    n += 1
                sig[i] = s

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


def _positions(pos: dict[int, int], idx: list[Any]) -> list[list[int]]:
    """Call indices -> positions among the kept ops (indices of ops not kept dropped)."""
    get = pos.__getitem__
    out: list[list[int]] = []
    for cs in idx:
        try:
            out.append(list(map(get, cs)))
        except KeyError:
            out.append([pos[c] for c in cs if c in pos])
    return out


def _addresses(ctx: tuple[ModuleCallRecord, ...]) -> tuple[str, ...]:
    return tuple([c.address for c in ctx])


def _norm(v: Any) -> Hashable:
    """A hashable, value-based stand-in for a non-tensor argument template."""
    t = type(v)
    if t is Ref:
        return _TENSOR
    if t in _SCALARS or v is None:
        return (t, v)  # the type too: ``x * 2`` and ``x * 2.0`` are different ops
    if t is ParamRef:
        return v  # type: ignore[no-any-return]
    if t is tuple or t is list:
        return (t, *[_TENSOR if type(x) is Ref else _norm(x) for x in v])
    if t is dict:
        return ("dict", *[(k, _norm(x)) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))])
    if t is slice:
        return ("slice", _norm(v.start), _norm(v.stop), _norm(v.step))
    if isinstance(v, tuple):  # torch.Size, named tuples
        return (t, *[_norm(x) for x in v])
    try:
        hash(v)
    except TypeError:
        return ("repr", t, repr(v))
    return (t, v)


class _Keys:
    """Keys of argument templates, as fine as :func:`_norm` (equal keys only for equal
    normalised values) and cheaper: how to key a sequence is decided once per tuple of
    item types (a *plan*), then applied with C-level calls.

    A sequence is keyed as ``(type, item types, items)``: flat items (scalars, None,
    ParamRef) as they are, a Ref left out (its type says it was one), others keyed in
    turn. A dict with string keys is keyed by its sorted keys and the key of its values
    in that order (``_norm`` sorts the items too). Anything else is ``_norm``'s; no key
    of one form equals one of another.
    """

    def __init__(self) -> None:
        self.plans: dict[tuple[type, ...], Any] = {}
        self.dict_plans: dict[tuple[Any, ...], Any] = {}

    def of(self, v: Any) -> Hashable:
        t = type(v)
        if t is tuple or t is list or (t is not dict and isinstance(v, tuple)):
            types = tuple(map(type, v))
            plan = self.plans.get(types)
            if plan is None:
                plan = self.plans[types] = _plan(types)
            if plan is _AS_IS:
                return (t, types, tuple(v))
            if plan is _DEEP:
                of = self.of
                return (t, types, tuple([None if u is Ref else x if u in _FLAT else of(x)
                                         for u, x in zip(types, v, strict=True)]))
            return (t, types, plan(v))  # an itemgetter of the items that are no Ref
        if t is dict:
            keys = tuple(v)
            getter = self.dict_plans.get(keys)
            if getter is None:
                getter = self.dict_plans[keys] = _dict_plan(keys)
            if getter is not _DEEP:
                names, values = getter
                return (dict, names, self.of(values(v)))
        return _norm(v)


# Values a key holds as they are, beside their type.
_FLAT = frozenset({Ref, ParamRef, bool, int, float, str, NoneType})
_AS_IS, _DEEP = object(), object()


def _plan(types: tuple[type, ...]) -> Any:
    """How to key a sequence with these item types (see :class:`_Keys`)."""
    if not all(u in _FLAT for u in types):
        return _DEEP
    kept = [i for i, u in enumerate(types) if u is not Ref]
    if len(kept) == len(types):
        return _AS_IS
    getter = itemgetter(*kept) if kept else None
    # itemgetter of one index gives the item, of none: nothing; keep a tuple
    return ((lambda v: ()) if getter is None else
            (lambda v: (getter(v),)) if len(kept) == 1 else getter)


def _dict_plan(keys: tuple[Any, ...]) -> Any:
    """Sorted keys and how to read the values in that order (``_DEEP``: not all str)."""
    if not all(type(k) is str for k in keys):
        return _DEEP
    names = tuple(sorted(keys))
    if len(names) == 1:
        name = names[0]
        return names, lambda v: (v[name],)
    return names, itemgetter(*names)


# --------------------------------------------------------------------------- groups
class _Groups:
    """Union-find over op positions; grown groups remember the iteration of each pass.

    A grown group is *anchored* to a rule-1 layer S (passes at positions s_1 < ... < s_n).
    The iteration of a member x is the number of passes of S executed before it. A union
    that would put two members in the same iteration is refused: passes of one layer
    always lie in distinct iterations.
    """

    def __init__(self, n: int) -> None:
        self.up = list(range(n))
        self.first = list(range(n))
        self.members: list[list[int]] = [[i] for i in range(n)]
        self.anchor = [-1] * n
        self.iters: list[set[int] | None] = [None] * n
        self.seeds: list[list[int]] = []

    def find(self, i: int) -> int:
        up = self.up
        root = i
        while up[root] != root:
            root = up[root]
        while up[i] != root:
            up[i], i = root, up[i]
        return root

    def firsts(self) -> list[int]:
        """For each position, the first position of its group."""
        out = list(range(len(self.up)))
        for members in self.members:
            if len(members) > 1:
                first = min(members)
                for m in members:
                    out[m] = first
        return out

    def merge(self, ra: int, rb: int) -> int:
        """Unconditional union of two roots; returns the new root."""
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.up[rb] = ra
        self.members[ra].extend(self.members[rb])
        self.members[rb] = []
        self.first[ra] = min(self.first[ra], self.first[rb])
        return ra

    def _iters(self, root: int, seed: int) -> set[int] | None:
        """Iterations of a root's members w.r.t. a seed; None if two collide."""
        if self.anchor[root] == seed and self.iters[root] is not None:
            return self.iters[root]
        s = self.seeds[seed]
        found = {bisect_right(s, x) for x in self.members[root]}
        return found if len(found) == len(self.members[root]) else None

    def union(self, a: int, b: int, seed: int) -> bool:
        """Join the groups of ``a`` and ``b`` unless two passes would share an iteration."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        big, small = (ra, rb) if len(self.members[ra]) >= len(self.members[rb]) else (rb, ra)
        anchor = self.anchor[big] if self.anchor[big] >= 0 else (
            self.anchor[small] if self.anchor[small] >= 0 else seed)
        ib, is_ = self._iters(big, anchor), self._iters(small, anchor)
        if ib is None or is_ is None or not ib.isdisjoint(is_):
            return False
        root = self.merge(big, small)  # keeps ``big`` as the root
        ib.update(is_)  # in place: small-into-large keeps growth near-linear
        self.anchor[root] = anchor
        self.iters[root] = ib
        return True


# --------------------------------------------------------------------------- rule 1
def _rule1(ops: Sequence[OpRecord], groups: _Groups) -> list[tuple[list[int], int]]:
    """Same parameters applied several times: passes. Returns (positions, seed id)."""
    by_key: dict[Hashable, list[int]] = {}
    for i, op in enumerate(ops):
        if op.params and op.kind == OP:
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
    # free: growable and still alone in its group (a non-root's members list is empty)
    free = [e and len(m) == 1 for e, m in zip(g.eligible, groups.members, strict=True)]
    sig = g.sig
    occurrences: dict[int, list[int]] = {}
    rank = [0] * len(free)  # where op i sits in the occurrences of its signature
    for i, f in enumerate(free):
        if f:
            occ = occurrences.setdefault(sig[i], [])
            rank[i] = len(occ)
            occ.append(i)
    # Blocks lie inside runs of consecutive free ops [start, end); a repeat found ends
    # a block at ``lo``, where the next search starts.
    for start, end in _runs(free):
        lo, i = start, start + 1
        while i < end:
            k = rank[i]
            if k == 0 or occurrences[sig[i]][k - 1] < lo:  # no earlier occurrence in reach
                i += 1
                continue
            best = _best_repeat(g, free, occurrences, i, lo, end)
            if best is None:
                i += 1
                continue
            first, period, count = best
            for t in range(period):
                root = groups.find(first + t)
                for m in range(1, count):
                    root = groups.merge(root, groups.find(first + m * period + t))
            lo = first + count * period
            i = lo + 1


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


def _best_repeat(g: _Graph, free: list[bool], occurrences: dict[int, list[int]], i: int,
                 lo: int, hi: int) -> tuple[int, int, int] | None:
    """The longest repeat whose second block starts at ``i``: (start, period, blocks).

    The first block may start no earlier than ``lo``; both blocks end by ``hi``.
    """
    occ = occurrences[g.sig[i]]
    k = bisect_right(occ, i - 1)
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
