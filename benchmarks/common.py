"""Timing helpers and the benchmark models (shared by every benchmark section)."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

THREADS = 2
REPEATS = 7


def median_time(fn: Callable[[], Any], repeats: int = REPEATS, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int = REPEATS,
                warmup: int = 2) -> dict[str, float]:
    """Median time of each function, running them in turn so that load on a shared
    machine affects all of them alike (ratios stay meaningful when absolute times drift)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


@dataclass
class Section:
    """One benchmark section: rows of (name, value, unit, target, note)."""

    title: str
    rows: list[tuple[str, float, str, str, str]] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str = "x raw", target: str = "",
            note: str = "") -> None:
        self.rows.append((name, value, unit, target, note))
        print(f"  {name:<58} {value:>9.3f} {unit:<8} {target:<10} {note}", flush=True)


def bench_models() -> dict[str, tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]]:
    from tests.models import get, gpt2_small_shaped

    models = {"gpt2_small_shaped": gpt2_small_shaped()}
    for name in ("cnn_bench", "lstm_bench"):
        models[name] = get(name).build()
    return models


def raw_forward(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return model(*args, **kwargs)
    return run
