"""Sweeps equal a hand-written loop of forward-hook patches, cell by cell."""

from __future__ import annotations

import math

import pytest
import torch

import lens as tl
from lens import sweeps
from tests.sweeps.conftest import BLOCKS, logit_diff


def _block_output(o):
    return o[0] if isinstance(o, tuple) else o


def _with_block_output(o, new):
    return (new, *o[1:]) if isinstance(o, tuple) else new


def _clean_block_outputs(model, clean):
    saved = {}
    handles = [model.get_submodule(b).register_forward_hook(
        lambda m, i, o, b=b: saved.__setitem__(b, _block_output(o).detach().clone()))
        for b in BLOCKS]
    with torch.no_grad():
        model(clean)
    for h in handles:
        h.remove()
    return saved


def _hook_run(model, x, block, edit):
    def hook(m, i, o):
        return _with_block_output(o, edit(_block_output(o).clone()))

    h = model.get_submodule(block).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return float(logit_diff(model(x).logits))
    finally:
        h.remove()


def _labels(model, x):
    tr = tl.trace(model, x)
    return {tr[b].label: b for b in BLOCKS}


def test_patching_equals_a_hook_loop(gpt2):
    model, clean, corrupted = gpt2
    res = sweeps.patching(model, clean, corrupted, BLOCKS, metric=logit_diff, progress=False)
    saved = _clean_block_outputs(model, clean)
    blocks = _labels(model, corrupted)
    assert len(res) == len(BLOCKS) * clean.shape[1]
    for row in res.rows:
        block, p = row["site"], row["position"]
        assert blocks[row["op"]] == block and row["layer"] == int(block[-1])

        def edit(v, block=block, p=p):
            v[:, p] = saved[block][:, p]
            return v

        want = _hook_run(model, corrupted, block, edit)
        assert math.isclose(row["value"], want, rel_tol=1e-5, abs_tol=1e-6), row
    frame = res.to_pandas()
    assert set(frame.columns) >= {"site", "position", "head", "value", "metric", "spec"}
    # patching the last block at every position restores the clean metric
    last = frame[frame["site"] == BLOCKS[-1]]
    with torch.no_grad():
        clean_value = float(logit_diff(model(clean).logits))
    assert math.isclose(res.rows[0]["clean"], clean_value, rel_tol=1e-5)
    assert last["value"].notna().all()


def _zero(value, op):
    return torch.zeros_like(value)


def test_ablation_equals_a_hook_loop(gpt2):
    model, clean, _ = gpt2
    res = sweeps.ablation(model, clean, BLOCKS, action=_zero, metric=logit_diff,
                          positions=[0, 3], progress=False)
    blocks = _labels(model, clean)
    assert len(res) == 4
    for row in res.rows:
        block, p = row["site"], row["position"]
        assert blocks[row["op"]] == block and row["layer"] == int(block[-1])

        def edit(v, p=p):
            v[:, p] = 0
            return v

        want = _hook_run(model, clean, block, edit)
        assert math.isclose(row["value"], want, rel_tol=1e-5, abs_tol=1e-6), row


def test_attribution_equals_gradient_times_difference(gpt2):
    model, clean, corrupted = gpt2
    res = sweeps.attribution_patching(model, clean, corrupted, BLOCKS, metric=logit_diff)
    saved = _clean_block_outputs(model, clean)
    grabbed = {}

    def keep(m, i, o, b):
        out = _block_output(o)
        out.retain_grad()
        grabbed[b] = out

    handles = [model.get_submodule(b).register_forward_hook(
        lambda m, i, o, b=b: keep(m, i, o, b)) for b in BLOCKS]
    value = logit_diff(model(corrupted).logits)
    value.backward()
    for h in handles:
        h.remove()
    model.zero_grad(set_to_none=True)
    blocks = _labels(model, corrupted)
    for row in res.rows:
        b = row["site"]
        assert blocks[row["op"]] == b
        diff = saved[b] - grabbed[b].detach()
        want = float((diff * grabbed[b].grad)[:, row["position"]].sum())
        assert math.isclose(row["value"], want, rel_tol=1e-4, abs_tol=1e-6), row


class _Interrupt(Exception):
    pass


class _FlakyExecutor(sweeps.LocalExecutor):
    """Computes `limit` batches, then raises (a crash mid-sweep); counts cells computed."""

    def __init__(self, limit=None):
        super().__init__(progress=False)
        self.limit = limit
        self.cells = 0

    def map(self, job, batches):
        for i, rows in enumerate(super().map(job, batches)):
            self.cells += len(rows)
            yield rows
            if self.limit is not None and i + 1 >= self.limit:
                raise _Interrupt()


def test_interrupted_sweep_resumes_with_only_missing_cells(gpt2, tmp_path):
    model, clean, corrupted = gpt2
    full = sweeps.patching(model, clean, corrupted, BLOCKS, metric=logit_diff, batch_size=2,
                           progress=False)
    out = tmp_path / "sweep"
    first = _FlakyExecutor(limit=2)
    with pytest.raises(_Interrupt):
        sweeps.patching(model, clean, corrupted, BLOCKS, metric=logit_diff, batch_size=2,
                        executor=first, out=str(out))
    assert first.cells == 4
    second = _FlakyExecutor()
    resumed = sweeps.patching(model, clean, corrupted, BLOCKS, metric=logit_diff,
                              batch_size=2, executor=second, out=str(out))
    assert second.cells == len(full) - 4
    assert resumed.to_pandas().drop(columns="spec").equals(
        full.to_pandas().drop(columns="spec"))
    third = _FlakyExecutor()
    sweeps.patching(model, clean, corrupted, BLOCKS, metric=logit_diff, batch_size=2,
                    executor=third, out=str(out))
    assert third.cells == 0
    with pytest.raises(sweeps.SpecMismatchError, match="different sweep"):
        sweeps.patching(model, clean, corrupted, BLOCKS[:1], metric=logit_diff,
                        out=str(out), progress=False)


def test_result_table_heatmap_and_save(gpt2, tmp_path):
    model, clean, corrupted = gpt2
    res = sweeps.patching(model, clean, corrupted, BLOCKS, metric=logit_diff, progress=False)
    table = res.pivot()
    assert table.shape == (len(BLOCKS), clean.shape[1])
    fig = res.heatmap()
    assert fig.axes and fig.axes[0].images
    for suffix in (".parquet", ".csv", ".jsonl"):
        path = res.save(str(tmp_path / f"rows{suffix}"))
        assert (tmp_path / f"rows{suffix}").stat().st_size > 0, path


def test_ablation_defaults_to_zero_ablation_and_takes_restricted_actions(gpt2):
    model, clean, _ = gpt2
    by_hand = sweeps.ablation(model, clean, BLOCKS, action=_zero, metric=logit_diff,
                              progress=False)
    default = sweeps.ablation(model, clean, BLOCKS, metric=logit_diff, progress=False)
    assert [r["value"] for r in default.rows] == [r["value"] for r in by_hand.rows]
    half = sweeps.ablation(model, clean, BLOCKS[:1], action=tl.scale(0.0).at[:, 1],
                           metric=logit_diff, progress=False)
    at_one = sweeps.ablation(model, clean, BLOCKS[:1], action=_zero, positions=[1],
                             metric=logit_diff, progress=False)
    assert math.isclose(half.rows[0]["value"], at_one.rows[0]["value"], rel_tol=1e-6)
