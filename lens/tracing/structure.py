"""Postprocessing paid once per graph, not once per trace.

Orphan trimming, loop detection and labelling (:mod:`lens.tracing.postprocess`,
:mod:`lens.tracing.loops`) depend on the structure of a recording only. Experiments trace
one model on many inputs of one shape, so the derived structure is kept, per model, under
a *fingerprint* of the records, and a later recording with an equal fingerprint gets it
applied without recomputing.

The fingerprint holds, for every record in call order, every field postprocessing reads:

* ``kind`` (inputs/outputs anchor orphan trimming; sources are labelled short; loops
  group only ``op``/``identity``), ``func_name`` and ``type`` (signatures, labels),
* ``parent_idx`` in order (trimming, argument slots, neighbours; ``child_idx`` is not
  included: the engine writes it from the parents alone, so equal parents give equal
  children),
* ``out_index`` and, for multi-output calls, ``call_id`` (sibling outputs),
* ``params`` (rule 1: same parameters applied again),
* the module path: ``module_ctx`` addresses (call numbers are not read),
* the argument templates ``args``/``kwargs``, with the type of every value (``x * 2`` and
  ``x * 2.0`` are different ops), at least as fine as ``argkeys._norm``,

plus the options that change the result: whether orphans are kept (``keep_orphans`` or a
halted run) and ``detect_loops``. Equal fingerprints give equal inputs to every step, so
reuse is correct by construction. Not read, so not included: shapes, dtypes, payloads,
``step``, ``bool_used``, ``output_of``, ``rng``/``mode``, timings. The count of records
and their order (``call_index`` is the position in the recording) are the tuple's.

A recording whose arguments hold a value other than plain scalars, strings, torch dtypes,
devices, layouts, memory formats, sizes and containers of them is not cached (the cache
would otherwise keep that value alive); it is postprocessed as before.

What is cached holds no records, payloads, tensors, modules or traces: call indices,
labels and numbers in tuples. Each hit makes fresh :class:`LayerInfo` rows, so no trace
can change another's. The cache of a model lives in a ``WeakKeyDictionary`` keyed by the
model (nothing is set on it; it does not keep it alive), bounded to :data:`PER_MODEL`
fingerprints. :func:`clear` empties it; :func:`cache_info` says how it was used.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import EllipsisType, NoneType
from typing import Any

import torch

from ..capture.records import OpRecord, ParamRef, Ref
from .layer import LayerInfo

# How many distinct graphs of one model are remembered (least recently used dropped).
PER_MODEL = 4

Postprocess = Callable[[Sequence[OpRecord], bool, bool], tuple[list[OpRecord], list[LayerInfo]]]

# Values a fingerprint may hold as they are (compared with their type alongside).
_FLAT = frozenset({Ref, ParamRef, int, float, bool, str, NoneType, EllipsisType,
                   torch.dtype, torch.device, torch.layout, torch.memory_format, torch.Size})


# What _key returns for a value the fingerprint will not hold.
_OPAQUE = object()


def _key(v: Any) -> Hashable:
    """A value-based key of an argument template, finer than ``argkeys._norm``: equal keys
    mean equal normalised arguments. Holds flat values only (else :data:`_OPAQUE`)."""
    t = type(v)
    if t in _FLAT:
        return v  # type: ignore[no-any-return]
    if t is dict:
        if not _FLAT.issuperset(map(type, v)):
            return _OPAQUE
        items = tuple([(k, type(k), type(x), _key(x)) for k, x in v.items()])
        return _OPAQUE if any(i[3] is _OPAQUE for i in items) else (dict, items)
    if t is slice:
        v = (v.start, v.stop, v.step)
    elif not isinstance(v, (tuple, list)):
        return _OPAQUE
    types = tuple(map(type, v))
    if _FLAT.issuperset(types):
        return (t, types, tuple(v))
    parts = tuple([_key(x) for x in v])
    return _OPAQUE if any(p is _OPAQUE for p in parts) else (t, types, parts)


def fingerprint(ops: Sequence[OpRecord], keep_orphans: bool,
                detect_loops: bool) -> tuple[Hashable, ...] | None:
    """Every fact postprocessing reads of ``ops`` (see the module docstring), or None
    when an argument holds a value the cache will not keep."""
    paths: dict[int, tuple[str, ...]] = {}
    rows: list[Hashable] = [keep_orphans, detect_loops]
    append, flat = rows.append, _FLAT.issuperset
    for op in ops:
        ctx = op.module_ctx
        path = paths.get(id(ctx))
        if path is None:
            path = paths[id(ctx)] = tuple([c.address for c in ctx])
        out_index, args = op.out_index, op.args
        types = tuple(map(type, args))  # the common case inline: flat arguments
        akey = (types, args) if type(args) is tuple and flat(types) else _key(args)
        kkey = _key(op.kwargs) if op.kwargs else None
        if akey is _OPAQUE or kkey is _OPAQUE:
            return None
        append((op.kind, op.func_name, op.type, out_index, op.params, path, op.parent_idx,
                op.call_id if out_index else None, akey, kkey))
    return tuple(rows)


@dataclass(frozen=True)
class Structure:
    """What postprocessing derived from one graph, by call index and position only."""

    kept: tuple[int, ...] | None  # call indices of the kept ops; None: every op
    layer_idx: tuple[int, ...]  # per kept op
    pass_num: tuple[int, ...]  # per kept op
    layers: tuple[tuple[str, str, str, int, tuple[int, ...]], ...]

    @classmethod
    def of(cls, n: int, kept: list[OpRecord], layers: list[LayerInfo]) -> Structure:
        return cls(
            kept=None if len(kept) == n else tuple([op.call_index for op in kept]),
            layer_idx=tuple([op.layer_idx for op in kept]),
            pass_num=tuple([op.pass_num for op in kept]),
            layers=tuple([(i.label, i.short_label, i.type, i.total_num, tuple(i.passes))
                          for i in layers]))

    def apply(self, ops: Sequence[OpRecord]) -> tuple[list[OpRecord], list[LayerInfo]]:
        """Write this structure onto a recording with the same fingerprint."""
        if self.kept is None:
            kept = list(ops)
        else:
            kept = [ops[i] for i in self.kept]
            keep = [False] * len(ops)
            for i in self.kept:
                keep[i] = True
            for op in kept:  # as postprocess.kept_ops leaves them
                if op.child_idx:
                    op.child_idx = [c for c in op.child_idx if keep[c]]
        for pos, (op, at, k) in enumerate(zip(kept, self.layer_idx, self.pass_num,
                                              strict=True)):
            op.pos, op.layer_idx, op.pass_num = pos, at, k
        layers = []
        for label, short, type_, total, passes in self.layers:
            info = LayerInfo(label, short, type_, total)
            info.passes = list(passes)
            layers.append(info)
        return kept, layers


class StructureCache:
    """The structures of one model's graphs, most recently used first, at most
    :data:`PER_MODEL`; safe to use from several threads.

    Fingerprints are compared, never hashed: a tuple's hash is not cached, so a dict
    would hash the whole fingerprint (about as costly as making it) on every lookup,
    while equality stops at the first difference (lengths first) and is a handful of
    comparisons for so few entries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[tuple[Hashable, ...], Structure]] = []
        self.hits = 0
        self.misses = 0

    def get(self, fp: tuple[Hashable, ...]) -> Structure | None:
        with self._lock:
            for i, (known, structure) in enumerate(self._entries):
                if known == fp:
                    self.hits += 1
                    if i:
                        self._entries.insert(0, self._entries.pop(i))
                    return structure
            self.misses += 1
            return None

    def put(self, fp: tuple[Hashable, ...], structure: Structure) -> None:
        with self._lock:
            self._entries = [(k, v) for k, v in self._entries if k != fp]
            self._entries.insert(0, (fp, structure))
            del self._entries[PER_MODEL:]

    def __len__(self) -> int:
        return len(self._entries)


_CACHES: weakref.WeakKeyDictionary[Any, StructureCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def _owner(model: Any) -> Any:
    """The object a model's cache is keyed by: a bound method's module, else the model."""
    return getattr(model, "__self__", model)


def cache_of(model: Any, create: bool = True) -> StructureCache | None:
    """The structure cache of ``model`` (None if it cannot be weakly referenced)."""
    owner = _owner(model)
    with _CACHES_LOCK:
        try:
            found = _CACHES.get(owner)
            if found is None and create:
                found = _CACHES[owner] = StructureCache()
        except TypeError:  # not weakly referenceable (or unhashable)
            return None
    return found


def clear(model: Any = None) -> None:
    """Forget the cached structures of ``model`` (of every model when None)."""
    with _CACHES_LOCK:
        if model is None:
            _CACHES.clear()
        else:
            with suppress(TypeError):  # not weakly referenceable: nothing cached
                _CACHES.pop(_owner(model), None)


def cache_info(model: Any) -> tuple[int, int, int]:
    """(hits, misses, graphs held) of ``model``'s structure cache."""
    found = cache_of(model, create=False)
    return (0, 0, 0) if found is None else (found.hits, found.misses, len(found))


def postprocess_cached(ops: Sequence[OpRecord], model: Any, keep_orphans: bool,
                       detect_loops: bool, compute: Postprocess
                       ) -> tuple[list[OpRecord], list[LayerInfo]]:
    """``compute(ops, keep_orphans, detect_loops)``, or its cached result for a recording
    of ``model`` with the same fingerprint."""
    cache = cache_of(model)
    fp = fingerprint(ops, keep_orphans, detect_loops) if cache is not None else None
    if cache is None or fp is None:
        return compute(ops, keep_orphans, detect_loops)
    found = cache.get(fp)
    if found is not None:
        return found.apply(ops)
    kept, layers = compute(ops, keep_orphans, detect_loops)
    cache.put(fp, Structure.of(len(ops), kept, layers))
    return kept, layers
