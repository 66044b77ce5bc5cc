"""save_grads=True leaks nothing: gradient hooks never keep a trace alive.

A tensor hook lives in the tensor's autograd node, which the tensor keeps alive from C++;
a hook holding its op strongly closes a loop through C++ that the cycle collector cannot
see, so every trace with save_grads would stay in memory for good.
"""

from __future__ import annotations

import gc
import os
import weakref

import torch
from torch import nn

import lens as tl


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))


def _traced(model: nn.Module) -> tl.Trace:
    trace = tl.trace(model, torch.randn(8, 16), save_grads=True)
    trace.log_backward(trace.output.sum())
    return trace


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_traced_and_backpropagated_trace_is_freed_with_its_payloads_and_grads():
    model = _model()
    trace = _traced(model)
    payloads = [weakref.ref(op.payload) for op in trace.ops if op.payload is not None]
    grads = [weakref.ref(op.grad) for op in trace.ops if op.grad is not None]
    assert len(grads) >= 4  # the hooks fired: there is something to leak
    alive = weakref.ref(trace)
    del trace
    gc.collect()
    assert alive() is None
    assert all(r() is None for r in payloads)
    assert all(r() is None for r in grads)


def test_500_traces_with_backward_grow_memory_by_under_10_kb_each():
    model = _model()
    for _ in range(50):  # warm-up: allocator pools, caches of callables
        _traced(model)
    gc.collect()
    before = _rss()
    n = 500
    for _ in range(n):
        _traced(model)
    gc.collect()
    grown = (_rss() - before) / n
    assert grown < 10_000, f"{grown:.0f} bytes per trace"
