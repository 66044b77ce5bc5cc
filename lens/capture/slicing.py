"""``save_at=``: keep only a slice of each saved payload (the new position of each
decoding step, say), as a compact copy, so memory follows the slice, not the op."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import ArgumentTypeError, CaptureError
from .engine import PayloadOptions

_WHAT = ("an index for each saved tensor: an int, a slice, Ellipsis or a tuple of them, "
         "e.g. save_at=(slice(None), slice(-1, None)) for the last position of a "
         "(batch, position, ...) tensor")


def check_index(entry: str, index: Any) -> None:
    """Refuse anything but basic indexing (ints, slices, Ellipsis, None), before running."""
    parts = index if isinstance(index, tuple) else (index,)
    for part in parts:
        ok = part is None or part is Ellipsis or isinstance(part, slice) or (
            isinstance(part, int) and not isinstance(part, bool))
        if not ok:
            raise ArgumentTypeError(f"{entry}(..., save_at=) takes {_WHAT}; got {index!r}.")


class SlicedPayload(PayloadOptions):
    """Payload options that also index each kept tensor and copy the slice, so the saved
    bytes are the slice's (a view would keep the whole tensor alive)."""

    __slots__ = ("index",)

    def __init__(self, index: Any, detach: bool = False, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(detach, device, dtype)
        self.index = index

    @property
    def identity(self) -> bool:
        return False

    def apply(self, t: Tensor) -> Tensor:
        try:
            part = t[self.index]
        except IndexError as e:
            raise CaptureError(
                f"save_at={self.index!r} does not fit a saved tensor of shape "
                f"{tuple(t.shape)}: {e}. Restrict save= to ops of one layout (e.g. "
                "tl.module('transformer.h.1')) or change save_at.") from None
        return super().apply(part.clone(memory_format=torch.contiguous_format))
