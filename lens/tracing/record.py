"""Light paths: ``tl.record`` (capture now, build the Trace later) and ``tl.pluck`` (one
activation in one call).

``record`` runs the capture engine exactly as ``tl.trace`` does but stops before
postprocessing (orphan trimming, loop detection, labels), which is most of the cost of a
trace beyond the forward itself. The :class:`Recording` gives the kept payloads by call
index at once and builds the full :class:`Trace` on demand (``to_trace()``).

``pluck`` returns the output of the first op a site matches, at the lowest cost that site
allows:

- a selector decidable while the model runs (``tl.func('relu')``, ``tl.in_module(...)``)
  or a module address (``'features.6'``, ``'fc:2'``, ``tl.module(...)``): one forward that
  halts right after the op, keeping only its payload, with no postprocessing;
- a final label (``'relu_1_2'``, ``'linear_1_1:2'``, ``tl.label(...)``): labels exist only
  after postprocessing, so one full forward is needed. Rather than a metadata-only pass
  followed by a halted second pass (two forwards, and a second pass whose random draws
  would differ from the first), lens runs one pass that keeps, undecided, only the ops of
  the label's type (``relu`` for ``'relu_1_2'``) and picks the labelled one after
  postprocessing: one forward, memory bounded by the ops of that type;
- anything else (ordinals, substrings, lookahead selectors): one full forward with
  ``save=site``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch

from ..capture import check_model, hooked_module
from ..capture.interceptors import SavePolicy
from ..capture.known import check_names
from ..capture.model_index import ModelIndex
from ..capture.policy import STAGE_RANK, SelectorPolicy
from ..capture.records import OpRecord, RecordTable
from ..errors import CaptureError, LookupKeyError, PayloadError, expect
from ..selectors import LABEL_PATTERN, Label, Selector, coerce, module
from ..selectors._places import ADDRESS
from .api import Captured, CaptureOptions, capture, collector_paused
from .sparse import SparseRecording, record_sparse
from .traces import Trace


class Recording:
    """A finished capture, not yet postprocessed.

    ``payloads`` maps call index -> kept tensor; ``recording[i]`` is one of them and
    ``recording['relu']`` lists the kept payloads of ops with that function name or type,
    in call order. ``to_trace()`` builds the full :class:`Trace` (once; later calls return
    the same object). Payloads of selectors decidable only on the finished trace (final
    labels, ordinals) are decided by ``to_trace()``.
    """

    def __init__(self, captured: Captured) -> None:
        self.captured = captured
        self.recorder = captured.rec
        self.model = captured.model
        self.output = captured.output
        self.save_spec = captured.save_spec
        self.elapsed = captured.elapsed
        self._trace: Trace | None = None

    @property
    def ops(self) -> RecordTable:
        """Every recorded op in call order (raw records: no labels yet)."""
        return self.recorder.ops

    @property
    def halted(self) -> bool:
        return self.recorder.halted

    @property
    def payloads(self) -> dict[int, torch.Tensor]:
        return {op.call_index: op.payload for op in self.recorder.ops if op.payload is not None}

    def __len__(self) -> int:
        return len(self.recorder.ops)

    def __iter__(self) -> Iterator[OpRecord]:
        return iter(self.recorder.ops)

    def __getitem__(self, key: int | str) -> Any:
        ops = self.recorder.ops
        if isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < len(ops):
                raise LookupKeyError(f"Call index {key} is out of range: this recording "
                                     f"has {len(ops)} ops (0 .. {len(ops) - 1}).")
            op = ops[key]
            if op.payload is None:
                raise PayloadError(
                    f"Op #{key} ({op.func_name}) was recorded without its payload "
                    f"(save={self.save_spec!r}). Record with a save= selector that matches "
                    "it, or call .to_trace() first if the selector needs the finished "
                    "trace (labels, ordinals).")
            return op.payload
        if isinstance(key, str):
            found = [op.payload for op in ops
                     if op.payload is not None and key in (op.func_name, op.type)]
            if not found and not any(key in (op.func_name, op.type) for op in ops):
                raise LookupKeyError(
                    f"No recorded op has function or type {key!r}. A recording is indexed "
                    "by call index (int) or function name ('relu'); build the trace with "
                    ".to_trace() to index by label or module address.")
            return found
        raise LookupKeyError(f"Index a recording with a call index (int) or a function "
                             f"name (str); got {type(key).__name__}.")

    def to_trace(self, *, keep_orphans: bool | None = None,
                 detect_loops: bool | None = None) -> Trace:
        """Postprocess into a :class:`Trace` (labels, layers, modules)."""
        if self._trace is None:
            with collector_paused():
                self._trace = self.captured.to_trace(keep_orphans=keep_orphans,
                                                     detect_loops=detect_loops)
        return self._trace

    def __repr__(self) -> str:
        state = "halted, " if self.halted else ""
        return (f"<Recording of {type(self.model).__name__}: {len(self)} ops, {state}"
                f"{len(self.payloads)} payloads kept>")


def record(model: Any, *args: Any, input_kwargs: dict[str, Any] | None = None,
           save: Any = True, detach: bool = False, device: Any = None, dtype: Any = None,
           halt: Any = None, intervene: Any = None, keep_orphans: bool = False,
           detect_loops: bool = True, lookback: int | None = None,
           lookback_payload_policy: str = "metadata_only",
           code_context: bool = False, intervention_ready: bool = False,
           save_grads: Any = False, save_at: Any = None,
           sparse: bool = False) -> Recording | SparseRecording:
    """Run ``model(*args, **input_kwargs)`` under the capture engine, skip postprocessing.

    Takes the options of ``tl.trace``; ``keep_orphans`` and ``detect_loops`` apply when
    ``.to_trace()`` builds the trace. Cheapest with a sparse ``save=`` selector.

    ``sparse=True``: for ``save=``/``halt=`` decided at module exits (``tl.module(...)``,
    ``'a.b:2'``), keep those module outputs with forward hooks on just those modules and
    record no op (the cost of plain hooks); for ``save=tl.in_module('a') & tl.func(...)``
    (or an ``|`` of such parts and module outputs), keep those ops with a function mode
    entered only while ``a`` runs. Returns a :class:`SparseRecording`, addressed by module
    call (``rec['a.b:2']``, ``rec.ops_in('a:1')``): it has no call indices, labels or
    ``to_trace()``.
    """
    if sparse is not False:
        expect(sparse, bool, "tl.record(..., sparse=)", "True or False")
        extra = {"intervene": intervene, "lookback": lookback, "code_context": code_context,
                 "intervention_ready": intervention_ready, "save_grads": save_grads}
        used = [k for k, v in extra.items() if v not in (None, False)]
        if used:
            raise CaptureError(f"tl.record(..., sparse=True) keeps module outputs and "
                               f"scoped ops only; {', '.join(used)} need(s) the full "
                               "recorder. Drop "
                               "sparse=True to use them.")
        return record_sparse(model, args, input_kwargs, save, halt, detach, device, dtype)
    opts = CaptureOptions(
        save=save, detach=detach, device=device, dtype=dtype, halt=halt, intervene=intervene,
        keep_orphans=keep_orphans, detect_loops=detect_loops, lookback=lookback,
        lookback_payload_policy=lookback_payload_policy, code_context=code_context,
        intervention_ready=intervention_ready, save_grads=save_grads, save_at=save_at)
    done = capture(model, args, input_kwargs, opts, "tl.record")
    for rule in done.rec.interceptors:  # as tl.trace: a strict rule that matched nothing raises
        rule.close(done.rec if done.rec.halted else None)  # a halted run checks nothing
    return Recording(done)


_LABEL_TYPE = re.compile(r"^([a-z0-9]+)_\d")


class _TypeCandidates(SavePolicy):
    """Save policy for a final label: ops of the label's type wait for the final decision;
    every other op is dropped at once."""

    def __init__(self, selector: Selector, types: frozenset[str]) -> None:
        self.types = types
        self.final = SelectorPolicy(selector)

    def decide(self, op: Any, stage: str) -> bool | None:
        if stage == "final":
            return self.final.decide(op, stage)
        return None if op.type in self.types else False


def pluck(model: Any, *args: Any, site: Any = None, input_kwargs: dict[str, Any] | None = None,
          detach: bool = False, device: Any = None, dtype: Any = None) -> torch.Tensor:
    """The output tensor of the first op ``site`` matches: ``tl.pluck(model, x, 'relu_1_2')``.

    ``site`` is the last positional argument (or ``site=``): a final label, a module
    address (``'features.6'``, ``'fc:2'``) or a selector. See the module docstring for the
    cost of each kind.
    """
    if site is None:
        if not args:
            raise LookupKeyError("tl.pluck(model, *inputs, site): name the site to read, "
                                 "e.g. tl.pluck(model, x, 'relu_1_2').")
        args, site = args[:-1], args[-1]
    check_model(model, submodules=False)  # (the ModelIndex below checks them)
    index = ModelIndex(hooked_module(model))
    sel = _site_selector(site, index.addresses)
    opts = {"detach": detach, "device": device, "dtype": dtype}
    kwargs = dict(input_kwargs or {})
    if STAGE_RANK[sel.timing] <= 1:
        rec = record(model, *args, input_kwargs=kwargs, save=sel, halt=sel, **opts)
        ops: list[Any] = rec.ops
        for op in ops:
            if op.payload is not None and sel(op):
                return op.payload  # type: ignore[no-any-return]
        raise _no_match(site)
    types = _label_types(sel)
    if types is not None:
        candidates = CaptureOptions(save=sel, policy=_TypeCandidates(sel, types), **opts)
        with collector_paused():
            found = capture(model, args, kwargs, candidates, "tl.pluck").to_trace()
    else:
        found = record(model, *args, input_kwargs=kwargs, save=sel, **opts).to_trace()
    bound = sel.bind_ordinals(found.ops)
    for op in found.ops:
        if op.payload is not None and bound(op):
            return op.payload
    if isinstance(sel, Label):
        for name in sel.labels:
            found[name]  # noqa: B018 - raises LookupKeyError with the closest labels
    raise _no_match(site)


def _site_selector(site: Any, addresses: set[str]) -> Selector:
    if isinstance(site, str):
        hit = ADDRESS.match(site)
        if hit is not None and hit.group("address") in addresses:
            sel: Selector = module(site)
        else:
            sel = coerce(site, module_addresses=addresses)
    else:
        sel = coerce(site, module_addresses=addresses)
    sel.validate(module_addresses=frozenset(addresses))
    check_names(sel, addresses)
    return sel


def _label_types(sel: Selector) -> frozenset[str] | None:
    """Op types a label selector can match (None: not a plain label selector)."""
    if not isinstance(sel, Label):
        return None
    types = set()
    for name in sel.labels:
        found = _LABEL_TYPE.match(name) if LABEL_PATTERN.match(name) else None
        if found is None:
            return None
        types.add(found.group(1))
    return frozenset(types)


def _no_match(site: Any) -> LookupKeyError:
    return LookupKeyError(
        f"tl.pluck: {site!r} matched no op of this forward pass. Check the name with "
        "tl.trace(model, x, save=False).labels (labels) or model.named_modules() "
        "(module addresses).")
