"""Quick figures for the hook path (not a test): GPT-2-shaped, n_layer=12, n_embd=64,
n_head=4, 8 tokens (dispatch-bound). Ratios to the raw forward in the same process.

    python -m benchmarks.sparse_speed
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import lens as tl


def best(fn: Callable[[], object], n: int = 30, reps: int = 5) -> float:
    for _ in range(3):
        fn()
    runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n)
    return min(runs)


def main() -> None:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=12, n_embd=64, n_head=4, vocab_size=1000, n_positions=64,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    x = torch.randint(0, 1000, (1, 8))
    site = "transformer.h.5"
    kept: list[torch.Tensor] = []

    def hooks() -> None:
        h = model.get_submodule(site).register_forward_hook(
            lambda m, a, o: kept.append(o[0] if isinstance(o, tuple) else o))
        try:
            model(x)
        finally:
            h.remove()
        kept.clear()

    cases: dict[str, Callable[[], object]] = {
        "raw forward": lambda: model(x),
        "plain forward hook at one module": hooks,
        "tl.run(intervene=tl.when(module, scale))": lambda: tl.run(
            model, x, intervene=tl.when(site, tl.scale(1.0))),
        "tl.record(save=module, sparse=True)": lambda: tl.record(
            model, x, save=site, sparse=True),
    }
    times = dict.fromkeys(cases, float("inf"))
    with torch.no_grad():
        for _ in range(7):  # interleaved rounds: a loaded machine drifts between figures
            for name, fn in cases.items():
                times[name] = min(times[name], best(fn, n=10, reps=1))
    raw = times.pop("raw forward")
    figures = times
    print(f"raw forward: {raw * 1e3:.2f} ms")
    for name, t in figures.items():
        print(f"{name:45s} {t * 1e3:7.2f} ms  {t / raw:5.2f}x")


if __name__ == "__main__":
    main()
