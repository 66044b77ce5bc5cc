"""Cheap fingerprints that tell a resumed job it is fed another model or other data."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

SAMPLES = 64


def model_fingerprint(model: Any) -> str:
    """Parameter and buffer names, shapes and dtypes, plus up to 64 evenly spaced values
    of each (a retrained or edited model differs; reading every weight is not needed)."""
    if not isinstance(model, torch.nn.Module):
        cls = type(model)
        return f"{cls.__module__}.{cls.__qualname__}"
    h = hashlib.sha256(type(model).__qualname__.encode())
    picks: dict[tuple[int, torch.device], torch.Tensor] = {}  # sample index per size
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name} {tuple(t.shape)} {t.dtype}".encode())
            h.update(_sample(t, picks))
    return h.hexdigest()[:16]


def _sample(t: torch.Tensor, picks: dict[tuple[int, torch.device], torch.Tensor]) -> bytes:
    if t.numel() == 0 or t.is_meta or t.is_quantized:
        return b""
    flat = t.detach().reshape(-1)
    n = flat.numel()
    if n <= SAMPLES:  # every value is a sample: the same bytes, without the indexing
        picked = flat.cpu().contiguous()
    else:
        index = picks.get((n, flat.device))
        if index is None:
            # evenly spaced in exact integer arithmetic (a float32 linspace rounds past
            # the end for sizes above 2**24); one index per size and device (a model's
            # blocks repeat the same sizes)
            index = torch.arange(SAMPLES, dtype=torch.int64) * (n - 1) // (SAMPLES - 1)
            index = picks[(n, flat.device)] = index.to(flat.device)
        picked = flat[index].cpu().contiguous()
    return picked.view(torch.uint8).numpy().tobytes()


def batch_fingerprint(batch: Any) -> str:
    """Structure, shapes, dtypes and bytes of every tensor in a batch (others by repr)."""
    h = hashlib.sha256()
    _feed(batch, h, 0)
    return h.hexdigest()[:16]


def _feed(x: Any, h: Any, depth: int) -> None:
    if depth > 16:
        h.update(b"<deep>")
    elif isinstance(x, torch.Tensor):
        c = x.detach().cpu().contiguous()
        h.update(f"T{tuple(c.shape)}{c.dtype}".encode())
        if c.numel():
            h.update(c.view(torch.uint8).numpy().tobytes())
    elif isinstance(x, Mapping):
        h.update(f"M{len(x)}".encode())
        for k in sorted(x, key=str):
            h.update(str(k).encode())
            _feed(x[k], h, depth + 1)
    elif isinstance(x, (list, tuple)):
        h.update(f"L{len(x)}".encode())
        for v in x:
            _feed(v, h, depth + 1)
    else:
        text = repr(x)
        h.update((type(x).__qualname__ if " at 0x" in text else text).encode())
