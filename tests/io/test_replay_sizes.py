"""A loaded trace never makes replay allocate by a number nobody checked: sizes in the file
are checked on the meta device at load, and ops that fail the check refuse to replay."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import lens as tl
from lens.io.loading import NotReplayable, replayable
from tests.helpers import build, regular_cases
from tests.models import get


class Grow(nn.Module):
    def forward(self, x):
        z = torch.zeros(x.shape[0], 4)
        return (z + x).repeat(2, 1)


def _saved(tmp_path):
    tr = tl.trace(Grow(), torch.randn(3, 4))
    tl.save(tr, tmp_path / "t")
    return tmp_path / "t"


def _edit(path, func, args=None, shape=None):
    doc = json.loads((path / "trace.json").read_text())
    (op,) = [o for o in doc["ops"] if o["func"] == func]
    if args is not None:
        op["args"] = {"$": "tuple", "v": args}
    if shape is not None:
        op["shape"] = shape
    (path / "trace.json").write_text(json.dumps(doc))


def _replay_first_op_edit(trace):
    return trace.fork().intervene(tl.func("zeros"), tl.scale(2.0)).replay()


def test_an_honest_trace_replays(tmp_path):
    loaded = tl.load(_saved(tmp_path))
    assert all(replayable(op) for op in loaded.ops)
    x = loaded["input_1"].out
    out = _replay_first_op_edit(loaded)
    torch.testing.assert_close(out.output, ((torch.zeros(3, 4) * 2) + x).repeat(2, 1))


@pytest.mark.parametrize(("func", "args", "shape", "why"), [
    # arguments that disagree with the recorded shape (a huge size, shape left small)
    ("torch.zeros", [10**12, 4], None, "give shape"),
    ("torch.Tensor.repeat", [{"$": "ref", "op": 2}, 10**6, 10**6], None, "give shape"),
    # (arguments and shape edited together are caught by the payload's own shape check,
    # and by the per-op cap: test_the_cap_is_the_callers_choice)
])
def test_a_crafted_size_loads_for_reading_but_refuses_to_replay(tmp_path, func, args, shape,
                                                               why):
    path = _saved(tmp_path)
    _edit(path, func, args, shape)
    loaded = tl.load(path)
    (op,) = [op for op in loaded.ops if isinstance(op.func, NotReplayable)]
    assert why in op.func.reason
    with pytest.raises(tl.ReplayError, match=why):
        op.func()  # what replay calls
    if op.func_name == "repeat":  # downstream of the input: a real replay reaches it
        with pytest.raises(tl.ReplayError, match=why):
            loaded.fork().intervene("input_1", tl.scale(2.0)).replay()


def test_the_cap_is_the_callers_choice(tmp_path):
    path = _saved(tmp_path)
    small = tl.load(path, max_op_bytes=40)  # zeros is 48 bytes, repeat's output 96
    assert {op.func_name for op in small.ops if not replayable(op)} >= {"zeros", "repeat"}
    with pytest.raises(tl.LoadError, match="max_op_bytes"):
        tl.load(path, max_op_bytes=0)


@pytest.mark.parametrize("name", [c.name for c in regular_cases(irregular=True)])
def test_zoo_traces_load_with_every_op_replayable(tmp_path, name):
    """No false alarms: an honest trace of every zoo model passes every size check."""
    case = get(name)
    if "hf" in case.tags:
        pytest.importorskip("transformers")
    model, args, kwargs = build(case)
    tr = tl.trace(model, *args, input_kwargs=kwargs)
    tl.save(tr, tmp_path / name)
    loaded = tl.load(tmp_path / name)
    size_checks = ("give shape", "max_op_bytes", "could not be checked")
    refused = {op.label: op.func.reason for op in loaded.ops
               if isinstance(op.func, NotReplayable)
               and any(w in op.func.reason for w in size_checks)}
    assert not refused
