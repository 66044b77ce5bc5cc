"""Issue 5: live interventions and fork/replay on the GPT-2-shaped model, as ratios to
the raw forward pass (``python -m benchmarks.interventions``)."""

from __future__ import annotations

from time import perf_counter
from typing import Any

import torch

import lens as tl
import lens.interventions as li
from lens.replay.interpreter import Interpreter

from .common import Section, interleaved, raw_forward


def run(models: dict[str, Any]) -> Section:
    sec = Section("interventions (issue 5)")
    model, args, kwargs = models["gpt2_small_shaped"]
    rule = li.when(tl.func("tanh"), li.scale(0.5))  # GPT-2's GELU: one tanh per block

    def live_trace() -> Any:
        with torch.no_grad():
            return tl.trace(model, *args, input_kwargs=kwargs, save=False, intervene=rule)

    def live_run() -> Any:
        with torch.no_grad():
            return li.run(model, *args, input_kwargs=kwargs, intervene=rule)

    def plain_trace() -> Any:
        with torch.no_grad():
            return tl.trace(model, *args, input_kwargs=kwargs, save=False)

    t = interleaved({"raw": raw_forward(model, args, kwargs), "trace": plain_trace,
                     "live_trace": live_trace, "live_run": live_run}, repeats=5)
    raw = t["raw"]
    n_fired = sum(1 for op in live_trace().ops if op.fired)
    sec.add("gpt2: tl.run(intervene=one op type)", t["live_run"] / raw,
            note=f"raw {raw * 1e3:.1f} ms, {n_fired} ops edited")
    sec.add("gpt2: tl.trace(save=False, intervene=one op type)", t["live_trace"] / raw)
    sec.add("gpt2: tl.trace(save=False) without intervene", t["trace"] / raw)

    with torch.no_grad():
        src = tl.trace(model, *args, input_kwargs=kwargs, intervention_ready=True)
    n = len(src.ops)
    last = [op for op in src.ops if "h.11.mlp" in (op.module or "")][0].label
    first = [op for op in src.ops if "h.0.attn" in (op.module or "")][0].label
    for name, site in (("last block", last), ("first block", first)):
        f = src.fork().intervene(site, li.zero_ablate())

        def replay(f: Any = f) -> Any:
            with torch.no_grad():
                return f.replay()

        t = interleaved({"raw": raw_forward(model, args, kwargs), "replay": replay},
                        repeats=5)
        cone = sum(1 for ci in f._touched)
        sec.add(f"gpt2: fork replay after editing {site} ({name})",
                t["replay"] / t["raw"], note=f"{cone} of {n} ops recomputed")
    t0 = perf_counter()
    forks = [src.fork() for _ in range(5)]
    sec.add("gpt2: trace.fork()", (perf_counter() - t0) / 5 * 1e3, unit="ms",
            note=f"{len(forks[0].ops)} ops copied, payloads shared")
    raw_us, interp_us, replay_us = _tiny_ops()
    sec.add("chain of 2000 tiny ops: fork replay per op", replay_us, unit="us/op",
            note=f"raw forward {raw_us:.1f} us/op, bare Interpreter {interp_us:.1f} us/op")
    return sec


class _Chain(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(1000):
            x = x * 1.0001 + 0.5
        return x


def _tiny_ops() -> tuple[float, float, float]:
    """Per-op cost where compute is negligible (2x2 tensors): the raw forward, the bare
    replay Interpreter, and a fork replay of the whole chain (cone + edits + versions)."""
    model, x = _Chain(), torch.randn(2, 2)
    with torch.no_grad():
        src = tl.trace(model, x, intervention_ready=True)
    f = src.fork().intervene("mul_1_1:1", li.scale(1.0))
    cone = [op for op in src.ops if op.index > src["mul_1_1:1"].index]
    n = len(cone)

    def raw() -> Any:
        with torch.no_grad():
            return model(x)

    def interp() -> Any:
        with torch.no_grad():
            return Interpreter(src).run(cone)

    def replay() -> Any:
        with torch.no_grad():
            return f.replay()

    t = interleaved({"raw": raw, "interp": interp, "replay": replay}, repeats=5)
    return t["raw"] / n * 1e6, t["interp"] / n * 1e6, t["replay"] / n * 1e6


if __name__ == "__main__":
    from .common import THREADS

    torch.set_num_threads(THREADS)
    from tests.models import gpt2_small_shaped

    run({"gpt2_small_shaped": gpt2_small_shaped()})
