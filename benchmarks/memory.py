"""Peak resident memory of one capture, above the bytes of the payloads it keeps.

Measured in a fresh process (``python -m benchmarks.memory SHAPE THREADS``), since memory
freed by earlier runs in the same process is reused without raising RSS. That process
runs one raw forward first (so lazy imports and the raw forward's own working set are not
counted), then resets the kernel's high-water mark (``VmHWM``, by writing ``5`` to
``/proc/self/clear_refs``; Linux only) and captures once.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from {_STATUS}")


def payload_bytes(trace: Any) -> int:
    """Bytes of the distinct storages behind the trace's saved payloads."""
    seen: dict[int, int] = {}
    for op in trace.ops:
        if op.has_payload:
            s = op.out.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def peak_rss_over_payload(capture: Callable[[], Any]) -> float:
    """``(peak RSS during capture - RSS before - payload bytes) / payload bytes``; NaN
    where the peak cannot be reset (not Linux)."""
    try:
        gc.collect()
        _CLEAR.write_text("5")
        before = _kib("VmRSS")
    except OSError:
        return float("nan")
    with torch.no_grad():
        trace = capture()
    peak = _kib("VmHWM")
    payload = payload_bytes(trace)
    return ((peak - before) * 1024 - payload) / max(payload, 1)


def peak_rss_in_subprocess(shape: dict[str, int], threads: int) -> float:
    """:func:`peak_rss_over_payload` of a full capture of ``gpt2(**shape)`` in a fresh
    Python process; NaN where it cannot be measured (not Linux)."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "benchmarks.memory", json.dumps(shape),
                           str(threads)], cwd=root, capture_output=True, text=True,
                          check=True, timeout=600)
    return float(done.stdout.strip().splitlines()[-1])


def _main(shape_json: str, threads: str) -> None:
    import lens as tl

    from .regimes import gpt2

    torch.set_num_threads(int(threads))
    model, x = gpt2(**json.loads(shape_json))()
    with torch.no_grad():
        model(x)
    print(peak_rss_over_payload(lambda: tl.trace(model, x)))


if __name__ == "__main__":
    _main(*sys.argv[1:])
