"""The tensors of a saved trace: read from ``tensors.safetensors`` through the validating
reader of :mod:`lens.io._safe`, then given back the layout ``trace.json`` records for each
(shape, strides, and for views: base tensor and offset)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import LoadError
from ._safe import plain_name, read_safetensors
from ._shards import SHARD, ShardPayload, ShardReader
from .schema import JSON_NAME, Reader, dtype_named

# Restoring a non-dense stride (a saved slice of a bigger tensor) allocates the whole span
# the strides reach. That span comes from the file, so the extra memory is bounded: at
# most this much, or the tensor file's size if larger; past it tensors stay contiguous
# (same values, plain layout).
STRIDE_BUDGET_BYTES = 64 << 20


def read_trace_tensors(data: bytearray, file: Path, doc: Reader, device: Any,
                       lazy: bool = False) -> tuple[dict[str, torch.Tensor],
                                                    dict[str, ShardPayload]]:
    """Every tensor ``trace.json`` declares, keyed as there, from the bytes of the tensor
    ``file`` and from the payload shards a streamed capture wrote beside it (those as
    handles when ``lazy``); :class:`LoadError` if the files and the JSON disagree."""
    size = len(data)
    stored = read_safetensors(data, str(file))
    if device is not None:
        stored = {k: v.to(device) for k, v in stored.items()}
    budget = [max(STRIDE_BUDGET_BYTES, size)]
    declared = dict(doc.mapping("tensors"))
    handles = _sharded(declared, file.parent, device)
    if not lazy:
        stored.update({k: h.load() for k, h in handles.items()})
        handles = {}
    declared = {k: v for k, v in declared.items() if k not in handles}
    extra = sorted(set(stored) - set(declared))
    if extra:
        raise LoadError(f"{file} holds tensors {extra[:5]} that {JSON_NAME} does not declare.")
    return {key: _restore(key, Reader(meta, f"tensors.{key}"), stored, file, budget)
            for key, meta in declared.items()}, handles


def _sharded(declared: dict[str, Any], root: Path, device: Any) -> dict[str, ShardPayload]:
    """Handles to the payloads declared in shards (``file``), each checked against its
    shard's validated header; every tensor of a shard must be declared there."""
    reader = ShardReader(root)
    reader.device = None if device is None else torch.device(device)
    handles: dict[str, ShardPayload] = {}
    for key, meta in declared.items():
        m = Reader(meta, f"tensors.{key}")
        name = meta.get("file") if isinstance(meta, dict) else None
        if name is None:
            continue
        if not SHARD.fullmatch(plain_name(name, f"{m.where}.file")):
            raise LoadError(f"{m.where}.file: {name!r:.60} is not a payload shard name "
                            "(payloads-NNNNN.safetensors).")
        shape, dtype = m.integers("shape"), dtype_named(m.raw("dtype"), f"{m.where}.dtype")
        if m.raw("base") is not None or m.integer("offset") != 0:
            raise LoadError(f"{m.where}: a payload in a shard is stored whole (no base).")
        entry = reader.header(name)[0].get(key)
        if entry is None or entry[0] != dtype or entry[1] != shape:
            raise LoadError(f"{m.where}: {root / name} does not hold {key!r} as "
                            f"{shape} {dtype}.")
        reader.where[key] = name
        handles[key] = ShardPayload(reader, key, tuple(shape), dtype)
    for name in set(reader.where.values()):
        extra = sorted(set(reader.header(name)[0]) - set(handles))
        if extra or any(reader.where[k] != name for k in reader.header(name)[0]):
            raise LoadError(f"{root / name} holds tensors {extra[:5]} that {JSON_NAME} "
                            "does not place there.")
    return handles


def _extent(shape: list[int], stride: list[int]) -> int:
    """Elements of storage a strided tensor reaches (0 when it is empty)."""
    if 0 in shape:
        return 0
    return 1 + sum((s - 1) * st for s, st in zip(shape, stride, strict=True))


def _restore(key: str, m: Reader, data: dict[str, torch.Tensor], file: Path,
             budget: list[int]) -> torch.Tensor:
    shape, stride = m.integers("shape"), m.integers("stride")
    dtype = dtype_named(m.raw("dtype"), f"{m.where}.dtype")
    offset = m.integer("offset")
    base_key = m.text("base", optional=True)
    if len(stride) != len(shape) or min([*shape, *stride, offset, 0]) < 0:
        raise LoadError(f"{m.where}: invalid shape/stride/offset {shape}/{stride}/{offset}.")
    if base_key is None:
        return _stored(key, m, data, file, budget, shape, stride, dtype)
    base = data.get(base_key)
    if base is None or base.dtype != dtype:
        raise LoadError(f"{m.where}.base: base tensor {base_key!r:.40} is missing from "
                        f"{file.name} or has another dtype.")
    if 0 in shape or offset + _extent(shape, stride) > base.numel():
        raise LoadError(f"{m.where}: view of {base_key!r} reaches past its end.")
    return base.as_strided(shape, stride, offset)


def _stored(key: str, m: Reader, data: dict[str, torch.Tensor], file: Path, budget: list[int],
            shape: list[int], stride: list[int], dtype: torch.dtype) -> torch.Tensor:
    t = data.get(key)
    if t is None:
        raise LoadError(f"{file} lacks tensor {key!r} that {JSON_NAME} declares.")
    if list(t.shape) != shape or t.dtype != dtype:
        raise LoadError(f"{m.where}: tensor {key!r} in {file.name} has shape "
                        f"{tuple(t.shape)} and dtype {t.dtype}, but {JSON_NAME} declares "
                        f"{shape} {dtype}.")
    if t.numel() <= 1 or list(t.stride()) == stride:
        return t
    span = _extent(shape, stride) * t.element_size()
    if span > budget[0]:
        return t
    budget[0] -= span
    try:  # the recorded layout, if a dense one
        return torch.empty_strided(shape, stride, dtype=dtype, device=t.device).copy_(t)
    except RuntimeError:  # overlapping strides cannot be written to: keep it contiguous
        return t
