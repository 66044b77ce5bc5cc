"""Streaming capture (``tl.trace(..., storage=tl.to_disk(path))``): peak memory stays
under a fixed cap above the raw forward, however much is saved.

``python -m benchmarks.streaming [CAP_MB]`` runs, in this fresh process: a raw forward
(peak RSS measured from a reset high-water mark, as in :mod:`benchmarks.memory`), then a
streamed capture of a deep MLP that saves about 4x the cap, with shards of a quarter of
the cap; it prints both peaks, the bytes saved, and checks every payload read back
(eagerly from the folder) against an ordinary in-memory trace, bit for bit.
"""

from __future__ import annotations

import gc
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tests.models.misc import ResidualMLP

from .memory import _CLEAR, _kib


def _peak_above_start(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(peak RSS while ``fn`` runs, minus RSS before, in bytes; fn's result)."""
    gc.collect()
    _CLEAR.write_text("5")
    before = _kib("VmRSS")
    out = fn()
    return (_kib("VmHWM") - before) * 1024, out


def _model(saved_target: int, width: int = 512, batch: int = 2048) -> tuple[nn.Module, Any]:
    per_layer = 3 * batch * width * 4  # linear, relu, add outputs (fp32)
    depth = max(1, saved_target // per_layer)
    torch.manual_seed(0)
    return ResidualMLP(width, depth).eval(), torch.randn(batch, width)


def main(cap_mb: int = 64) -> dict[str, float]:
    import lens as tl

    torch.set_num_threads(2)
    cap = cap_mb << 20
    model, x = _model(4 * cap)
    with torch.no_grad():
        model(x)  # warm up: lazy imports, allocator
        raw, _ = _peak_above_start(lambda: model(x))
        folder = Path(tempfile.mkdtemp()) / "trace"
        streamed, trace = _peak_above_start(
            lambda: tl.trace(model, x, storage=tl.to_disk(folder, shard_bytes=cap // 4)))
    saved = trace.saved_nbytes
    del trace
    ref = tl.trace(model, x)
    back = tl.load(folder)
    equal = all(torch.equal(a.out, b.out) for a, b in zip(ref.ops, back.ops, strict=True)
                if b.has_payload) and len(ref.ops) == len(back.ops)
    figures = {"cap_mb": cap_mb, "saved_mb": saved / 2**20, "raw_peak_mb": raw / 2**20,
               "streamed_peak_mb": streamed / 2**20,
               "over_raw_mb": (streamed - raw) / 2**20, "equal": float(equal)}
    for k, v in figures.items():
        print(f"{k:>18}: {v:.1f}")
    print("under cap + raw forward:", streamed <= raw + cap, "| reads back equal:", equal)
    return figures


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
