"""``tl.save(trace, path)``: a directory holding ``trace.json`` (graph, labels, layers,
module calls, metadata, parameter metadata, schema version) and ``tensors.safetensors``
(payloads, gradients, parameter values, model output). No pickle anywhere.

Tensors are stored once each: a payload shared by several ops (an output op and the op it
outputs, a module returning its input) is written once and is one tensor again on load.
Tensors that overlap in memory without being the same tensor (views) are written as
independent copies, which keeps every value bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import torch

from ..capture import modes
from ..errors import LensError, LoadError, SaveError
from ..tracing import Op, Trace
from . import names
from ._safe import loads_json, read_regular
from ._shards import SHARD, ShardPayload
from .schema import FORMAT, JSON_NAME, SCHEMA_VERSION, TENSORS_NAME, dtype_name, encode


class TensorStore:
    """Collects tensors for one safetensors file.

    Each tensor is stored once (by identity). A tensor viewing the memory of another
    stored tensor that covers its whole storage is written as a view of it (base, offset,
    strides), so views, aliasing and memory layout come back as they were; other tensors
    are written contiguously with their strides recorded and restored on load.
    """

    def __init__(self, root: Path | None = None) -> None:
        self._items: list[torch.Tensor] = []  # also keeps ids stable while saving
        self._by_id: dict[int, str] = {}
        self._root = _same(root)
        self._sharded: dict[str, dict[str, Any]] = {}  # payloads left in their shards

    def add_payload(self, op: Op) -> str | None:
        """An op's payload: a streamed one already in a shard of the folder being written
        stays there (referenced by key); any other is stored (read back if streamed)."""
        raw = op.record.payload_handle
        if (isinstance(raw, ShardPayload) and self._root is not None
                and raw.key in raw.reader.where and _same(raw.reader.root) == self._root):
            if raw.key not in self._sharded:
                self._sharded.update(raw.reader.declared())
            return raw.key
        return self.add_opt(op.payload)

    def add(self, t: torch.Tensor) -> str:
        key = self._by_id.get(id(t))
        if key is None:
            if t.layout != torch.strided:
                raise LensError(
                    f"Cannot save a {t.layout} tensor (shape {tuple(t.shape)}): safetensors "
                    "stores dense tensors only. Convert it with .to_dense() before saving.")
            key = f"t{len(self._items)}"
            self._items.append(t)
            self._by_id[id(t)] = key
        return key

    def add_opt(self, t: torch.Tensor | None) -> str | None:
        return None if t is None else self.add(t)

    def finish(self) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
        """(tensors to write, per-key JSON description)."""
        bases: dict[tuple[int, str], int] = {}
        for i, t in enumerate(self._items):
            if t.numel() and _whole(t):
                bases.setdefault(_storage_key(t), i)
        data: dict[str, torch.Tensor] = {}
        meta: dict[str, dict[str, Any]] = {}
        for i, t in enumerate(self._items):
            key = f"t{i}"
            m: dict[str, Any] = {"shape": list(t.shape), "dtype": dtype_name(t.dtype),
                                 "stride": list(t.stride()), "offset": 0, "base": None}
            b = bases.get(_storage_key(t)) if t.numel() else None
            if b is not None and b != i and self._items[b].dtype == t.dtype:
                m.update(offset=int(t.storage_offset()), base=f"t{b}")
            else:
                # A base (the one whole tensor of its storage) is written as it is; any
                # other tensor gets memory of its own: safetensors refuses shared storage.
                data[key] = _plain_copy(t, copy=b != i)
            meta[key] = m
        meta.update(self._sharded)
        return data, meta


def _same(root: Path | None) -> Path | None:
    return None if root is None else Path(os.path.realpath(root))


def _storage_key(t: torch.Tensor) -> tuple[int, str]:
    return (t.untyped_storage().data_ptr(), str(t.device))


def _whole(t: torch.Tensor) -> bool:
    """Contiguous from the start of its storage to its end."""
    return (t.is_contiguous() and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size())


def _plain_copy(t: torch.Tensor, copy: bool) -> torch.Tensor:
    x = t.detach()
    if x.is_conj():
        x = x.resolve_conj()
    if x.is_neg():
        x = x.resolve_neg()
    if x.device.type != "cpu":
        return x.to("cpu").contiguous()
    return x.clone(memory_format=torch.contiguous_format) if copy or not _whole(x) else x


def save(trace: Trace, path: str | os.PathLike[str], *, params: bool = True,
         overwrite: bool = False) -> Path:
    """Write ``trace`` to the folder ``path``; returns the path. ``tl.load`` reads it back.

    ``params=True`` also stores the parameter values, so ``tl.load`` gives a trace that
    replays without the model.

    ``path`` may be new (created, with its parents), an empty folder, or a trace saved
    before (replaced); a symbolic link to such a folder is followed. Anything else in the
    way (a file, a folder holding other files, a ``trace.json`` that is not a lens
    trace) raises :class:`SaveError` unless ``overwrite=True``: then a file at ``path`` is
    replaced by the folder, and into a folder with other content lens writes its two
    files, deleting nothing else. Each file is written to a fresh temporary name and
    renamed into place, so an interrupted save never leaves a torn file.
    """
    if not isinstance(trace, Trace):
        raise SaveError(f"tl.save needs a Trace (from tl.trace); got {type(trace).__name__}.")
    out = _target(path, overwrite)
    store = TensorStore(out)
    doc = document(trace, store, params=params)
    data, meta = store.finish()
    doc["tensors"] = meta
    _atomic_write(out / TENSORS_NAME, lambda tmp: _write_tensors(data, tmp))
    text = json.dumps(doc, allow_nan=False, indent=1)
    _atomic_write(out / JSON_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return out


def _write_tensors(data: dict[str, torch.Tensor], tmp: Path) -> None:
    from safetensors.torch import save_file

    save_file(data, str(tmp),
              metadata={"format": f"{FORMAT}/{SCHEMA_VERSION}"})  # one key: stable bytes


def _atomic_write(target: Path, write: Any) -> None:
    # A new name, created exclusively and without following links: a planted
    # "trace.json.tmp" link cannot redirect the write.
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | getattr(os, "O_NOFOLLOW", 0), 0o666))
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _target(path: Any, overwrite: bool) -> Path:
    """The folder to write into, after refusing what must not be written over."""
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise SaveError(f"tl.save needs a folder path (str or os.PathLike); got "
                        f"{type(path).__name__} {path!r:.60}.")
    out = Path(path)
    try:
        mode = os.stat(out).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISDIR(mode):
        if not overwrite:
            raise SaveError(f"Cannot save to {out}: it is a file, and tl.save writes a folder. "
                            "Choose another path, or pass overwrite=True to replace the file.")
        out.unlink()
        mode = None
    if mode is None:
        try:
            out.mkdir(parents=True)
        except OSError as e:
            raise SaveError(f"Cannot create the folder {out}: {e.strerror}.") from None
        return out
    why = _not_a_trace(out)
    if why is not None and not overwrite:
        raise SaveError(f"Cannot save to {out}: the folder exists and is not a lens trace "
                        f"({why}). Choose a new or empty folder, or pass overwrite=True to "
                        f"write {JSON_NAME} and {TENSORS_NAME} into it (nothing else there "
                        "is deleted).")
    return out


def _not_a_trace(folder: Path) -> str | None:
    """Why ``folder`` is not a trace lens saved (None if it is one, or is empty)."""
    mine = (JSON_NAME, TENSORS_NAME)
    entries = os.listdir(folder)
    others = sorted(n for n in entries if n not in mine and not SHARD.fullmatch(n)
                    and not (n.endswith(".tmp") and any(m in n for m in mine)))
    if others:
        return f"it holds {others[:3]}" + (" and more" if len(others) > 3 else "")
    if JSON_NAME not in entries:
        return None  # empty, or only what an interrupted save left
    try:
        doc = loads_json(read_regular(folder, JSON_NAME, JSON_NAME), JSON_NAME)
    except LoadError as e:
        return f"its {JSON_NAME} cannot be read: {e}"
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return f"its {JSON_NAME} is not a lens trace"
    return None


def document(trace: Trace, store: TensorStore, *, params: bool = True) -> dict[str, Any]:
    """The JSON document of ``trace``; tensors go to ``store``."""
    calls = trace.module_calls
    call_pos = {id(c): i for i, c in enumerate(calls)}
    first = trace.records
    param_values = trace.param_values if params else {}
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "lens_version": _lens_version(),
        "torch_version": str(torch.__version__),
        "model_name": trace.model_name,
        "halted": bool(trace.halted),
        "elapsed": float(trace.elapsed),
        "save_spec": encode(trace.save_spec),
        "options": {str(k): encode(v) for k, v in trace.options.items()},
        "num_recorded": len(first),
        "module_calls": [_call(c, call_pos) for c in calls],
        "module_info": {a: [cls, list(ps)] for a, (cls, ps) in trace.module_info.items()},
        "params": {n: {"shape": list(m[0]), "numel": int(m[1]), "dtype": dtype_name(m[2]),
                       "requires_grad": bool(m[3]),
                       "tensor": store.add_opt(param_values.get(n))}
                   for n, m in trace.param_meta.items()},
        "layers": [{"label": layer.label, "short_label": layer.short_label,
                    "type": layer.type, "total_num": int(layer.total_num),
                    "passes": [op.index for op in layer.passes]}
                   for layer in trace.layers],
        "ops": [_op(op, call_pos, store) for op in trace.ops],
        "output": encode(trace.output, store.add),
    }


def _call(c: Any, call_pos: dict[int, int]) -> dict[str, Any]:
    return {"address": c.address, "call_num": int(c.call_num), "class_name": c.class_name,
            "parent": None if c.parent is None else call_pos[id(c.parent)],
            "first_op": int(c.first_op), "last_op": int(c.last_op),
            "input_ops": [int(i) for i in c.input_ops],
            "output_ops": [int(i) for i in c.output_ops], "depth": int(c.depth)}


def _op(op: Op, call_pos: dict[int, int], store: TensorStore) -> dict[str, Any]:
    fname = names.name_of(op.func)
    return {
        "call_index": op.call_index,
        "index": op.index,
        "kind": op.kind,
        "func": fname,
        "func_unresolved": (names.describe(op.func)
                            if fname is None and op.func is not None else None),
        "func_name": op.func_name,
        "type": op.type,
        "args": encode(op.args),
        "kwargs": {str(k): encode(v) for k, v in op.kwargs.items()},
        "parents": list(op.parent_idx),
        "children": list(op.child_idx),
        "payload": store.add_payload(op),
        "saved": bool(op._saved),
        "grad": store.add_opt(op.grad),
        "shape": [int(s) for s in op.shape],
        "dtype": None if op.dtype is None else dtype_name(op.dtype),
        "device": None if op.device is None else str(op.device),
        "requires_grad": bool(op.requires_grad),
        "module_ctx": [call_pos[id(c)] for c in op.module_ctx],
        "output_of": [call_pos[id(c)] for c in op.output_of],
        "params": list(op.params),
        "elapsed": float(op.elapsed),
        "out_index": encode(tuple(op.out_index)),
        "call_id": int(op.call_id),
        "mutates": op.mutates,
        "address": op.address,
        "fired": [repr(f) for f in op.fired],
        "code": encode(op.code),
        "bool_used": bool(op.bool_used),
        "mode": modes.to_doc(op.mode),
        "step": int(op.step),
    }


def _lens_version() -> str:
    try:
        from importlib.metadata import version

        return version("lens")
    except Exception:  # noqa: BLE001 - not installed: the version is informative only
        return "unknown"
