"""``tl.trace``: run a model once under the capture engine and return a :class:`Trace`."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from torch import nn

from ..capture import (
    PayloadOptions,
    Recorder,
    SaveAll,
    SaveNone,
    check_model,
    hooked_module,
    run_forward,
)
from ..capture.args import check_input_kwargs, check_options
from ..capture.interceptors import (
    SavePolicy,
    added_modules,
    bind_rules,
    rules_of,
    validate_rules,
)
from ..capture.known import check_names
from ..capture.model_index import ModelIndex
from ..capture.policy import PAYLOAD_POLICIES, PayloadPolicy, SelectorPolicy, halt_predicate
from ..capture.records import OpRecord
from ..capture.sink import StoredPayload
from ..capture.slicing import SlicedPayload, check_index
from ..errors import ArgumentTypeError, CaptureError, SelectorError, expect
from ..selectors import Label, LabelContains, Selector, coerce
from . import postprocess
from .grads import GradCapture
from .layer import LayerInfo
from .options import TraceOptions
from .structure import postprocess_cached
from .traces import Trace


def trace(model: Any, *args: Any, input_kwargs: dict[str, Any] | None = None,
          save: Any = True, detach: bool = False, device: Any = None, dtype: Any = None,
          halt: Any = None, intervene: Any = None, keep_orphans: bool = False,
          detect_loops: bool = True, lookback: int | None = None,
          lookback_payload_policy: str = "metadata_only",
          code_context: bool = False, intervention_ready: bool = False,
          save_grads: Any = False, save_at: Any = None, storage: Any = None) -> Trace:
    """Run ``model(*args, **input_kwargs)`` once and record every tensor op.

    ``model`` may be an nn.Module, a bound method of one (``model.generate``: the module's
    calls are numbered, one per decoding step, see ``tl.step``), or a function.

    ``save`` chooses which payloads to keep (True, False, a selector, or a list of labels,
    module addresses, ordinals and substrings); metadata is kept for every op regardless.
    ``halt`` stops the forward right after the first op a selector matches.
    ``intervene`` takes ``tl.when(...)`` rules (or a list) applied to ops as they run.
    ``save_at`` indexes every kept payload and keeps a compact copy of the slice
    (``(slice(None), slice(-1, None))``: the last position of each step), so memory
    follows the slice; such a trace cannot be replayed.
    ``lookback`` decides ``save=`` selectors that read later ops (``tl.followed_by``) that
    many ops after each candidate instead of on the finished pass; it needs
    ``lookback_payload_policy='detached_raw'`` (hold up to ``lookback`` candidate
    payloads, detached). ``code_context=True`` records each op's user call stack
    (``op.code_context``). ``storage=tl.to_disk(path)`` streams every kept payload to
    safetensors shards in ``path`` as it is produced (memory stays bounded) and reads
    them back lazily on ``op.payload``; the folder is then a saved trace (``tl.load``).
    """
    opts = CaptureOptions(
        save=save, detach=detach, device=device, dtype=dtype, halt=halt, intervene=intervene,
        keep_orphans=keep_orphans, detect_loops=detect_loops, lookback=lookback,
        lookback_payload_policy=lookback_payload_policy, code_context=code_context,
        intervention_ready=intervention_ready, save_grads=save_grads, save_at=save_at,
        storage=storage)
    # One pause for the whole call: the capture's scratch (its tensor map, one weak
    # reference and one tuple per op) is freed before the collector could visit it.
    with collector_paused():
        done = capture(model, args, input_kwargs, opts, "tl.trace")
        result = done.to_trace()
    if storage is not None:
        storage.close(result)
    for r in done.rec.interceptors:  # rules check what they matched (strict=True)
        r.close(result)
    return result


@dataclass(frozen=True)
class CaptureOptions:
    """Every option of one capture, as ``tl.trace`` and ``tl.record`` take them (see
    ``tl.trace`` for what each means); checked and applied by :func:`capture` alone."""

    save: Any = True
    detach: bool = False
    device: Any = None
    dtype: Any = None
    halt: Any = None
    intervene: Any = None
    keep_orphans: bool = False
    detect_loops: bool = True
    lookback: int | None = None
    lookback_payload_policy: str = "metadata_only"
    code_context: bool = False
    intervention_ready: bool = False
    save_grads: Any = False
    save_at: Any = None
    storage: Any = None
    # A save policy object used instead of one made from ``save=`` (lens's own callers:
    # tl.pluck keeps candidates of one op type until labels exist); not a user option.
    policy: SavePolicy | None = None


@dataclass
class Captured:
    """A finished forward under the capture engine, not yet postprocessed."""

    rec: Recorder
    model: Any
    save_sel: Selector | None
    output: Any
    elapsed: float
    rng: dict[str, Any] | None  # generator states before the forward (intervention_ready)
    opts: CaptureOptions

    @property
    def save_spec(self) -> Any:
        return self.save_sel if self.save_sel is not None else self.opts.save

    def to_trace(self, *, keep_orphans: bool | None = None,
                 detect_loops: bool | None = None) -> Trace:
        """Postprocess into a Trace whose options say how it was captured."""
        o = self.opts
        options = TraceOptions(
            keep_orphans=o.keep_orphans if keep_orphans is None else keep_orphans,
            detect_loops=o.detect_loops if detect_loops is None else detect_loops,
            intervention_ready=o.intervention_ready, save_grads=o.save_grads,
            rng_state=self.rng, sliced_payloads=o.save_at is not None)
        result = build(self.rec, self.model, self.output, self.save_spec, self.elapsed,
                       options=options)
        check_labels(result, self.save_sel)
        return result


def capture(model: Any, args: tuple[Any, ...], input_kwargs: dict[str, Any] | None,
            opts: CaptureOptions, who: str) -> Captured:
    """The one capture behind ``tl.trace`` and ``tl.record``: check the options, set up
    the recorder, snapshot the random state when the trace must replay, and run the
    forward with the cycle collector paused."""
    check_input_kwargs(who, input_kwargs)
    check_options(who, keep_orphans=opts.keep_orphans, detect_loops=opts.detect_loops)
    kwargs = dict(input_kwargs or {})
    rec, save_sel = recorder(model, args, kwargs, opts)
    if opts.storage is not None:
        rec.payload = _stored(rec.payload, opts.storage, opts.intervention_ready)
        rec._plain_payload = False
    # Replay and rerun re-draw random ops from the RNG state the capture started from.
    rng = _rng_snapshot() if opts.intervention_ready else None
    with collector_paused():
        t0 = perf_counter()
        output = run_forward(model, rec, args, kwargs)
        elapsed = perf_counter() - t0
    return Captured(rec, model, save_sel, output, elapsed, rng, opts)


def recorder(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
             opts: CaptureOptions) -> tuple[Recorder, Selector | None]:
    """Check the model and set up a Recorder for one call."""
    o = opts
    check_model(model, submodules=False)  # (the ModelIndex below checks them)
    check_options("tl.trace", lookback=o.lookback, device=o.device, dtype=o.dtype,
                  detach=o.detach, code_context=o.code_context,
                  intervention_ready=o.intervention_ready)
    payload = PayloadOptions(o.detach, o.device, o.dtype)
    if o.save_at is not None:
        check_index("tl.trace", o.save_at)
        if o.intervention_ready:
            raise CaptureError(
                "save_at= keeps a slice of each payload, but intervention_ready=True needs "
                "every payload whole (replay reads them). Drop one of the two.")
        payload = SlicedPayload(o.save_at, o.detach, o.device, o.dtype)
    index = ModelIndex(hooked_module(model))
    rules = rules_of(o.intervene)
    addresses = index.addresses | added_modules(rules, index.addresses)
    payloads = _payload_policy(o.lookback_payload_policy)
    if o.policy is not None:  # the caller decides payloads itself (tl.pluck)
        save_sel, policy = None, o.policy
    else:
        save_sel, policy = _policy(o.save, addresses, o.lookback, o.intervention_ready,
                                   payloads)
    halt_fn = halt_predicate(o.halt, addresses) if o.halt is not None else None
    validate_rules(rules, addresses)
    interceptors = bind_rules(rules, {
        "model": model, "args": args, "kwargs": kwargs, "module_addresses": addresses})
    if o.save_grads is not False and o.save_grads is not None:
        interceptors = (*interceptors, GradCapture(o.save_grads, addresses))
    rec = Recorder(hooked_module(model), policy=policy, interceptors=interceptors,
                   halt=halt_fn, payload=payload, code_context=o.code_context, index=index)
    return rec, save_sel


def _stored(payload: PayloadOptions, storage: Any, intervention_ready: bool) -> StoredPayload:
    if not (callable(getattr(storage, "write", None)) and callable(getattr(storage, "close",
                                                                           None))):
        raise ArgumentTypeError(f"tl.trace(..., storage=) takes tl.to_disk(path); got "
                                f"{type(storage).__name__} {storage!r:.60}.")
    if intervention_ready:
        raise CaptureError("storage= streams payloads to disk as detached copies, but "
                           "intervention_ready=True keeps them live for replay. Drop one.")
    return StoredPayload(payload, storage)


def check_labels(result: Trace, sel: Selector | None) -> None:
    """After the run: a ``save=`` selector naming a label no op carries is an error (with
    the closest labels), not a trace that silently saved nothing. A halted trace is not
    checked: the ops after the halt never ran."""
    if sel is None or result.halted:
        return
    if any(isinstance(node, (Label, LabelContains)) for node in sel.walk()):
        sel.validate(labels=result.keys())


def _rng_snapshot() -> dict[str, Any]:
    """The default generators' states: CPU, and each CUDA device once CUDA is in use."""
    import torch

    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def build(rec: Recorder, model: Any, output: Any, save_spec: Any, elapsed: float, *,
          options: TraceOptions | None = None) -> Trace:
    """Postprocess a finished recording into a Trace."""
    options = options if options is not None else TraceOptions()
    ops, layers = postprocess_cached(rec.ops, model, options.keep_orphans or rec.halted,
                                     options.detect_loops, _postprocess)
    index = rec.index
    result = Trace(ops=ops, records=rec.ops, layers=layers, model_name=_model_name(model),
                   module_calls=rec.module_calls, module_info=index.module_info,
                   param_meta=index.param_meta, param_values=index.param_values, output=output,
                   save_spec=save_spec, halted=rec.halted, elapsed=elapsed, options=options)
    for ic in rec.interceptors:
        if isinstance(ic, GradCapture):
            ic.bind(result)
    rec.finish(lambda r: result.op_at_call(r.call_index))
    return result


_GC_LOCK = threading.Lock()
_GC_PAUSED = [0, False]  # traces now running; whether the collector was on before them


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while records are created (restored after).

    Capture allocates a few small objects per op; the collector would otherwise traverse
    the growing record graph again and again, which roughly doubles the cost of
    bookkeeping on models with many small ops. Reference counting still frees memory.
    The collector is process-wide: with traces running in several threads, the first to
    start pauses it and the last to finish restores it (under a lock, so no interleaving
    can leave it off).
    """
    with _GC_LOCK:
        if _GC_PAUSED[0] == 0:
            _GC_PAUSED[1] = gc.isenabled()
            gc.disable()
        _GC_PAUSED[0] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_PAUSED[0] -= 1
            if _GC_PAUSED[0] == 0 and _GC_PAUSED[1]:
                gc.enable()


def _postprocess(records: Sequence[OpRecord], keep_orphans: bool, detect_loops: bool
                 ) -> tuple[list[OpRecord], list[LayerInfo]]:
    """Trim orphans, group passes into layers and label them (what a hit of the
    structure cache skips)."""
    ops = postprocess.kept_ops(records, keep_orphans)
    grouper = _grouper(detect_loops)
    return ops, postprocess.assign_labels(ops, grouper(ops))


def _grouper(detect_loops: bool) -> Callable[[list[OpRecord]], list[int]]:
    try:
        from .loops import find_layers
    except ImportError:
        return postprocess.singleton_groups
    return lambda ops: find_layers(ops, detect_loops=detect_loops)


def _payload_policy(value: Any) -> PayloadPolicy:
    expect(value, str, "tl.trace(..., lookback_payload_policy=)",
           f"one of {', '.join(map(repr, PAYLOAD_POLICIES))}")
    for known in PAYLOAD_POLICIES:
        if value == known:
            return known
    raise SelectorError(
        f"lookback_payload_policy={value!r} is not a policy; use 'metadata_only' (hold no "
        "candidate payloads) or 'detached_raw' (hold up to lookback of them, detached).")


def _policy(save: Any, addresses: set[str], lookback: int | None,
            intervention_ready: bool, payloads: PayloadPolicy = "metadata_only"
            ) -> tuple[Selector | None, Any]:
    if save is True:
        return None, SaveAll()
    if save is False or save is None:
        return None, SaveNone() if not intervention_ready else SaveAll()
    sel = coerce(save, module_addresses=addresses)
    sel.validate(module_addresses=addresses)
    check_names(sel, addresses)
    if intervention_ready:
        return sel, SaveAll()
    return sel, SelectorPolicy(sel, lookback or 0, payloads)


def _model_name(model: Any) -> str:
    if isinstance(model, nn.Module):
        return type(model).__name__
    owner = hooked_module(model)
    if owner is not None:  # a bound method: 'GPT2LMHeadModel.generate'
        return f"{type(owner).__name__}.{model.__name__}"
    return getattr(model, "__name__", type(model).__name__)
