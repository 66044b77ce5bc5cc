"""fork / intervene / replay / rerun: copy on write, only the downstream cone recomputed,
replay == rerun == live, recorded randomness reused, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens as tl
import lens.interventions as li
from lens.errors import InterventionError, PayloadError, ReplayError
from tests.models import get


class _Net(nn.Module):
    """Dropout (active in train mode) downstream of a nested module; a recurrent fc."""

    def __init__(self, p: float = 0.4) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.drop(self.block(x))
        for _ in range(2):
            h = torch.tanh(self.fc(h)) + h
        return self.head(h)


def _net(train: bool = False) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = _Net()
    model.train(train)
    return model, torch.randn(8, 6)


def _snapshot(tr: tl.Trace) -> list[tuple[int, torch.Tensor | None]]:
    return [(id(op.payload), None if op.payload is None else op.payload.clone())
            for op in tr.ops]


def _unchanged(tr: tl.Trace, snap: list[tuple[int, torch.Tensor | None]]) -> bool:
    for op, (ident, value) in zip(tr.ops, snap, strict=True):
        if id(op.payload) != ident or (value is not None and not torch.equal(op.payload, value)):
            return False
    return not any(op.fired for op in tr.ops)


def test_a_fork_shares_payloads_and_replays_only_the_cone() -> None:
    model, x = _net()
    src = tl.trace(model, x, intervention_ready=True)
    snap = _snapshot(src)
    f = src.fork()
    assert all(a.payload is b.payload for a, b in zip(f.ops, src.ops, strict=True))
    assert all(a != b and a.record is not b.record for a, b in zip(f.ops, src.ops, strict=True))
    site = "tanh_1_5:2"
    assert f.intervene(site, li.scale(0.0)) is f
    f.replay()
    assert _unchanged(src, snap)
    cone = {op.call_index for op in src.ops if op.index > src[site].index}
    recomputed = {op.call_index for op in f.ops if op.payload is not src.op_at_call(
        op.call_index).payload}
    assert recomputed <= cone | {src[site].call_index}
    assert {op.label for op in f.ops if op.fired} == {site}
    assert torch.equal(f[site].out, torch.zeros(8, 6))
    assert f["linear_1_1"].payload is src["linear_1_1"].payload  # upstream still shared
    live = tl.trace(model, x, intervene=li.when(site, li.scale(0.0)))
    assert torch.equal(f.output, live.output)
    assert torch.equal(f.rerun(model, x).output, live.output)
    assert _unchanged(src, snap)


def test_replay_again_and_clear_start_from_the_source() -> None:
    model, x = _net()
    src = tl.trace(model, x, intervention_ready=True)
    f = src.fork().intervene("block", li.scale(2.0))
    once = f.replay().output.clone()
    assert torch.equal(f.replay().output, once)
    assert all(len(op.fired) <= 1 for op in f.ops)
    f.intervene(tl.func("tanh"), li.clamp(max=0.1)).replay()
    live = li.run(model, x, intervene=[li.when("block", li.scale(2.0)),
                                       li.when(tl.func("tanh"), li.clamp(max=0.1))])
    assert torch.equal(f.output, live)
    f.clear()
    assert torch.equal(f.output, src.output) and not any(op.fired for op in f.ops)
    assert all(a.payload is b.payload for a, b in zip(f.ops, src.ops, strict=True))


@pytest.mark.parametrize("site", ["block", "block.0", "fc:2", "linear_2_4:1", "relu_1_2"])
def test_dropout_in_training_mode_replays_its_recorded_mask(site: str) -> None:
    model, x = _net(train=True)
    torch.manual_seed(11)
    src = tl.trace(model, x, intervention_ready=True)
    act = li.steer(torch.linspace(-1, 1, 6), alpha=0.5)
    f = src.fork().intervene(site, act).replay()
    torch.manual_seed(123)
    caller = torch.get_rng_state()
    r = f.rerun(model, x)
    assert torch.equal(torch.get_rng_state(), caller)  # rerun put the caller's RNG back
    torch.manual_seed(11)
    live = tl.trace(model, x, intervene=li.when(site, act))
    assert torch.equal(f.output, live.output) and torch.equal(r.output, live.output)
    assert not torch.equal(f.output, src.output)


def test_dropout_replays_its_draws_from_the_state_recorded_per_op() -> None:
    model, x = _net(train=True)
    torch.manual_seed(11)
    src = tl.trace(model, x)  # not intervention_ready: each random op still has its state
    for site in ("fc:1", "block.0"):  # dropout downstream of both (relu zeros included)
        torch.manual_seed(11)
        live = tl.trace(model, x, intervene=li.when(site, li.scale(0.5)))
        f = src.fork().intervene(site, li.scale(0.5)).replay()
        assert torch.equal(f.output, live.output), site


def test_random_op_without_recorded_state_refuses_to_replay() -> None:
    model, x = _net(train=True)
    src = tl.trace(model, x)
    drop = next(op for op in src.ops if op.func_name == "dropout")
    drop.rng = None  # as a trace from a source that kept no generator state
    with pytest.raises(ReplayError, match=rf"{drop.label} \(dropout\) draws random numbers"):
        src.fork().intervene("block.0", li.scale(0.5)).replay()


def test_dropout_state_read_off_each_op_survives_other_random_calls() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5), nn.Linear(6, 2)).train()
    x = torch.randn(8, 6)
    torch.manual_seed(4)
    src = tl.trace(model, x)
    torch.rand(100)  # the caller's stream moves on; replay does not depend on it
    f = src.fork().intervene("0", li.scale(-2.0)).replay()
    torch.manual_seed(4)
    assert torch.equal(f.output, li.run(model, x, intervene=li.when("0", li.scale(-2.0))))


def test_replay_without_payloads_says_what_to_recapture() -> None:
    model, x = _net()
    src = tl.trace(model, x, save=tl.func("tanh"))
    with pytest.raises(PayloadError, match=r"tl\.trace\(model, x, intervention_ready=True\)"):
        src.fork().intervene("fc:1", li.zero_ablate()).replay()


def test_rerun_names_the_first_op_where_the_graph_differs() -> None:
    model, (x,), _ = get("nested_demo").build()
    src = tl.trace(model, x, intervention_ready=True)
    f = src.fork().intervene(tl.func("sin"), li.zero_ablate())
    with pytest.raises(InterventionError, match=r"rerun: this run's graph differs .* op #\d+"):
        f.rerun(model, -x)  # takes the else-branch
    other, (y,), _ = get("conditional_else").build()
    with pytest.raises(InterventionError, match="differs"):
        tl.trace(other, y, intervene=li.when(tl.func("exp"), li.patch_from(src)))


def test_sites_by_label_pass_layer_module_selector_and_op() -> None:
    model, args, _ = get("recurrent_demo").build()
    tr = tl.trace(model, *args, intervention_ready=True)
    assert tr.find_sites("linear_1_1:2") == ["linear_1_1:2"]
    assert tr.find_sites("linear_1_1") == ["linear_1_1:1", "linear_1_1:2", "linear_1_1:3"]
    assert tr.find_sites("fc") == tr.find_sites(tl.func("linear"))
    assert tr.find_sites("fc:3") == ["linear_1_1:3"]
    assert tr.find_sites(tl.func("add") & tl.preceded_by(tl.module("fc:1"))) == ["add_1_2:1"]
    assert tr.find_sites(tr["mul_1_3:1"]) == ["mul_1_3:1"]
    assert tr.find_sites(tr["mul_1_3"]) == ["mul_1_3:1", "mul_1_3:2", "mul_1_3:3"]
    with pytest.raises(InterventionError, match="which no module returns"):
        tr.fork().intervene(~tl.module("fc"), li.zero_ablate())
    with pytest.raises(InterventionError, match="matches no op"):
        tr.fork().intervene(tl.func("conv2d"), li.zero_ablate())
    with pytest.warns(li.InterventionWarning):
        tr.fork().intervene(tl.func("conv2d"), li.zero_ablate(), strict=False)


def test_inputs_can_be_edited_by_replay_not_by_rerun() -> None:
    model, x = _net()
    src = tl.trace(model, x, intervention_ready=True)
    f = src.fork().intervene("input_1", li.scale(2.0)).replay()
    assert torch.equal(f.output, model(x * 2.0))
    with pytest.raises(InterventionError, match="graph input op"):
        f.rerun(model, x)


def test_a_fork_of_a_fork_builds_on_its_edits() -> None:
    model, x = _net()
    src = tl.trace(model, x, intervention_ready=True)
    f = src.fork().intervene("block", li.scale(2.0)).replay()
    g = f.fork().intervene("fc:2", li.scale(0.5)).replay()
    both = li.run(model, x, intervene=[li.when("block", li.scale(2.0)),
                                       li.when("fc:2", li.scale(0.5))])
    assert torch.equal(g.output, both)
    assert torch.equal(f.output, li.run(model, x, intervene=li.when("block", li.scale(2.0))))


def test_module_and_op_edits_on_one_op_apply_in_live_order() -> None:
    model, x = _net()
    src = tl.trace(model, x, intervention_ready=True)
    # both select the block's ReLU output: the op edit applies as it runs, the module
    # edit at block's exit, whatever the order they were given in
    edits = [("block", li.scale(3.0)), ("relu_1_2", li.steer(torch.ones(6)))]
    f = src.fork()
    for site, act in edits:
        f.intervene(site, act)
    f.replay()
    live = tl.trace(model, x, intervene=[li.when(s, a) for s, a in edits])
    assert torch.equal(f.output, live.output)
    assert torch.equal(f.rerun(model, x).output, live.output)
    assert torch.equal(live["relu_1_2"].out, (src["relu_1_2"].out + 1.0) * 3.0)
