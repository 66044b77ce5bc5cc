"""Storage versions: the graph follows storage, not tensor objects.

A write through any view (``x[1:3].zero_()``, ``x[0][:] = 1``, ``x.t().add_(1)``) is a new
version of the storage it lands in. The capture engine tells :class:`StorageLog` about
every write (which op, into which tensor) and about every payload it keeps; the log
answers two questions, each in time proportional to what it returns:

- copy on write: which kept payloads alias the storage about to be written, so they can
  be cloned first (payloads are indexed by storage lazily, at the first write after they
  were kept: a pass without in-place ops pays nothing);
- staleness: which writes landed in a tensor's storage after the op the engine maps the
  tensor to. A reader of such a tensor gets a ``refresh`` op as parent, whose parents are
  the stale op and the writes, and which :func:`refresh` recomputes on replay.

Ops that write state as a side effect (train-mode ``batch_norm`` updates its running
statistics) are listed by :func:`side_writes`; replay clones those arguments too.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any, NamedTuple

import torch
from torch import Tensor

Geometry = tuple[tuple[int, ...], tuple[int, ...], int]


class Write(NamedTuple):
    """One write into a storage: by op ``op``, into a tensor laid out as ``geometry``."""

    op: int
    geometry: Geometry
    dtype: torch.dtype
    opaque: bool  # the written values are not the op's output (a side effect)


def key(t: Tensor) -> int | None:
    """The identity of ``t``'s storage while it is alive (None: no storage to track)."""
    try:
        ptr: int = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return ptr if ptr else None


def version(t: Tensor) -> int:
    """``t._version``, or -1 for tensors without a version counter (inference mode)."""
    try:
        v: int = t._version
    except RuntimeError:
        return -1
    return v


def geometry(t: Tensor) -> Geometry:
    return tuple(t.shape), tuple(t.stride()), int(t.storage_offset())


def _span(g: Geometry) -> tuple[int, int]:
    size, stride, offset = g
    if not all(size):
        return offset, offset - 1  # empty: overlaps nothing
    lo = offset + sum((n - 1) * d for n, d in zip(size, stride, strict=True) if d < 0)
    hi = offset + sum((n - 1) * d for n, d in zip(size, stride, strict=True) if d > 0)
    return lo, hi


def may_overlap(a: Geometry, b: Geometry) -> bool:
    """Whether two layouts of one storage can share an element (their spans meet)."""
    (alo, ahi), (blo, bhi) = _span(a), _span(b)
    return alo <= bhi and blo <= ahi


class StorageLog:
    """Writes per storage and kept payloads per storage, for one capture."""

    def __init__(self) -> None:
        self.writes: dict[int, list[Write]] = {}
        self._write_ops: dict[int, list[int]] = {}  # same, op indices only (for bisect)
        self._kept: dict[int, list[int]] = {}  # storage -> ops whose payload may alias it
        self._unindexed: list[int] = []  # ops kept since the last write, not yet indexed

    @property
    def active(self) -> bool:
        return bool(self.writes)

    def kept(self, idx: int) -> None:
        """Op ``idx`` holds a payload (kept or pending) that may alias a storage."""
        self._unindexed.append(idx)

    @property
    def kept_fast(self) -> Callable[[int], None]:
        """:meth:`kept` as the list's own ``append`` (no Python frame per op; valid for
        the life of this log)."""
        return self._unindexed.append

    def before_write(self, target: Tensor, held: Callable[[int], Tensor | None],
                     replace: Callable[[int, Tensor], None]) -> None:
        """Copy on write: clone every held payload aliasing ``target``'s storage."""
        k = key(target)
        if k is None:
            return
        self._index(held)
        idxs = self._kept.pop(k, None)
        if not idxs:
            return
        with torch._C.DisableTorchFunction():
            for i in dict.fromkeys(idxs):
                t = held(i)
                if t is not None and key(t) == k:
                    replace(i, t.clone())

    def _index(self, held: Callable[[int], Tensor | None]) -> None:
        # emptied in place: the engine appends through this list's own bound append
        pending = self._unindexed[:]
        self._unindexed.clear()
        for i in pending:
            t = held(i)
            k = key(t) if t is not None else None
            if k is not None:
                self._kept.setdefault(k, []).append(i)

    def wrote(self, target: Tensor, op: int, opaque: bool = False) -> None:
        k = key(target)
        if k is None:
            return
        self.writes.setdefault(k, []).append(Write(op, geometry(target), target.dtype, opaque))
        self._write_ops.setdefault(k, []).append(op)

    def since(self, t: Tensor, op: int) -> list[Write] | None:
        """Writes into ``t``'s elements made after op ``op`` (the op ``t`` is mapped to);
        None when ``t``'s version moved but no write lens saw reached its storage."""
        k = key(t)
        ops = self._write_ops.get(k) if k is not None else None
        if not ops or k is None:
            return None
        found = self.writes[k][bisect_right(ops, op):]
        if not found:
            return None
        mine = geometry(t)
        return [w for w in found if w.opaque or may_overlap(mine, w.geometry)]

    def freeze(self, external: Iterable[Tensor], held: Callable[[int], Tensor | None],
               replace: Callable[[int, Tensor], None]) -> None:
        """At the end of a capture: payloads still aliasing a storage that was written and
        that outlives the pass (a parameter, a buffer, an input) are cloned, so running the
        model again never changes the finished trace."""
        if not self.writes:
            return
        written = {k for k in (key(t) for t in external) if k is not None} & set(self.writes)
        if not written:
            return
        self._index(held)
        with torch._C.DisableTorchFunction():
            for k in written:
                for i in dict.fromkeys(self._kept.pop(k, [])):
                    t = held(i)
                    if t is not None and key(t) == k:
                        replace(i, t.clone())


def refresh_layout(target: Tensor, writes: list[Write]) -> dict[str, Any]:
    """The keyword arguments of :func:`refresh` for ``target`` after ``writes``."""
    geoms = [geometry(target), *(w.geometry for w in writes)]
    base = min(g[2] for g in geoms)
    layout = tuple((s, st, off - base) for s, st, off in geoms)
    same = all(w.dtype == target.dtype for w in writes)
    return {"layout": layout, "same_dtype": same}


def refresh(target: Tensor, *written: Tensor, layout: tuple[Geometry, ...],
            same_dtype: bool = True, views: tuple[int, ...] = ()) -> Tensor:
    """``target`` as it reads after ``written`` were written into views of its storage.

    ``layout`` gives the geometry (size, stride, storage offset) of ``target`` then of
    each written tensor, offsets relative to the lowest of them. Each element of
    ``target`` takes the value of the last write that covers its storage position.
    Memory is proportional to the tensors' sizes (checked against ``layout``), never to
    a recorded offset. ``views`` (not used here) lists the view ops that tie ``target``
    and the written tensors to the storage: editing one replaces its tensor with a new
    one, which cuts it off the storage, so replay refuses such edits.
    """
    if not same_dtype:
        raise ValueError(
            "a write through a view of another dtype (x.view(torch.int32)...) cannot be "
            "recomputed element by element; edit an op after the write instead")
    tensors = (target, *written)
    if len(layout) != len(tensors) or any(
            tuple(t.shape) != tuple(g[0]) or len(g[1]) != t.dim()
            for t, g in zip(tensors, layout, strict=False)):
        raise ValueError("the recorded layout does not match the shapes of the tensors")
    where = _positions(layout[0], target.device).reshape(-1)
    out = target.reshape(-1)
    for value, geom in zip(written, layout[1:], strict=True):
        pos = _positions(geom, target.device).reshape(-1)
        if pos.numel() == 0:
            continue
        ordered, order = pos.sort()
        at = torch.searchsorted(ordered, where).clamp_(max=pos.numel() - 1)
        hit = ordered[at] == where
        out = torch.where(hit, value.reshape(-1)[order[at]].to(out.dtype), out)
    return out.reshape(target.shape)


def _positions(geom: Geometry, device: torch.device) -> Tensor:
    """Storage position of every element of a tensor laid out as ``geom``."""
    size, stride, offset = geom
    pos = torch.full((), offset, dtype=torch.long, device=device)
    for n, d in zip(size, stride, strict=True):
        pos = pos.unsqueeze(-1) + torch.arange(n, device=device) * d
    return pos


# Ops whose output may share storage with their first argument: editing one hands the
# model a new tensor in place of a view, so later writes no longer reach the base.
VIEW_NAMES = frozenset({
    "__getitem__", "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten",
    "transpose", "t", "T", "mT", "H", "mH", "permute", "movedim", "moveaxis", "swapaxes",
    "swapdims", "narrow", "select", "unsqueeze", "squeeze", "expand", "expand_as",
    "as_strided", "diagonal", "unfold", "split", "split_with_sizes", "tensor_split",
    "chunk", "unbind", "hsplit", "vsplit", "dsplit", "real", "imag", "view_as_real",
    "view_as_complex", "detach", "alias", "contiguous", "to", "type_as",
})


def severing_edits(records: list[Any], edited: Iterable[int]) -> list[tuple[int, int]]:
    """(edited op, refresh op) pairs where an edit would cut a view off its storage, or
    edits a refresh op itself (lens's record of a tensor after a write, not a model call)."""
    edited = set(edited)
    found = []
    for rec in records:
        if rec.func is refresh:
            for ci in (rec.call_index, *rec.kwargs.get("views", ())):
                if ci in edited:
                    found.append((ci, rec.call_index))
    return found


Slot = int | str  # a positional argument, or a keyword


@cache
def _side_table() -> dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], list[Slot]]]:
    F = torch.nn.functional
    stats = ((1, "running_mean"), (2, "running_var"))

    def bn(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Slot]:
        training = kwargs.get("training", args[5] if len(args) > 5 else False)
        return _present(args, kwargs, stats) if training else []

    def inorm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Slot]:
        use = kwargs.get("use_input_stats", args[5] if len(args) > 5 else True)
        return _present(args, kwargs, stats) if use else []

    def torch_bn(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Slot]:
        training = kwargs.get("training", args[5] if len(args) > 5 else False)
        return _present(args, kwargs, ((3, "running_mean"), (4, "running_var"))) \
            if training else []

    return {F.batch_norm: bn, F.instance_norm: inorm, torch.batch_norm: torch_bn}


def _present(args: tuple[Any, ...], kwargs: dict[str, Any],
             slots: tuple[tuple[int, str], ...]) -> list[Slot]:
    found: list[Slot] = []
    for pos, name in slots:
        if pos < len(args) and isinstance(args[pos], Tensor):
            found.append(pos)
        elif isinstance(kwargs.get(name), Tensor):
            found.append(name)
    return found


def has_side_writes(func: Any) -> bool:
    """Whether ``func`` may overwrite arguments besides its output (see
    :func:`side_writes`, which says which, given the arguments)."""
    try:
        return func in _side_table()
    except TypeError:  # an unhashable callable
        return False


def side_writes(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Slot]:
    """Arguments ``func`` overwrites besides its output (train-mode batch_norm's running
    statistics): positions or keywords."""
    try:
        rule = _side_table().get(func)
    except TypeError:  # an unhashable callable
        return []
    return rule(args, kwargs) if rule is not None else []


def at(args: tuple[Any, ...], kwargs: dict[str, Any], slot: Slot) -> Any:
    return kwargs[slot] if isinstance(slot, str) else args[slot]
