"""The sweep result store loses nothing: damaged lines are skipped and recomputed, valid
rows are never deleted, one writer per folder, and code changes are noticed."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

import lens as tl
from lens import sweeps
from lens.io._lock import LOCK_FILE
from tests.sweeps import _kill
from tests.sweeps._kill import SITES, run_sweep_job, sweep_inputs, toy, toy_metric


class _Counting(sweeps.LocalExecutor):
    def __init__(self) -> None:
        super().__init__(progress=False)
        self.keys: list[tuple] = []

    def map(self, job, batches):
        for rows in super().map(job, batches):
            self.keys += [(r["site"], r["position"]) for r in rows]
            yield rows


@pytest.fixture(scope="module")
def reference():
    return run_sweep_job(None)


def _rows_file(tmp_path):
    run_sweep_job(str(tmp_path))
    return tmp_path / "rows.jsonl"


DAMAGE = {
    "garbage": b'{"site": "lin',
    "invalid utf-8": b"\xff\xfe\x80 not text",
    "a list": b"[1, 2, 3]",
    "no cell key": b'{"value": 1.0, "baseline": 0.0}',
    "bad position": b'{"site": "x", "op": "x", "layer": null, "position": "3", "head": null, '
                    b'"value": 1.0}',
}


@pytest.mark.parametrize("where", [1, 4, 8])
def test_damaged_lines_anywhere_are_skipped_reported_and_only_their_cells_recomputed(
        tmp_path, reference, where, caplog):
    lines = _rows_file(tmp_path).read_bytes().splitlines(keepends=True)
    lost = json.loads(lines[where - 1])
    kept = [ln for i, ln in enumerate(lines) if i != where - 1]
    damaged = list(DAMAGE.values())
    text = b"".join(kept[:where - 1]) + b"\n".join(damaged) + b"\n" + b"".join(kept[where - 1:])
    (tmp_path / "rows.jsonl").write_bytes(text)
    counting = _Counting()
    with caplog.at_level(logging.WARNING, logger="lens.sweeps"):
        res = run_sweep_job(str(tmp_path), executor=counting)
    assert res.rows == reference.rows
    assert counting.keys == [(lost["site"], lost["position"])]  # nothing else recomputed
    assert len(res.damaged) == len(DAMAGE)
    assert "skipped 5 damaged" in caplog.text.lower()
    after = (tmp_path / "rows.jsonl").read_bytes()
    assert after.startswith(text)  # nothing deleted, nothing rewritten
    for line in kept:  # every valid row still there, once
        assert after.count(line) == 1


def test_torn_last_line_does_not_swallow_the_next_row(tmp_path, reference):
    path = _rows_file(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    torn = lines[-1][:20]
    path.write_bytes(b"".join(lines[:-1]) + torn)
    res = run_sweep_job(str(tmp_path))
    assert res.rows == reference.rows and len(res.damaged) == 1
    assert path.read_bytes() == b"".join(lines[:-1]) + torn + b"\n" + lines[-1]
    again = run_sweep_job(str(tmp_path))  # the torn line is reported again, never removed
    assert again.rows == reference.rows and len(again.damaged) == 1


def test_a_broken_spec_file_names_the_file_and_what_to_do(tmp_path):
    _rows_file(tmp_path)
    for broken in (b"{not json", b"\xff", b"[]", b'{"digest": 3, "spec": {}}'):
        (tmp_path / "spec.json").write_bytes(broken)
        with pytest.raises(tl.LoadError, match="spec.json is damaged.*new folder.*force"):
            run_sweep_job(str(tmp_path))
    (tmp_path / "spec.json").unlink()
    with pytest.raises(sweeps.SpecMismatchError, match="spec.json is missing"):
        run_sweep_job(str(tmp_path))


def test_non_finite_values_are_kept_but_a_strictly_bad_line_is_damaged(tmp_path):
    from lens.sweeps.store import ResultStore

    store = ResultStore(tmp_path, {"kind": "t"}, "d1")
    rows = [{"site": "a", "op": "a", "layer": None, "position": p, "head": None, "value": v}
            for p, v in enumerate([float("nan"), float("inf"), -float("inf"), 2 ** 63])]
    store.append(rows)  # json.dumps writes NaN/Infinity: a metric may be non-finite
    with (tmp_path / "rows.jsonl").open("ab") as f:
        f.write(b'{"site": "b", "site": "c", "op": "b", "layer": null, "position": 0, '
                b'"head": null, "value": 1}\n')
    again = ResultStore(tmp_path, {"kind": "t"}, "d1")
    got = again.load()
    assert [r["position"] for r in got] == [0, 1, 2, 3] and got[3]["value"] == 2 ** 63
    assert torch.isnan(torch.tensor(got[0]["value"]))
    assert [r["value"] for r in got[1:3]] == [float("inf"), -float("inf")]
    assert len(again.damaged) == 1 and "'site' appears twice" in again.damaged[0]


def test_a_linked_rows_file_is_refused_not_followed(tmp_path):
    from lens.sweeps.store import ResultStore

    (tmp_path / "elsewhere.jsonl").write_bytes(b"")
    (tmp_path / "rows.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(tl.LoadError, match="rows.jsonl is a symbolic link"):
        ResultStore(tmp_path, {"kind": "t"}, "d1").load()


def _other_metric(out: torch.Tensor) -> torch.Tensor:
    return out[0, -1, 0] - out[0, -1, 1]


def _patch(out, metric, resume=True):
    clean, corrupted = sweep_inputs()
    return sweeps.patching(toy(), clean, corrupted, SITES, metric=metric, out=str(out),
                           progress=False, resume=resume)


def test_edited_metric_code_or_another_lambda_is_refused_unless_forced(tmp_path):
    _patch(tmp_path, toy_metric)
    edited = _kill.toy_metric
    try:  # same module and name, another body
        _kill.toy_metric = lambda out: out[0, -1, 0]
        _kill.toy_metric.__qualname__ = "toy_metric"
        _kill.toy_metric.__module__ = edited.__module__
        with pytest.raises(sweeps.SpecMismatchError, match="metric had other code.*force"):
            _patch(tmp_path, _kill.toy_metric)
    finally:
        _kill.toy_metric = edited
    lam = tmp_path / "lam"
    _patch(lam, lambda out: out[0, -1, 0])
    with pytest.raises(sweeps.SpecMismatchError, match="other code"):
        _patch(lam, lambda out: out[0, -1, 1])
    forced = _patch(lam, lambda out: out[0, -1, 1], resume="force")
    with torch.no_grad():
        first = float(toy()(sweep_inputs()[1])[0, -1, 0])
    assert forced.rows[0]["baseline"] == pytest.approx(first)  # rows kept from before
    _patch(lam, lambda out: out[0, -1, 1])  # the forced spec is now the folder's spec
    assert _patch(tmp_path / "same", _other_metric).digest != _patch(
        tmp_path / "same2", toy_metric).digest  # same body, other name: another sweep
    with pytest.raises(sweeps.SpecMismatchError, match="resume=False"):
        _patch(tmp_path, toy_metric, resume=False)


def test_closure_values_and_action_code_are_part_of_the_identity(tmp_path):
    def make(k):
        return lambda out: out[0, -1, k]

    clean, _ = sweep_inputs()
    a = sweeps.ablation(toy(), clean, SITES, metric=make(0), out=str(tmp_path),
                        action=lambda v: v * 0, progress=False)
    with pytest.raises(sweeps.SpecMismatchError, match="metric had other code"):
        sweeps.ablation(toy(), clean, SITES, metric=make(1), out=str(tmp_path),
                        action=lambda v: v * 0, progress=False)
    with pytest.raises(sweeps.SpecMismatchError, match="action had other code"):
        sweeps.ablation(toy(), clean, SITES, metric=make(0), out=str(tmp_path),
                        action=lambda v: v * 2, progress=False)
    with pytest.raises(sweeps.SpecMismatchError, match="different sweep"):
        sweeps.ablation(toy(), clean, SITES, metric=make(0), out=str(tmp_path),
                        action=tl.steer(torch.ones(8)), progress=False)
    again = sweeps.ablation(toy(), clean, SITES, metric=make(0), out=str(tmp_path),
                            action=lambda v: v * 0, progress=False)
    assert again.rows == a.rows


HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def _holder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder / LOCK_FILE)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_folder_held_by_another_live_process_is_refused_and_freed_when_it_dies(tmp_path):
    from lens.io import extract_dataset

    holder = _holder(tmp_path)
    try:
        with pytest.raises(sweeps.FolderBusyError, match="another sweep that is still running"):
            run_sweep_job(str(tmp_path))
        with pytest.raises(sweeps.FolderBusyError, match="another extraction"):
            extract_dataset(toy(), _kill.extract_data(), SITES, output_dir=tmp_path,
                            progress=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.communicate()
    assert len(run_sweep_job(str(tmp_path))) == 8
    holder = _holder(tmp_path)  # our own lock was released on return
    holder.communicate()
    assert len(run_sweep_job(str(tmp_path))) == 8


class _Exploding(torch.nn.Module):
    def forward(self, x):
        raise AssertionError("the model ran: the inputs were not checked first")


def test_patching_inputs_of_different_shapes_are_refused_before_any_work(tmp_path):
    calls = []

    def builder():
        calls.append(1)
        return toy()

    clean = torch.tensor([[1, 2, 3, 4]])
    for corrupted in (torch.tensor([[1, 2, 3]]), clean.float(), (clean, clean)):
        with pytest.raises(tl.InterventionError, match="clean and corrupted inputs differ"):
            sweeps.patching(None, clean, corrupted, SITES, metric=toy_metric,
                            model_fn=builder, out=str(tmp_path / "x"), progress=False)
        with pytest.raises(tl.InterventionError, match="clean and corrupted inputs differ"):
            sweeps.attribution_patching(_Exploding(), clean, corrupted, SITES,
                                        metric=toy_metric)
    assert not calls and not (tmp_path / "x").exists()


@pytest.mark.parametrize("positions,match", [([0, 4], "4 is out of range"),
                                             ([-1], "-1 is out of range"),
                                             ([1.0], "not an integer"),
                                             ([1, 1], "listed twice"),
                                             ("all", "use 'each'")])
def test_bad_positions_are_refused_before_any_work(tmp_path, positions, match):
    clean, corrupted = sweep_inputs()
    ex = _Counting()
    with pytest.raises(tl.InterventionError, match=match):
        sweeps.patching(toy(), clean, corrupted, SITES, metric=toy_metric, executor=ex,
                        positions=positions, out=str(tmp_path), progress=False)
    assert ex.keys == [] and not (tmp_path / "rows.jsonl").exists()
    with pytest.raises(tl.InterventionError, match="needs a dimension 5"):
        sweeps.ablation(toy(), clean, SITES, metric=toy_metric, positions=[0],
                        position_dim=5, progress=False)
