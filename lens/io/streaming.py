"""``tl.trace(model, x, storage=tl.to_disk(path))``: payloads streamed to safetensors
shards as the forward runs, so memory stays bounded however much is saved.

Each kept payload is copied (detached, CPU, contiguous) into a buffer the moment the
engine keeps it; a buffer of ``shard_bytes`` is written out as the next shard
(``payloads-00000.safetensors``, ...) and dropped. The record keeps a
:class:`~lens.io._shards.ShardPayload` handle, so ``op.payload`` reads the tensor back
from its shard on access. When the trace is built, ``trace.json`` and
``tensors.safetensors`` (parameters, output) are written beside the shards: the folder
is a lens trace folder that ``tl.load(path)`` (or ``tl.load(path, lazy=True)``) reads.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ArgumentTypeError, LensError, SaveError
from ._shards import SHARD, ShardPayload, ShardReader, shard_name
from .saving import _atomic_write, _plain_copy, _target, save
from .schema import FORMAT, JSON_NAME, SCHEMA_VERSION, dtype_name

DEFAULT_SHARD_BYTES = 64 << 20


class DiskStorage:
    """The sink of one streamed capture (made by :func:`to_disk`; use it for one trace)."""

    def __init__(self, path: Path, shard_bytes: int, overwrite: bool) -> None:
        self.path = path
        self.shard_bytes = shard_bytes
        self.overwrite = overwrite
        self.reader: ShardReader | None = None
        self.meta: dict[str, dict[str, Any]] = {}  # key -> trace.json tensor entry
        self._pending: list[str] = []
        self._bytes = 0
        self._shards = 0

    def __repr__(self) -> str:
        return f"tl.to_disk({str(self.path)!r}, shard_bytes={self.shard_bytes})"

    def open(self) -> None:
        """Prepare the folder (as ``tl.save`` would) and drop a previous trace's files."""
        if self.reader is not None:
            raise LensError(f"{self!r} already holds a trace; make a new tl.to_disk(...) "
                            "for each tl.trace call.")
        out = _target(self.path, self.overwrite)
        for name in os.listdir(out):
            if SHARD.fullmatch(name) or name == JSON_NAME:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(out / name)
        self.path = out
        self.reader = ShardReader(out)

    def write(self, t: Tensor) -> ShardPayload:
        if self.reader is None:
            self.open()
        reader = self.reader
        assert reader is not None
        if t.layout != torch.strided:
            raise SaveError(f"tl.to_disk cannot stream a {t.layout} payload (shape "
                            f"{tuple(t.shape)}): safetensors stores dense tensors only.")
        with torch._C.DisableTorchFunction():
            x = _plain_copy(t, copy=True)
        key = f"p{len(self.meta)}"
        self.meta[key] = {"shape": list(x.shape), "dtype": dtype_name(x.dtype),
                          "stride": list(x.stride()), "offset": 0, "base": None,
                          "file": shard_name(self._shards)}
        reader.buffer[key] = x
        self._pending.append(key)
        self._bytes += x.numel() * x.element_size()
        if self._bytes >= self.shard_bytes:
            self.flush()
        return ShardPayload(reader, key, tuple(x.shape), x.dtype)

    def flush(self) -> None:
        """Write the buffered payloads as the next shard and drop them from memory."""
        if not self._pending or self.reader is None:
            return
        from safetensors.torch import save_file

        reader, name = self.reader, shard_name(self._shards)
        data = {k: reader.buffer[k] for k in self._pending}
        _atomic_write(self.path / name, lambda tmp: save_file(
            data, str(tmp), metadata={"format": f"{FORMAT}/{SCHEMA_VERSION}"}))
        for k in self._pending:
            reader.where[k] = name
            del reader.buffer[k]
        self._pending, self._bytes = [], 0
        self._shards += 1

    def close(self, trace: Any) -> None:
        """The trace is built: write the last shard, then trace.json and the other
        tensors beside the shards."""
        self.flush()
        if self.reader is None:  # nothing was kept: still a complete trace folder
            self.open()
        save(trace, self.path, overwrite=True)


def to_disk(path: str | os.PathLike[str], *, shard_bytes: int = DEFAULT_SHARD_BYTES,
            overwrite: bool = False) -> DiskStorage:
    """Storage for ``tl.trace(..., storage=)``: stream every kept payload to safetensors
    shards of about ``shard_bytes`` in the folder ``path`` (memory holds at most one
    shard's worth, plus a small read cache), and read payloads back lazily from there.

    ``path`` is treated as by ``tl.save`` (new, empty, or a previous trace, else
    ``overwrite=True``). Streamed payloads are detached CPU copies (no autograd graph).
    """
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise ArgumentTypeError(f"tl.to_disk needs a folder path (str or os.PathLike); got "
                                f"{type(path).__name__} {path!r:.60}.")
    if type(shard_bytes) is not int:
        raise ArgumentTypeError(f"tl.to_disk(..., shard_bytes=) must be a positive int "
                                f"(bytes per shard, e.g. 64 << 20); got {shard_bytes!r:.60}.")
    if shard_bytes <= 0:
        raise SaveError(f"tl.to_disk(..., shard_bytes=) must be positive; got {shard_bytes}.")
    return DiskStorage(Path(path), shard_bytes, overwrite)
