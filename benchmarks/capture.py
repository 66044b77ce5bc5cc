"""Issue 2: full capture overhead, per-op overhead; issue 3: postprocessing cost."""

from __future__ import annotations

from time import perf_counter
from typing import Any

import torch

import lens as tl

from .common import Section, interleaved, raw_forward


def run(models: dict[str, Any]) -> Section:
    sec = Section("capture (issue 2)")
    for name, (model, args, kwargs) in models.items():
        def full(model: Any = model, args: Any = args, kwargs: Any = kwargs) -> Any:
            with torch.no_grad():
                return tl.trace(model, *args, input_kwargs=kwargs)

        t = interleaved({"raw": raw_forward(model, args, kwargs), "full": full})
        raw, t_full = t["raw"], t["full"]
        n_ops = len(full())
        target = "<= 1.5" if name == "gpt2_small_shaped" else ""
        sec.add(f"{name}: full capture, all payloads kept", t_full / raw, target=target,
                note=f"raw {raw * 1e3:.1f} ms, {n_ops} ops")
        sec.add(f"{name}: overhead per op", (t_full - raw) / n_ops * 1e6, unit="us/op")
    return sec


def postprocess(models: dict[str, Any]) -> Section:
    """Postprocessing share of capture on GPT-2 and its scaling on synthetic loops."""
    from lens.capture import Recorder, run_forward
    from lens.tracing.api import build

    sec = Section("postprocessing (issue 3)")
    model, args, kwargs = models["gpt2_small_shaped"]

    def split() -> tuple[float, float]:
        rec = Recorder(model)
        with torch.no_grad():
            t0 = perf_counter()
            out = run_forward(model, rec, args, kwargs)
            t1 = perf_counter()
            build(rec, model, out, True, t1 - t0)
            return t1 - t0, perf_counter() - t1

    samples = [split() for _ in range(7)]
    cap = sorted(s[0] for s in samples)[3]
    post = sorted(s[1] for s in samples)[3]
    sec.add("gpt2_small_shaped: postprocess / capture", post / cap, unit="ratio",
            target="<= 0.20")
    for n in LOOP_SIZES:
        loop = _Loop(n // 2)
        x = torch.randn(2, 2)
        rec = Recorder(loop)
        run_forward(loop, rec, (x,), {})
        t0 = perf_counter()
        tr = build(rec, loop, None, True, 0.0)
        dt = perf_counter() - t0
        sec.add(f"synthetic loop, {len(tr)} ops: postprocess per op", dt / len(tr) * 1e6,
                unit="us/op")
    return sec


LOOP_SIZES = (1_000, 10_000, 100_000)  # synthetic loops whose postprocessing is timed


class _Loop(torch.nn.Module):
    """A loop of small parameter-free ops (two per iteration)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n):
            x = (x * 0.5).sin()
        return x
