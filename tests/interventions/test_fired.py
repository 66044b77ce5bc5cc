"""Which rules edited an op (``op.fired``) is intervention state kept in the record's
stash, not a field of every record: a capture without interventions carries none, and a
rule's firing shows through ``op.fired`` live, after save/load, and on a fork (without
reaching back into the fork's source)."""

from __future__ import annotations

import json

import torch

import lens as tl
import lens.interventions as li
from lens.capture.fired import FIRED, fired_on
from lens.io import load, save
from lens.io.schema import JSON_NAME
from tests.models.misc import SmallMLP


def _mlp() -> tuple[SmallMLP, torch.Tensor]:
    torch.manual_seed(0)
    return SmallMLP().eval(), torch.randn(5, 4)


def _only(tr: tl.Trace, func_name: str) -> tl.Op:
    (op,) = [op for op in tr.ops if op.func_name == func_name]
    return op


def test_a_capture_without_interventions_carries_no_fired_state() -> None:
    model, x = _mlp()
    tr = tl.trace(model, x)
    records = [r for r in tr.record_table if r is not None]
    assert records and not any(hasattr(r, "fired") for r in records)  # no field on the record
    assert all(getattr(r, "_stash", None) is None for r in records)  # and no stash made
    assert all(op.fired == [] and op.intervention_names == [] for op in tr.ops)
    assert all("Interventions:" not in str(op) for op in tr.ops)
    assert all(getattr(r, "_stash", None) is None for r in records)  # reading made none


def test_a_live_rule_shows_in_op_fired_in_the_order_rules_ran() -> None:
    model, x = _mlp()
    first, second = li.when(tl.func("relu"), li.scale(2.0)), li.when("fc1", li.scale(-1.0))
    tr = tl.trace(model, x, intervene=[first, second])
    relu, fc1_out = _only(tr, "relu"), tr["fc1"]
    assert relu.fired == [first] and fc1_out.fired == [second]
    assert [op for op in tr.ops if op.fired] == [fc1_out, relu]
    assert relu.intervention_names == [repr(first)]
    assert f"Interventions: {first!r}" in str(relu)
    relu.fired.append("not noted")  # op.fired is a reading, not the state itself
    assert relu.fired == [first] and fired_on(relu.record) == [first]
    with torch.no_grad():  # the edits did run: the forward edited by hand
        expected = model.fc2(2.0 * torch.relu(-model.fc1(x)))
    assert torch.allclose(tr.output, expected)


def test_fired_rules_round_trip_through_save_and_load(tmp_path) -> None:
    model, x = _mlp()
    rule = li.when(tl.func("relu"), li.zero_ablate())
    tr = tl.trace(model, x, intervene=rule)
    save(tr, tmp_path / "t")
    doc = json.loads((tmp_path / "t" / JSON_NAME).read_text())
    saved = {op["call_index"]: op["fired"] for op in doc["ops"]}  # the format is unchanged
    relu = _only(tr, "relu")
    assert saved == {op.call_index: ([repr(rule)] if op == relu else []) for op in tr.ops}
    loaded = load(tmp_path / "t")
    back = {op.call_index: [repr(f) for f in op.fired] for op in loaded.ops}
    assert back == saved
    assert _only(loaded, "relu").intervention_names == [repr(rule)]
    untouched = [op.record for op in loaded.ops if op.call_index != relu.call_index]
    assert all(getattr(r, "_stash", None) is None for r in untouched)


def test_a_fork_notes_its_edits_on_its_own_ops_only() -> None:
    model, x = _mlp()
    live = li.when(tl.func("relu"), li.scale(2.0))
    src = tl.trace(model, x, intervene=live, intervention_ready=True)
    relu_label, fc2_label = _only(src, "relu").label, src["fc2"].label
    f = src.fork().intervene(relu_label, li.scale(0.5)).intervene(fc2_label, li.zero_ablate())
    f.replay()
    assert f[relu_label].fired[0] is live and len(f[relu_label].fired) == 2  # copied, then grown
    assert len(f[fc2_label].fired) == 1
    assert [op.label for op in f.ops if op.fired] == [relu_label, fc2_label]
    # the source's ops are untouched, though the fork's stash started as a copy of theirs
    assert src[relu_label].fired == [live] and src[fc2_label].fired == []
    assert FIRED not in src[fc2_label].stash
    assert torch.equal(f.output, torch.zeros_like(src.output))  # fc2's output zeroed
    f.clear()
    assert f[relu_label].fired == [live] and f[fc2_label].fired == []
    assert src[relu_label].fired == [live]
