"""``tl.load(path)``: read a trace written by ``tl.save`` — safely.

Loading parses JSON and a safetensors file through lens's own validating readers
(:mod:`lens.io._safe`), resolves function names only through the explicit table of pure
tensor operations in :mod:`lens.io.allowlist` (one dict lookup, never an attribute
search), and checks every field's type and every
graph reference. Anything unexpected (a newer schema, a function outside the allow-list,
a truncated tensor file, a field of the wrong type) raises :class:`LoadError`; nothing
named in the file is imported, evaluated or called.
"""

from __future__ import annotations

import os
import stat
import weakref
from pathlib import Path
from typing import Any

import torch

from ..capture import modes
from ..capture.fired import set_fired
from ..capture.records import OP, ModuleCallRecord, OpRecord, RecordTable
from ..capture.template import template_refs
from ..errors import LoadError, ReplayError
from ..tracing import Op, Trace
from ..tracing.layer import LayerInfo
from ..tracing.options import TraceOptions
from . import _sizes, names
from ._safe import loads_json, read_regular
from ._shards import ShardPayload
from ._tensors import read_trace_tensors
from .schema import (
    FORMAT,
    JSON_NAME,
    SCHEMA_VERSION,
    TENSORS_NAME,
    Opaque,
    Reader,
    Repr,
    contains_opaque,
    decode,
    dtype_named,
)

# Slots for every recorded op (orphans included) are allocated up front: more than this
# many is refused rather than trusted.
MAX_RECORDED = 1 << 24


class NotReplayable:
    """Stands in for the function of a loaded op that cannot be re-executed.

    Printing and indexing the op work as usual; calling it (replay) raises
    :class:`ReplayError` saying why.
    """

    def __init__(self, func_name: str, reason: str, func: Any = None) -> None:
        self.__name__ = func_name
        self.reason = reason
        self.func = func
        self.label = func_name  # the op's label, once the trace is built

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        label = self.label
        raise ReplayError(
            f"{label} ({self.__name__}) cannot be replayed from this loaded trace: "
            f"{self.reason}. Replay a live trace instead (tl.trace(model, ...)).")

    def __repr__(self) -> str:
        return f"<not replayable: {self.__name__}>"


def replayable(op: Op | OpRecord) -> bool:
    """False for a loaded op whose function or arguments could not be restored."""
    return not isinstance(op.func, NotReplayable)


def load(path: str | os.PathLike[str], *, device: Any = None,
         max_op_bytes: int = _sizes.MAX_OP_BYTES, lazy: bool = False) -> Trace:
    """Read a trace saved with ``tl.save``. Tensors land on the CPU, or on ``device``.

    ``path`` is the folder ``tl.save`` wrote; it may itself be a symbolic link (your
    choice), but ``trace.json`` and ``tensors.safetensors`` inside it must be regular
    files: a link, FIFO or device in their place is refused, never followed or opened.
    Every field is checked (types, ranges, references, tensor headers) before it is used;
    anything wrong raises :class:`LoadError` naming the file and the field.

    Replaying a loaded trace never allocates by a number nobody checked: every op is first
    run on the ``meta`` device from its recorded shapes (see :mod:`lens.io._sizes`); an op
    whose arguments disagree with its recorded shape, or whose output would be larger than
    ``max_op_bytes`` (8 GiB by default), loads for reading but refuses to replay.

    Payloads a streamed capture (``tl.to_disk``) wrote to shards are read with the rest,
    or with ``lazy=True`` left there: each shard's header is checked now, and
    ``op.payload`` reads its tensor from the shard on access (a small cache aside).
    """
    if type(lazy) is not bool:
        raise LoadError(f"tl.load(..., lazy=) must be True or False; got {lazy!r:.60}.")
    if type(max_op_bytes) is not int or max_op_bytes <= 0:
        raise LoadError(f"tl.load(..., max_op_bytes=) must be a positive int; got "
                        f"{max_op_bytes!r:.80}.")
    root = _trace_dir(path)
    text = read_regular(root, JSON_NAME, str(root / JSON_NAME))
    blob = read_regular(root, TENSORS_NAME, str(root / TENSORS_NAME))
    return from_bytes(text, blob, root, device=device, max_op_bytes=max_op_bytes, lazy=lazy)


def from_bytes(text: bytes | bytearray, blob: bytearray, root: Path, *,
               device: Any = None, max_op_bytes: int = _sizes.MAX_OP_BYTES,
               lazy: bool = False) -> Trace:
    """The trace held by the bytes of ``trace.json`` and ``tensors.safetensors`` (``root``
    only names them in messages): every check of :func:`load` but the file system's."""
    doc = _read_json(text, root / JSON_NAME)
    try:
        tensors, handles = read_trace_tensors(blob, root / TENSORS_NAME, doc, device, lazy)
        return _build(doc, tensors, max_op_bytes, handles)
    except LoadError as e:  # say which file the field path is in
        msg = str(e)
        if msg.startswith(str(root)):
            raise
        raise LoadError(f"{root / JSON_NAME}: {msg}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError,
            ArithmeticError) as e:
        raise LoadError(f"{root / JSON_NAME} is malformed: {type(e).__name__}: {e}") from None


def _trace_dir(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise LoadError(f"tl.load needs the path (str or os.PathLike) of a folder written by "
                        f"tl.save; got {type(path).__name__} {path!r:.60}.")
    root = Path(path)
    try:
        mode = os.stat(root).st_mode  # follows a link: the folder itself may be one
    except OSError:
        raise LoadError(f"No saved trace at {root}: that folder is missing.") from None
    if not stat.S_ISDIR(mode):
        raise LoadError(f"No saved trace at {root}: it is a file, not a folder. tl.save writes "
                        f"a folder holding {JSON_NAME} and {TENSORS_NAME}; pass that folder.")
    return root


def _read_json(text: bytes | bytearray, file: Path) -> Reader:
    doc = loads_json(text, str(file))
    r = Reader(doc, JSON_NAME)
    if doc.get("format") != FORMAT:
        raise LoadError(f"{file} is not a lens trace (format {doc.get('format')!r:.60}).")
    version = r.integer("schema_version")
    if version > SCHEMA_VERSION:
        raise LoadError(
            f"{file} was written with trace schema version {version}, newer than this "
            f"lens reads (up to {SCHEMA_VERSION}). Upgrade lens to load it.")
    if version < 1:
        raise LoadError(f"{file}: invalid schema version {version}.")
    return r


def _build(doc: Reader, tensors: dict[str, torch.Tensor],
           max_op_bytes: int = _sizes.MAX_OP_BYTES,
           handles: dict[str, ShardPayload] | None = None) -> Trace:
    calls = _module_calls(doc)
    n = doc.integer("num_recorded")
    if not 0 <= n <= MAX_RECORDED:
        raise LoadError(f"{doc.where}.num_recorded: {n} is out of range (0 to {MAX_RECORDED}).")
    slots = RecordTable([None] * n)
    slots_ref = weakref.ref(slots)
    ops: list[OpRecord] = []
    for i, raw in enumerate(doc.array("ops")):
        op = _op(Reader(raw, f"ops[{i}]"), slots_ref, calls, tensors, handles or {})
        if not 0 <= op.call_index < n or slots[op.call_index] is not None:
            raise LoadError(f"ops[{i}]: call index {op.call_index} is out of range or repeated.")
        if ops and op.call_index <= ops[-1].call_index:
            raise LoadError(f"ops[{i}]: ops must be in call order.")
        slots[op.call_index] = op
        ops.append(op)
    _check_graph(ops, slots, calls)
    layers = _layers(doc, ops)
    params = doc.mapping("params")
    meta: dict[str, tuple[tuple[int, ...], int, torch.dtype, bool]] = {}
    values: dict[str, torch.Tensor] = {}
    for name, raw in params.items():
        p = Reader(raw, f"params.{name}")
        meta[name] = (tuple(p.integers("shape")), p.integer("numel"),
                      dtype_named(p.raw("dtype"), p.where), p.flag("requires_grad"))
        key = p.text("tensor", optional=True)
        if key is not None:
            value = _tensor(tensors, key, p.where)
            if meta[name][3] and (value.is_floating_point() or value.is_complex()):
                # As in the model: kernels that check for autograd (MHA's fast path) then
                # take the same route in replay as at capture.
                value.requires_grad_(True)
            values[name] = value
    info = {}
    for address, raw in doc.mapping("module_info").items():
        if (not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[0], str)
                or not isinstance(raw[1], list) or not all(isinstance(x, str) for x in raw[1])):
            raise LoadError(f"module_info.{address}: expected [class name, [param names]].")
        info[address] = (raw[0], tuple(raw[1]))
    options = _options(doc)
    candidates = [op for op in ops if op.kind == OP and replayable(op)]
    for ci, reason in _sizes.unreplayable_reasons(candidates, slots, meta,
                                                  max_op_bytes).items():
        op = slots[ci]
        op.func = NotReplayable(op.func_name, reason, op.func)
    trace = Trace(ops=ops, records=slots, layers=layers, model_name=doc.text("model_name"),
                  module_calls=calls, module_info=info, param_meta=meta, param_values=values,
                  output=decode(doc.raw("output"), "output", tensors),
                  save_spec=_plain(decode(doc.raw("save_spec"), "save_spec")),
                  halted=doc.flag("halted"), elapsed=doc.number("elapsed"), options=options)
    for view in trace.ops:
        if isinstance(view.func, NotReplayable):
            view.func.label = view.label
    return trace


def _options(doc: Reader) -> TraceOptions:
    raw = doc.mapping("options")
    unknown = sorted(set(raw) - TraceOptions.names())
    if unknown:
        raise LoadError(f"options: unknown option {unknown[0]!r:.60}; known: "
                        f"{', '.join(sorted(TraceOptions.names()))}.")
    return TraceOptions.of({k: _plain(decode(v, f"options.{k}")) for k, v in raw.items()})


def _plain(v: Any) -> Any:
    return Repr(v.text) if isinstance(v, Opaque) else v


def _tensor(tensors: dict[str, torch.Tensor], key: Any, where: str) -> torch.Tensor:
    if not isinstance(key, str) or key not in tensors:
        raise LoadError(f"{where}: tensor {key!r:.60} is not in {TENSORS_NAME}.")
    return tensors[key]


def _module_calls(doc: Reader) -> list[ModuleCallRecord]:
    calls: list[ModuleCallRecord] = []
    for i, raw in enumerate(doc.array("module_calls")):
        c = Reader(raw, f"module_calls[{i}]")
        parent = c.integer("parent", optional=True)
        if parent is not None and not 0 <= parent < i:
            raise LoadError(f"{c.where}: parent {parent} must name an earlier module call.")
        rec = ModuleCallRecord(c.text("address"), c.integer("call_num"), c.text("class_name"),
                               None if parent is None else calls[parent], c.integer("first_op"),
                               c.integer("depth"))
        rec.last_op = c.integer("last_op")
        rec.input_ops = tuple(c.integers("input_ops"))
        rec.output_ops = list(c.integers("output_ops"))
        calls.append(rec)
    return calls


def _calls_at(r: Reader, key: str, calls: list[ModuleCallRecord]) -> list[ModuleCallRecord]:
    found = []
    for i in r.integers(key):
        if not 0 <= i < len(calls):
            raise LoadError(f"{r.where}.{key}: module call {i} does not exist.")
        found.append(calls[i])
    return found


def _op(r: Reader, slots: weakref.ref[RecordTable], calls: list[ModuleCallRecord],
        tensors: dict[str, torch.Tensor], handles: dict[str, ShardPayload]) -> OpRecord:
    kind = r.text("kind")
    func_name = r.text("func_name")
    args = decode(r.raw("args"), f"{r.where}.args")
    if not isinstance(args, tuple):
        raise LoadError(f"{r.where}.args: expected a tuple.")
    kwargs = {k: decode(v, f"{r.where}.kwargs.{k}") for k, v in r.mapping("kwargs").items()}
    func = _func(r, kind, func_name, args, kwargs)
    payload_key = r.text("payload", optional=True)
    payload: torch.Tensor | ShardPayload | None = None
    if payload_key is not None:
        payload = handles.get(payload_key) or _tensor(tensors, payload_key, r.where)
    out_index = decode(r.raw("out_index"), f"{r.where}.out_index")
    if not isinstance(out_index, tuple) or not all(isinstance(k, (int, str)) for k in out_index):
        raise LoadError(f"{r.where}.out_index: expected a tuple of ints and strings.")
    op = OpRecord(slots, r.integer("call_index"), kind, func, func_name, r.text("type"), args,
                  kwargs, tuple(r.integers("parents")), payload, None,
                  tuple(_calls_at(r, "module_ctx", calls)), tuple(r.texts("params")),
                  r.number("elapsed"), out_index, r.integer("call_id"),
                  r.integer("mutates", optional=True), r.text("address", optional=True))
    op.child_idx = list(r.integers("children"))
    op._saved = r.flag("saved")
    op.shape = tuple(r.integers("shape"))
    dt = r.raw("dtype")
    op.dtype = None if dt is None else dtype_named(dt, f"{r.where}.dtype")
    if payload is not None and tuple(payload.shape) != op.shape:  # dtype may be cast
        raise LoadError(f"{r.where}.shape: the op declares {op.shape}, but its payload has "
                        f"shape {tuple(payload.shape)}.")
    dev = r.text("device", optional=True)
    op.device = None if dev is None else decode({"$": "device", "v": dev}, f"{r.where}.device")
    op.requires_grad = r.flag("requires_grad")
    op.output_of = _calls_at(r, "output_of", calls)
    set_fired(op, (Repr(s) for s in r.texts("fired")))
    op.code = decode(r.raw("code"), f"{r.where}.code")
    op.bool_used = r.flag("bool_used")
    op.mode = modes.from_doc(r.obj.get("mode"), f"{r.where}.mode")
    step = r.integer("step", optional=True)  # absent in traces saved before steps existed
    if step is not None and not 0 <= step <= MAX_RECORDED:
        raise LoadError(f"{r.where}.step: {step} is out of range (0 to {MAX_RECORDED}).")
    op.step = step or 0
    grad_key = r.text("grad", optional=True)
    if grad_key is not None:
        op.grad = _tensor(tensors, grad_key, r.where)
    return op


def _func(r: Reader, kind: str, func_name: str, args: Any, kwargs: dict[str, Any]) -> Any:
    name = r.text("func", optional=True)
    try:
        func = None if name is None else names.resolve(name)  # refuses all else
    except LoadError as e:
        raise LoadError(f"{r.where}.func: {e}") from None
    if kind != OP:
        if func is not None:
            raise LoadError(f"{r.where}: a {kind!r} op has no function, but names {name!r}.")
        return None
    if func is None:
        what = r.text("func_unresolved", optional=True) or func_name
        return NotReplayable(func_name, f"its function {what} is not a torch operation "
                             "lens can name in a file")
    if contains_opaque(args) or contains_opaque(kwargs):
        return NotReplayable(func_name, "some of its arguments are values lens could not "
                             "write portably (shown as <opaque ...> in op.args)", func)
    return func




def _check_graph(ops: list[OpRecord], slots: list[Any], calls: list[ModuleCallRecord]) -> None:
    for op in ops:
        where = f"op #{op.call_index}"
        for p in op.parent_idx:
            if not 0 <= p < op.call_index or slots[p] is None:
                raise LoadError(f"{where}: parent {p} is not an earlier op of the trace.")
        for c in op.child_idx:
            if not op.call_index < c < len(slots) or slots[c] is None:
                raise LoadError(f"{where}: child {c} is not a later op of the trace.")
        refs = {r.op for t in (op.args, *op.kwargs.values()) for r in template_refs(t)}
        if not refs <= set(op.parent_idx):
            raise LoadError(f"{where}: its arguments refer to ops that are not its parents.")
        if op.mutates is not None and not 0 <= op.mutates < max(len(op.args), 1):
            raise LoadError(f"{where}: mutated argument {op.mutates} does not exist.")


def _layers(doc: Reader, ops: list[OpRecord]) -> list[LayerInfo]:
    layers: list[LayerInfo] = []
    seen = [False] * len(ops)
    for i, raw in enumerate(doc.array("layers")):
        r = Reader(raw, f"layers[{i}]")
        layer = LayerInfo(r.text("label"), r.text("short_label"), r.text("type"),
                          r.integer("total_num"))
        for k, pos in enumerate(r.integers("passes")):
            if not 0 <= pos < len(ops) or seen[pos]:
                raise LoadError(f"{r.where}: pass position {pos} is invalid or repeated.")
            seen[pos] = True
            op = ops[pos]
            op.pos = pos
            op.layer_idx = len(layers)
            op.pass_num = k + 1
            layer.passes.append(op.call_index)
        layers.append(layer)
    if not all(seen):
        raise LoadError(f"layers: op {seen.index(False)} belongs to no layer.")
    return layers
