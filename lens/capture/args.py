"""Type checks for the options of tl.trace, tl.record, tl.run and tl.validate: a wrong
type is an :class:`ArgumentTypeError` saying what was expected, before anything runs
(rather than a TypeError from deep inside torch, or a flag silently read as truthy)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ArgumentTypeError, expect


def check_input_kwargs(entry: str, input_kwargs: Any) -> None:
    if input_kwargs is not None:
        expect(input_kwargs, Mapping, f"{entry}(..., input_kwargs=)",
               "a dict of keyword arguments for model.forward, e.g. {'attention_mask': m}")


def check_options(entry: str, *, lookback: Any = None, device: Any = None, dtype: Any = None,
                  **flags: Any) -> None:
    """``flags`` must be bools; ``lookback`` an int >= 0 or None; ``device`` a
    torch.device, str or int; ``dtype`` a torch.dtype."""
    for name, value in flags.items():
        expect(value, bool, f"{entry}(..., {name}=)", "True or False")
    if lookback is not None:
        what = f"{entry}(..., lookback=)"
        expect(lookback, int, what, "a number of ops (an int >= 0) or None")
        if lookback < 0:
            raise ArgumentTypeError(f"{what} takes a number of ops (an int >= 0) or None; "
                                    f"got {lookback}.")
    if device is not None:
        expect(device, (torch.device, str, int), f"{entry}(..., device=)",
               "a torch.device, a device string such as 'cpu' or 'cuda:0', or None")
    if dtype is not None:
        expect(dtype, torch.dtype, f"{entry}(..., dtype=)",
               "a torch.dtype such as torch.float16, or None")
