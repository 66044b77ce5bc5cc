"""A trace's payloads are freed by reference counting alone, when the last reference goes.

Ops are light views over records the trace owns; records, layers and module calls point at
each other by index, never back at the trace, so nothing a trace holds forms a reference
cycle. Every test runs with the cycle collector off: a payload that outlives its trace
there would only be freed by the collector (late, and never on a busy GPU in time).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import lens as tl


@contextmanager
def _no_collector() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _cycle_report() -> str:
    """What the collector would have had to free (names the objects in cycles)."""
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        kinds: dict[str, int] = {}
        for obj in gc.garbage:
            kinds[type(obj).__qualname__] = kinds.get(type(obj).__qualname__, 0) + 1
        gc.garbage.clear()
    finally:
        gc.set_debug(flags)
    return ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:12])


def _assert_freed(make: Callable[[], tuple[Any, list[torch.Tensor]]]) -> None:
    with _no_collector():
        holder, tensors = make()
        refs = [weakref.ref(t) for t in tensors]
        assert refs, "nothing to free: the check could not fail"
        del holder, tensors
        alive = sum(r() is not None for r in refs)
        report = _cycle_report() if alive else ""
    assert alive == 0, f"{alive}/{len(refs)} payloads outlived their trace; cycles: {report}"


def _payloads(trace: tl.Trace) -> list[torch.Tensor]:
    return [op.payload for op in trace.ops if op.payload is not None]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        for _ in range(3):  # a recurrent layer: passes share one layer
            h = torch.tanh(self.fc2(h))
        return self.out(h)


def _exercise(trace: tl.Trace) -> None:
    """Touch what builds caches: lookups of every kind, layers, modules, graph facts,
    tables, text, sites."""
    for op in trace:
        _ = (op.label, op.parents, op.children, op.layer, op.lookup_keys, op.module,
             op.min_distance_from_input, op.in_cond_branch, op.flops, op.func_config)
    _ = trace["fc2"], trace["linear_2_3"], trace["linear_2_3:2"], trace[-1], trace["fc2:1"]
    _ = trace.modules["fc2"].ops, trace.modules["fc2"].children, trace.params["fc1.weight"]
    _ = trace.to_pandas(), str(trace), trace.summary(), trace.find_sites(tl.func("tanh"))
    _ = trace.layers[3].passes, trace.has_conditional_branching


def test_a_used_trace_frees_its_payloads_by_refcount() -> None:
    model = _Net()

    def make() -> tuple[Any, list[torch.Tensor]]:
        trace = tl.trace(model, torch.randn(2, 8))
        _exercise(trace)
        return trace, _payloads(trace)

    _assert_freed(make)


def test_an_op_keeps_its_trace_and_frees_it_when_dropped() -> None:
    model = _Net()

    def make() -> tuple[Any, list[torch.Tensor]]:
        op = tl.trace(model, torch.randn(2, 8))["fc2:2"]  # the trace itself is not kept
        assert op.label == "linear_2_3:2" and op.parents[0].label == "tanh_1_4:1"
        return op, _payloads(op.trace)

    _assert_freed(make)


def test_iterating_a_temporary_trace_keeps_it_alive() -> None:
    labels = [op.label for op in tl.trace(_Net(), torch.randn(2, 8))]
    assert labels[0] == "input_1" and labels[-1] == "output_1"


def test_ops_of_one_trace_compare_equal_across_lookups() -> None:
    trace = tl.trace(_Net(), torch.randn(2, 8))
    assert trace["fc1"] == trace["linear_1_1"] == trace.ops[1]
    assert trace["fc1"] != trace["fc2:1"]
    assert len({trace["fc1"], trace.ops[1], trace["linear_1_1"]}) == 1
    assert trace["fc1"] in trace["relu_1_2"].parents


def test_grads_and_backward_are_freed_by_refcount() -> None:
    model = _Net()

    def make() -> tuple[Any, list[torch.Tensor]]:
        trace = tl.trace(model, torch.randn(2, 8), save_grads=True)
        trace.log_backward(trace.output.sum())
        grads = [op.grad for op in trace.ops if op.grad is not None]
        assert grads
        return trace, _payloads(trace) + grads

    _assert_freed(make)


def test_forks_and_replays_free_their_payloads() -> None:
    model = _Net()

    def make() -> tuple[Any, list[torch.Tensor]]:
        trace = tl.trace(model, torch.randn(2, 8), intervention_ready=True)
        fork = trace.fork().intervene("fc1", tl.zero_ablate()).replay()
        _exercise(fork)
        return (trace, fork), _payloads(trace) + _payloads(fork)

    _assert_freed(make)


def test_facets_and_aliases_free_their_trace() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=16,
                                     vocab_size=50, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()

    def make() -> tuple[Any, list[torch.Tensor]]:
        trace = tl.trace(model, torch.tensor([[1, 2, 3, 4]])).with_aliases()
        _ = trace.modules["transformer.h.0.attn"].facets["pattern"]
        _ = trace["blocks.0.attn.hook_pattern"], trace.facets
        _ = trace.find_sites(tl.facet("pattern", module="transformer.h.0.attn"))
        return trace, _payloads(trace)

    _assert_freed(make)


def test_a_loaded_trace_frees_its_payloads(tmp_path: Path) -> None:
    model = _Net()
    tl.save(tl.trace(model, torch.randn(2, 8)), tmp_path / "t")

    def make() -> tuple[Any, list[torch.Tensor]]:
        trace = tl.load(tmp_path / "t")
        _exercise(trace)
        return trace, _payloads(trace)

    _assert_freed(make)


def test_a_recording_frees_its_payloads_by_refcount() -> None:
    model = _Net()

    def make() -> tuple[Any, list[torch.Tensor]]:
        rec = tl.record(model, torch.randn(2, 8), save=tl.func("tanh"))
        assert [len(op.parents) for op in rec.ops if op.func_name == "tanh"] == [1, 1, 1]
        return rec, list(rec.payloads.values())

    _assert_freed(make)


def test_a_records_neighbours_need_its_trace_alive() -> None:
    rec = tl.trace(_Net(), torch.randn(2, 8)).record_table[3]  # only the record is kept
    with pytest.raises(AttributeError, match="keep the trace"):
        rec.parents  # noqa: B018
