"""Union-find over op positions for :mod:`lens.tracing.loops` (layers are its groups)."""

from __future__ import annotations

from bisect import bisect_right


class _Groups:
    """Union-find over op positions; grown groups remember the iteration of each pass.

    A grown group is *anchored* to a rule-1 layer S (passes at positions s_1 < ... < s_n).
    The iteration of a member x is the number of passes of S executed before it. A union
    that would put two members in the same iteration is refused: passes of one layer
    always lie in distinct iterations.
    """

    def __init__(self, n: int) -> None:
        self.up = list(range(n))
        # members of each root of a group of two or more (an op alone has no entry)
        self.members: dict[int, list[int]] = {}
        self.anchor: dict[int, int] = {}
        self.iters: dict[int, set[int]] = {}
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
        for members in self.members.values():
            first = min(members)
            for m in members:
                out[m] = first
        return out

    def merge(self, ra: int, rb: int) -> int:
        """Unconditional union of two roots; returns the new root."""
        members = self.members
        ma, mb = members.get(ra), members.get(rb)
        if (len(ma) if ma else 1) < (len(mb) if mb else 1):
            ra, rb = rb, ra
        self.up[rb] = ra
        into = members.get(ra)
        if into is None:
            into = members[ra] = [ra]
        into.extend(members.pop(rb, (rb,)))
        return ra

    def _iters(self, root: int, seed: int) -> set[int] | None:
        """Iterations of a root's members w.r.t. a seed; None if two collide."""
        if self.anchor.get(root) == seed and root in self.iters:
            return self.iters[root]
        s = self.seeds[seed]
        members = self.members.get(root) or (root,)
        found = {bisect_right(s, x) for x in members}
        return found if len(found) == len(members) else None

    def union(self, a: int, b: int, seed: int) -> bool:
        """Join the groups of ``a`` and ``b`` unless two passes would share an iteration."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        ma, mb = self.members.get(ra), self.members.get(rb)
        big, small = (ra, rb) if (len(ma) if ma else 1) >= (len(mb) if mb else 1) else (rb, ra)
        anchor = self.anchor.get(big, self.anchor.get(small, seed))
        ib, is_ = self._iters(big, anchor), self._iters(small, anchor)
        if ib is None or is_ is None or not ib.isdisjoint(is_):
            return False
        root = self.merge(big, small)  # keeps ``big`` as the root
        ib.update(is_)  # in place: small-into-large keeps growth near-linear
        self.anchor[root] = anchor
        self.iters[root] = ib
        return True
