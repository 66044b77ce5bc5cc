"""Postprocessing is reused per graph (lens/tracing/structure.py): a trace whose structure
comes from the cache equals one postprocessed from scratch in every derived fact, and a
recording whose graph differs never gets another graph's structure."""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Any

import pytest
import torch
from torch import nn

import lens as tl
from lens.capture.records import ParamRef, Ref
from lens.tracing import structure
from lens.tracing.structure import Structure, cache_info, fingerprint
from tests.models import ZOO

MODELS = ["rnn_cell_loop", "albert_shared", "simple_recurrent", "xyz_xyz_xyz", "nested_demo",
          "multi_output", "resnet_block", "dict_io", "conditional_else", "gpt2_tiny"]


def _facts(t: tl.Trace) -> dict[str, Any]:
    """Everything postprocessing decides, read through the public views."""
    keys = sorted(t.keys())  # first: an op's labels gain a bare module address once built
    return {
        "labels": [op.label for op in t.ops],
        "layer_labels": [op.layer_label for op in t.ops],
        "passes": [op.pass_num for op in t.ops],
        "calls": [op.index for op in t.ops],
        "op_keys": [sorted(op.labels) for op in t.ops],
        "children": [[c.index for c in op.children] for op in t.ops],
        "layers": [(i.label, i.short_label, i.type, i.total_num, list(i.passes))
                   for i in t.layer_table],
        "loops": sorted(i.label for i in t.layer_table if len(i.passes) > 1),
        "keys": keys,
        "module_outputs": [op.module_outputs for op in t.ops],
    }


def _trace(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
           **opts: Any) -> tl.Trace:
    return tl.trace(model, *args, input_kwargs=kwargs, **opts)


def _uncached(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
              **opts: Any) -> tl.Trace:
    """Postprocessed from scratch: the model's cache is emptied first, and the trace must
    have missed it."""
    structure.clear(model)
    t = _trace(model, args, kwargs, **opts)
    assert cache_info(model)[:2] == (0, 1)
    return t


def _hit(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
         **opts: Any) -> tl.Trace:
    hits = cache_info(model)[0]
    t = _trace(model, args, kwargs, **opts)
    assert cache_info(model)[0] == hits + 1, "expected the structure cache to be used"
    return t


@pytest.mark.parametrize("name", MODELS)
def test_a_cached_structure_equals_a_fresh_postprocess(name: str) -> None:
    model, args, kwargs = ZOO[name].build()
    ref = _uncached(model, args, kwargs)
    again = _hit(model, args, kwargs)
    assert _facts(again) == _facts(ref)
    assert again.layer_table is not ref.layer_table
    if name in ("rnn_cell_loop", "albert_shared", "simple_recurrent", "xyz_xyz_xyz"):
        assert _facts(ref)["loops"], "a loop model should have multi-pass layers"


def test_new_inputs_of_one_shape_hit_and_label_alike() -> None:
    model, args, kwargs = ZOO["tiny_transformer_2block"].build()
    ref = _uncached(model, args, kwargs)
    other = tuple(torch.randn_like(a) if a.is_floating_point() else (a + 1) % (a.max() + 1)
                  for a in args)
    t = _hit(model, other, kwargs)
    assert _facts(t) == _facts(ref)
    assert not torch.equal(t.ops[-1].out, ref.ops[-1].out)  # the payloads are its own


def test_a_data_dependent_branch_does_not_reuse_the_other_branch() -> None:
    model, (x,), _ = ZOO["conditional_else"].build()
    neg, pos = -x.abs() - 0.1, x.abs() + 0.1  # the else branch, then the if branch
    _uncached(model, (neg,), {})
    t = _trace(model, (pos,), {})
    assert cache_info(model)[:2] == (0, 2)  # two graphs, two misses
    ref = _uncached(model, (pos,), {})
    assert _facts(t) == _facts(ref)
    assert any(label.startswith("mul") for label in _facts(t)["labels"])
    assert not any(label.startswith("exp") for label in _facts(t)["labels"])


def test_a_different_sequence_length_gets_its_own_structure() -> None:
    model, args, kwargs = ZOO["gpt2_tiny"].build()
    (ids,) = args
    longer = torch.cat([ids, ids[:, :3]], dim=1)
    structure.clear(model)
    _trace(model, (ids,), kwargs)
    t = _trace(model, (longer,), kwargs)
    assert _facts(t) == _facts(_uncached(model, (longer,), kwargs))


def test_int_and_float_arguments_are_different_graphs() -> None:
    # x * 2 three times back to back is a loop (3 passes); x * 2.0 in the middle breaks it.
    # 2 == 2.0 (and hash alike), so only the value's type tells the two graphs apart.
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ks: list[Any] = [2, 2, 2]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for k in self.ks:
                x = torch.relu(x * k + 1)
            return x

    model, x = Scaled(), torch.randn(3)
    looped = _uncached(model, (x,), {})
    model.ks = [2, 2.0, 2]
    t = _trace(model, (x,), {})
    assert cache_info(model)[:2] == (0, 2)
    assert _facts(t) == _facts(_uncached(model, (x,), {}))
    assert _facts(t)["loops"] != _facts(looped)["loops"]


@pytest.mark.parametrize("opts", [{"keep_orphans": True}, {"detect_loops": False}])
def test_structure_changing_options_do_not_collide(opts: dict[str, Any]) -> None:
    name = "gpt2_tiny" if "keep_orphans" in opts else "albert_shared"
    model, args, kwargs = ZOO[name].build()
    default = _uncached(model, args, kwargs)
    t = _trace(model, args, kwargs, **opts)
    assert cache_info(model)[:2] == (0, 2)
    ref = _uncached(model, args, kwargs, **opts)
    assert _facts(t) == _facts(ref)
    assert _facts(t) != _facts(default)  # the option does change the structure here
    assert _facts(_hit(model, args, kwargs, **opts)) == _facts(ref)


def test_a_halted_trace_does_not_reuse_the_full_structure() -> None:
    model, args, kwargs = ZOO["gpt2_tiny"].build()
    structure.clear(model)
    full = _trace(model, args, kwargs)
    halt = tl.module(full.ops[len(full.ops) // 2].module)
    t = _trace(model, args, kwargs, halt=halt)
    assert t.halted and len(t.ops) < len(full.ops)
    ref = _uncached(model, args, kwargs, halt=halt)
    assert _facts(t) == _facts(ref)


def test_traces_sharing_a_structure_share_nothing_mutable() -> None:
    model, args, kwargs = ZOO["albert_shared"].build()
    ref = _uncached(model, args, kwargs)
    a, b = _hit(model, args, kwargs), _hit(model, args, kwargs)
    multi = next(i for i, row in enumerate(a.layer_table) if len(row.passes) > 1)
    label = ref.layer_table[multi].label
    assert a[label] != b[label] and a[label] == a[label]  # each trace its own layer rows
    a.layer_table[multi].passes.append(-1)
    a.layer_table[multi].label = "changed"
    a.kept[0].pass_num = 99
    assert _facts(b) == _facts(ref)
    assert _facts(_hit(model, args, kwargs)) == _facts(ref)


def test_threads_tracing_one_model_agree() -> None:
    model, args, kwargs = ZOO["simple_recurrent"].build()
    ref = _facts(_uncached(model, args, kwargs))
    found: list[dict[str, Any]] = []

    def run() -> None:
        for _ in range(3):
            found.append(_facts(_trace(model, args, kwargs)))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(found) == 12 and all(f == ref for f in found)
    assert cache_info(model)[0] >= 11


_PLAIN = (int, float, bool, str, type, type(None), Ref, ParamRef, torch.dtype, torch.device,
          torch.Size)


def _leaves(v: Any) -> list[Any]:
    if isinstance(v, (tuple, list)) and not isinstance(v, (Ref, ParamRef, torch.Size)):
        return [x for item in v for x in _leaves(item)]
    return [v]


def test_the_cache_holds_plain_values_only_and_not_the_model() -> None:
    model, args, kwargs = ZOO["gpt2_tiny"].build()
    t = _uncached(model, args, kwargs)
    held = structure.cache_of(model)
    assert held is not None
    (entry_fp, entry), = held._entries
    assert isinstance(entry, Structure) and len(entry_fp) == 2 + len(t.record_table)
    for leaf in _leaves(entry_fp) + _leaves(list(vars(entry).values())):
        assert isinstance(leaf, _PLAIN), type(leaf)
    ref = weakref.ref(model)
    gc.collect()
    before = len(structure._CACHES)
    was = gc.isenabled()
    gc.disable()
    try:
        del model, t, held
        assert ref() is None, "the structure cache kept the model alive"
        assert len(structure._CACHES) == before - 1
    finally:
        if was:
            gc.enable()


def test_an_argument_the_cache_will_not_hold_skips_it() -> None:
    class Opaque:  # hashable by identity: a fingerprint would keep it alive
        pass

    model, args, kwargs = ZOO["xyz_xyz_xyz"].build()
    t = _uncached(model, args, kwargs)
    rec = t.kept[1]
    assert fingerprint(t.record_table, False, True) is not None
    rec.args = (*rec.args, Opaque())
    assert fingerprint(t.record_table, False, True) is None
    rec.args = (*rec.args[:-1], {"k": [1, slice(0, 2)]})
    assert fingerprint(t.record_table, False, True) is not None
