"""Module-output sites read the clean run from forward hooks, not a full trace; the rows
equal those of a full clean trace exactly and a hand-written hook patch per cell."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lens as tl
from lens.errors import GraphMismatchError
from lens.sweeps import runner as runner_mod
from lens.sweeps.runner import SweepRunner
from lens.sweeps.sources import HookedClean, TracedClean
from lens.sweeps.spec import SweepSpec
from tests.sweeps.conftest import BLOCKS, logit_diff


class Pair(nn.Module):
    """Returns two tensors, the second one computed first (leaf order is not op
    order); neither is read inside, so patching an output op is patching what the
    module returned."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        b = h * 2
        return torch.tanh(h), b


class TwoCalls(nn.Module):
    """``pair`` returns a tuple; ``fc`` runs twice; ``branch`` runs when x sums > 0."""

    def __init__(self) -> None:
        super().__init__()
        self.pair, self.fc, self.head = Pair(), nn.Linear(4, 4), nn.Linear(4, 1)
        self.branch = nn.Linear(4, 4)

    def forward(self, x):
        a, b = self.pair(x)
        y = self.fc(self.fc(a) + b)
        if x.sum() > 0:
            y = self.branch(y)
        return self.head(y)


def _metric(out):
    return out.sum()


def _spec(sites, clean, corrupted, metric):
    return SweepSpec("patching", sites, metric, (clean, corrupted), "each", 1, None, None,
                     {}, None)


def _counting_traces(monkeypatch):
    calls = []
    real = runner_mod._trace

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(runner_mod, "_trace", counted)
    return calls


def _hook_value(model, clean, corrupted, address, call, leaf, p, metric):
    """Ground truth on a copy of the model: record the clean output of ``address``'s
    call number ``call`` (tensor ``leaf`` of what it returns) with a hook, then patch it
    at position ``p`` into the corrupted run with another hook."""
    m = copy.deepcopy(model)
    mod = m.get_submodule(address)
    seen, saved = [0], {}

    def grab(_m, _i, o):
        seen[0] += 1
        if seen[0] == call:
            saved["v"] = (o if isinstance(o, tuple) else (o,))[leaf].detach().clone()

    h = mod.register_forward_hook(grab)
    with torch.no_grad():
        m(clean)
    h.remove()
    seen[0] = 0

    def patch(_m, _i, o):
        seen[0] += 1
        if seen[0] != call:
            return None
        outs = list(o) if isinstance(o, tuple) else [o]
        new = outs[leaf].clone()
        new[:, p] = saved["v"][:, p]
        outs[leaf] = new
        return tuple(outs) if isinstance(o, tuple) else new

    h = mod.register_forward_hook(patch)
    try:
        with torch.no_grad():
            return float(metric(m(corrupted)))
    finally:
        h.remove()


def test_block_sites_take_the_hook_path_and_equal_hook_patching(gpt2, monkeypatch):
    model, clean, corrupted = gpt2
    calls = _counting_traces(monkeypatch)
    runner = SweepRunner(model, _spec(BLOCKS, clean, corrupted, logit_diff))
    assert len(calls) == 1  # the corrupted run only: the clean run was not traced
    assert isinstance(runner.clean, HookedClean) and runner.source is None
    full = SweepRunner(model, _spec(BLOCKS, clean, corrupted, logit_diff),
                       clean_trace=True)
    assert isinstance(full.clean, TracedClean)
    cells = runner.cells()
    assert cells == full.cells()
    rows, want_rows = runner.run(cells), full.run(cells)
    assert [r["value"] for r in rows] == [r["value"] for r in want_rows]  # exactly
    assert rows[0]["clean"] == want_rows[0]["clean"]

    def metric(out):
        return logit_diff(out.logits)

    for row in rows:
        want = _hook_value(model, clean, corrupted, row["site"], 1, 0, row["position"],
                           metric)
        assert math.isclose(row["value"], want, rel_tol=1e-5, abs_tol=1e-6), row


def test_tuple_outputs_and_repeated_calls_read_the_right_clean_tensor():
    torch.manual_seed(0)
    model = TwoCalls().eval()
    clean = torch.randn(1, 3, 4).abs()
    corrupted = clean + 0.5 * torch.randn(1, 3, 4)
    corrupted = corrupted - corrupted.sum() / corrupted.numel() + 0.1  # branch runs too
    spec = _spec(["pair", "fc"], clean, corrupted, _metric)
    runner = SweepRunner(model, spec)
    assert isinstance(runner.clean, HookedClean)
    full = SweepRunner(model, spec, clean_trace=True)
    cells = runner.cells()
    rows = runner.run(cells)
    assert [r["value"] for r in rows] == [r["value"] for r in full.run(cells)]
    tr = tl.trace(model, corrupted)
    where = {tr["pair"][0].label: ("pair", 1, 0), tr["pair"][1].label: ("pair", 1, 1),
             tr["fc:1"].label: ("fc", 1, 0), tr["fc:2"].label: ("fc", 2, 0)}
    assert {r["op"] for r in rows} == set(where) and len(rows) == 4 * 3
    for row in rows:
        address, call, leaf = where[row["op"]]
        want = _hook_value(model, clean, corrupted, address, call, leaf, row["position"],
                           _metric)
        assert math.isclose(row["value"], want, rel_tol=1e-5, abs_tol=1e-6), row


def test_op_sites_keep_the_full_clean_trace(gpt2):
    model, clean, corrupted = gpt2
    label = tl.trace(model, corrupted)[BLOCKS[0]].label
    for sites in (label, tl.func("addmm"), [BLOCKS[0], label]):
        runner = SweepRunner(model, _spec(sites, clean, corrupted, logit_diff))
        assert isinstance(runner.clean, TracedClean) and runner.source is not None


def test_a_clean_run_with_other_module_calls_is_refused():
    torch.manual_seed(0)
    model = TwoCalls().eval()
    corrupted = -torch.ones(1, 3, 4)  # branch does not run
    clean = torch.ones(1, 3, 4)  # branch runs: another module call, another graph
    with pytest.raises(GraphMismatchError, match="different graph"):
        SweepRunner(model, _spec(["fc", "branch"], clean, corrupted, _metric))
