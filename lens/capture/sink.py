"""Payloads kept outside memory: payload options that hand each kept tensor to a sink
(``tl.to_disk`` writes it to a shard) and keep the sink's small handle in the record."""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor

from .engine import PayloadOptions
from .records import LazyPayload


class PayloadSink(Protocol):
    """Where streamed payloads go. ``write`` gets each kept payload (after the user's
    detach/device/dtype/save_at options) at the moment the engine keeps it, which is the
    value its op produced: later in-place writes are copied on write or are new ops, so
    a value written now is final. An op kept twice (a live edit replaced its output)
    is written twice; the second handle wins."""

    def write(self, t: Tensor) -> LazyPayload: ...

    def close(self, trace: Any) -> None: ...


class StoredPayload(PayloadOptions):
    """``inner``'s options, then the result written to ``sink``; the record keeps the
    sink's handle, so nothing of the payload stays resident."""

    __slots__ = ("inner", "sink")

    def __init__(self, inner: PayloadOptions, sink: PayloadSink) -> None:
        super().__init__(inner.detach, inner.device, inner.dtype)
        self.inner = inner
        self.sink = sink

    @property
    def identity(self) -> bool:
        return False

    def apply(self, t: Tensor) -> Tensor:
        return self.inner.apply(t)

    def store(self, t: Tensor) -> Tensor | LazyPayload:
        return self.sink.write(self.inner.apply(t))
