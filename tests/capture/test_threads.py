"""Tracing one model object from two threads at once never mixes the traces.

Module hooks live on the shared module objects, so each recorder must ignore module calls
made by other threads; the function mode is thread-local in torch. Ground truth: the same
inputs traced one at a time, in one thread.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import lens as tl


class _Net(nn.Module):
    """Nested modules, a module called twice, and a gelu between them."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 8), nn.GELU())
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner(x)
        h = self.fc(h).relu() + self.fc(h)
        return self.out(h)


def _summary(trace: tl.Trace) -> list[tuple[Any, ...]]:
    """Labels, module context, module outputs and payloads of every op."""
    rows = []
    for op in trace.ops:
        ctx = tuple(c.key for c in op.module_ctx)
        outs = tuple(c.key for c in op.output_of)
        rows.append((op.label, ctx, outs, op.payload))
    return rows


def _same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        if ra[:3] != rb[:3]:
            return False
        if (ra[3] is None) != (rb[3] is None):
            return False
        if ra[3] is not None and not torch.equal(ra[3], rb[3]):
            return False
    return True


def _in_threads(work: Callable[[torch.Tensor], Any], inputs: list[list[torch.Tensor]]
                ) -> list[list[Any]]:
    """Run ``work`` on each thread's inputs, both threads released at the same moment."""
    results: list[list[Any]] = [[] for _ in inputs]
    errors: list[BaseException] = []
    start = threading.Barrier(len(inputs))

    def body(i: int) -> None:
        try:
            start.wait()
            for x in inputs[i]:
                results[i].append(work(x))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def _inputs(n_threads: int = 2, per_thread: int = 60) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [[torch.randn(2, 4, generator=g) for _ in range(per_thread)]
            for _ in range(n_threads)]


def test_two_threads_tracing_one_model_get_the_single_threaded_traces():
    torch.manual_seed(0)
    model = _Net()
    inputs = _inputs()
    got = _in_threads(lambda x: _summary(tl.trace(model, x)), inputs)
    for xs, traces in zip(inputs, got, strict=True):
        for x, summary in zip(xs, traces, strict=True):
            assert _same(summary, _summary(tl.trace(model, x)))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert gc.isenabled()  # capture pauses the collector; the last trace restores it


def test_two_threads_with_live_interventions_and_tl_run():
    torch.manual_seed(0)
    model = _Net()
    inputs = _inputs()
    rules = [tl.when(tl.func("gelu"), tl.scale(0.5)), tl.when("fc:2", tl.zero_ablate())]

    def work(x: torch.Tensor) -> tuple[Any, torch.Tensor]:
        return (_summary(tl.trace(model, x, intervene=rules)),
                tl.run(model, x, intervene=rules))

    got = _in_threads(work, inputs)
    for xs, results in zip(inputs, got, strict=True):
        for x, (summary, out) in zip(xs, results, strict=True):
            assert _same(summary, _summary(tl.trace(model, x, intervene=rules)))
            # independent route: the same edits made with plain forward hooks
            with torch.no_grad():
                h = model.inner[0](x)
                h = torch.nn.functional.gelu(h) * 0.5
                h = model.fc(h).relu() + torch.zeros_like(model.fc(h))
                expected = model.out(h)
            assert torch.allclose(out, expected)
