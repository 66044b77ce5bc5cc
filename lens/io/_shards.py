"""Payload shards of a streamed trace (``tl.to_disk``): ``payloads-00000.safetensors``,
... beside ``trace.json``, whose ``tensors`` entries name their shard in ``file``.

:class:`ShardReader` reads them tensor by tensor, through :mod:`lens.io._safe` (each
shard's header validated once, each tensor's bytes read on access), keeping only a
small cache; :class:`ShardPayload` is the handle a record holds in place of a tensor.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..capture.records import LazyPayload
from ..errors import LoadError
from ._safe import Entry, file_header, read_entry
from .schema import dtype_name

SHARD = re.compile(r"payloads-\d{5}\.safetensors")
CACHE_BYTES = 16 << 20  # recently read payloads kept resident, at most


def shard_name(i: int) -> str:
    return f"payloads-{i:05d}.safetensors"


class ShardReader:
    """Where each streamed payload is (shard file, or still in the writer's buffer), and
    a small cache of payloads read back. Holds no reference to any trace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where: dict[str, str] = {}  # key -> shard file
        self.buffer: dict[str, torch.Tensor] = {}  # written, shard not yet flushed
        self._headers: dict[str, tuple[dict[str, Entry], int]] = {}
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cached = 0
        self.device: torch.device | None = None

    def header(self, file: str) -> tuple[dict[str, Entry], int]:
        found = self._headers.get(file)
        if found is None:
            found = file_header(self.root, file, str(self.root / file))
            self._headers[file] = found
        return found

    def declared(self) -> dict[str, dict[str, Any]]:
        """``trace.json`` entries of every payload in a shard, referenced or not (an op
        kept twice, its output replaced by a live edit, left its first value behind)."""
        out: dict[str, dict[str, Any]] = {}
        for key, file in self.where.items():
            dtype, shape, _, _ = self.header(file)[0][key]
            stride = list(torch.empty(shape, device="meta").stride())
            out[key] = {"shape": shape, "dtype": dtype_name(dtype), "stride": stride,
                        "offset": 0, "base": None, "file": file}
        return out

    def read(self, key: str) -> torch.Tensor:
        t = self.buffer.get(key)
        if t is not None:
            return t
        t = self._cache.get(key)
        if t is not None:
            self._cache.move_to_end(key)
            return t
        file = self.where[key]
        entries, size = self.header(file)
        entry = entries.get(key)
        if entry is None:
            raise LoadError(f"{self.root / file} lacks payload {key!r} that trace.json "
                            "places there.")
        t = read_entry(self.root, file, entry, size, key, str(self.root / file))
        if self.device is not None:
            t = t.to(self.device)
        self._remember(key, t)
        return t

    def _remember(self, key: str, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        if n > CACHE_BYTES:
            return
        self._cache[key] = t
        self._cached += n
        while self._cached > CACHE_BYTES:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.numel() * old.element_size()


class ShardPayload(LazyPayload):
    """A payload in a shard: read (and checked) on each access of ``op.payload``."""

    __slots__ = ("reader", "key", "shape", "dtype")

    def __init__(self, reader: ShardReader, key: str, shape: tuple[int, ...],
                 dtype: torch.dtype) -> None:
        self.reader = reader
        self.key = key
        self.shape = shape
        self.dtype = dtype

    def load(self) -> torch.Tensor:
        t = self.reader.read(self.key)
        if tuple(t.shape) != self.shape or t.dtype != self.dtype:
            raise LoadError(f"{self.reader.root}: payload {self.key!r} reads back with shape "
                            f"{tuple(t.shape)} {t.dtype}, but trace.json declares "
                            f"{list(self.shape)} {self.dtype}.")
        return t

    def __repr__(self) -> str:
        return f"<payload {self.key} in {self.reader.where.get(self.key, 'memory')}>"
