"""Per-step edits of fused nn.LSTM / nn.GRU / nn.RNN: an edit of a state or gate at step t,
live and by replay, equals a step-by-step run of cells loaded with the same weights and
given the same edit; outputs the edit does not reach keep the fused kernel's values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import lens as tl


class Wrap(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        out, hidden = self.rnn(x)
        return (out, *hidden) if isinstance(hidden, tuple) else (out, hidden)


def _cell(rnn: nn.Module, layer: int, direction: int) -> nn.Module:
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    width = rnn.input_size if layer == 0 else rnn.hidden_size * (2 if rnn.bidirectional else 1)
    kind = {nn.LSTM: nn.LSTMCell, nn.GRU: nn.GRUCell}.get(type(rnn))
    cell = (kind(width, rnn.hidden_size) if kind is not None
            else nn.RNNCell(width, rnn.hidden_size, nonlinearity=rnn.nonlinearity))
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, n).copy_(getattr(rnn, n + sfx))
    return cell


def _gated(cell: nn.Module, x, state, edit):
    """One step of an LSTM or GRU cell written out from PyTorch's documented equations, with
    ``edit(name, value)`` applied to each gate and to c (edits nn.*Cell cannot take)."""
    h = state[0] if isinstance(cell, nn.LSTMCell) else state
    gi = x @ cell.weight_ih.t() + cell.bias_ih
    gh = h @ cell.weight_hh.t() + cell.bias_hh
    if isinstance(cell, nn.LSTMCell):
        i, f, g, o = (gi + gh).chunk(4, -1)
        i, f = edit("i", torch.sigmoid(i)), edit("f", torch.sigmoid(f))
        g, o = edit("g", torch.tanh(g)), edit("o", torch.sigmoid(o))
        c = edit("c", f * state[1] + i * g)
        return o * torch.tanh(c), c
    (ri, zi, ni), (rh, zh, nh) = gi.chunk(3, -1), gh.chunk(3, -1)
    r, z = edit("r", torch.sigmoid(ri + rh)), edit("z", torch.sigmoid(zi + zh))
    n = edit("n", torch.tanh(ni + r * nh))
    return (1 - z) * n + z * h


def _by_cells(rnn: nn.Module, x, name: str, where, fn):
    """Run ``rnn`` as cells; ``fn`` replaces facet ``name`` at each (layer, direction, t) in
    ``where``. Returns output, h_n (, c_n) and h as [layer, direction, batch, time, hidden]."""
    seq = x.transpose(0, 1) if rnn.batch_first else x
    steps, batch = seq.shape[:2]
    dirs = 2 if rnn.bidirectional else 1
    lstm = isinstance(rnn, nn.LSTM)
    h_n, c_n, hs = [], [], []
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(dirs):
            cell = _cell(rnn, layer, d)
            h = c = torch.zeros(batch, rnn.hidden_size)
            h_t = [None] * steps
            for t in range(steps) if d == 0 else reversed(range(steps)):
                hit = (layer, d, t) in where

                def edit(n, v, hit=hit):
                    return fn(v) if hit and n == name else v

                if name == "h":  # the library's own cells
                    h, c = cell(seq[t], (h, c)) if lstm else (cell(seq[t], h), c)
                    h = edit("h", h)
                else:  # gates and c: the documented equations
                    got = _gated(cell, seq[t], (h, c) if lstm else h, edit)
                    h, c = got if lstm else (got, c)
                h_t[t] = h
            outs.append(torch.stack(h_t))
            hs.append(torch.stack(h_t, 1))
            h_n.append(h)
            c_n.append(c)
        seq = torch.cat(outs, -1)
    out = seq.transpose(0, 1) if rnn.batch_first else seq
    finals = (torch.stack(h_n), torch.stack(c_n)) if lstm else (torch.stack(h_n),)
    return (out, *finals), torch.stack(hs).reshape(rnn.num_layers, dirs, batch, steps, -1)


def _model(kind: str, batch_first: bool):
    torch.manual_seed(0)
    if kind == "lstm":
        rnn = nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=batch_first)
    elif kind == "gru":
        rnn = nn.GRU(3, 5, num_layers=2, batch_first=batch_first)
    else:
        rnn = nn.RNN(3, 5, nonlinearity="tanh", bidirectional=True, batch_first=batch_first)
    x = torch.randn(2, 6, 3) if batch_first else torch.randn(6, 2, 3)
    return Wrap(rnn).eval(), x


def _live_and_replayed(model, x, selector, action):
    live = tl.trace(model, x, intervene=tl.when(selector, action))
    fork = tl.trace(model, x, intervention_ready=True).fork().intervene(selector, action)
    return live, fork.replay()


STEER = torch.tensor([0.5, -1.0, 2.0, 0.25, -0.75])
ZERO_3 = (tl.zero_ablate().at[0, 1, :, :, 3], {(0, 1)},
          lambda v: v.index_fill(-1, torch.tensor([3]), 0.0))
CASES = {  # kind, batch_first, facet, step, action, (layer, direction)s it edits, the edit
    "lstm_h_zero_unit_time_major": ("lstm", False, "h", 2, *ZERO_3),
    "lstm_h_zero_unit_batch_first": ("lstm", True, "h", 2, *ZERO_3),
    "lstm_h_steer": ("lstm", True, "h", 3, tl.steer(STEER),
                     {(0, 0), (0, 1), (1, 0), (1, 1)}, lambda v: v + STEER),
    "lstm_gate_f": ("lstm", False, "f", 1, tl.zero_ablate().at[1, 0], {(1, 0)},
                    lambda v: torch.zeros_like(v)),
    "lstm_c_scale": ("lstm", True, "c", -2, tl.scale(3.0).at[0], {(0, 0), (0, 1)},
                     lambda v: 3 * v),
    "gru_gate_z": ("gru", True, "z", 2, tl.scale(0.5).at[..., 1:3], {(0, 0), (1, 0)},
                   lambda v: torch.cat([v[:, :1], 0.5 * v[:, 1:3], v[:, 3:]], -1)),
    "gru_h_zero_unit": ("gru", False, "h", 0, tl.zero_ablate().at[0, :, :, :, 4], {(0, 0)},
                        lambda v: v.index_fill(-1, torch.tensor([4]), 0.0)),
    "rnn_tanh_h_steer": ("rnn", True, "h", 4, tl.steer(STEER).at[:, 0], {(0, 0)},
                         lambda v: v + STEER),
    "rnn_tanh_h_zero_reverse": ("rnn", False, "h", 1, tl.zero_ablate().at[0, 1], {(0, 1)},
                                lambda v: torch.zeros_like(v)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_edit_at_one_step_equals_cells_given_the_same_edit(case):
    kind, batch_first, name, step, action, cells, fn = CASES[case]
    model, x = _model(kind, batch_first)
    steps = x.shape[1 if batch_first else 0]
    where = {(layer, d, step % steps) for layer, d in cells}
    with torch.no_grad():
        want, want_h = _by_cells(model.rnn, x, name, where, fn)
        plain = model(x)
    assert not torch.allclose(want[0], plain[0], atol=1e-3)  # the edit matters
    sel = tl.facet(name, module="rnn", step=step)
    for got in _live_and_replayed(model, x, sel, action):
        assert len(got.output) == len(want)
        for g, w in zip(got.output, want, strict=True):
            assert torch.allclose(g, w, atol=1e-5), (case, (g - w).abs().max())
        assert torch.allclose(got.modules["rnn"].facets["h"], want_h, atol=1e-5)


def test_outputs_the_edit_does_not_reach_keep_the_fused_values_bit_for_bit():
    model, x = _model("lstm", False)  # time-major: output[t] is step t
    with torch.no_grad():
        plain = model(x)
    got = tl.run(model, x, intervene=tl.when(tl.facet("h", module="rnn", step=3),
                                             tl.zero_ablate().at[1, 0, :, :, 2]))
    # layer 1's forward direction changes from step 3 on; its reverse direction, and
    # every step before 3, are what the fused kernel computed
    assert torch.equal(got[0][:3], plain[0][:3])
    assert torch.equal(got[0][..., 5:], plain[0][..., 5:])
    assert not torch.equal(got[0][3:, :, :5], plain[0][3:, :, :5])
    kept = [0, 1, 3]  # h_n / c_n rows: layer 0 both ways, layer 1 reverse
    assert torch.equal(got[1][kept], plain[1][kept]) and torch.equal(got[2][kept], plain[2][kept])
    assert not torch.equal(got[1][2], plain[1][2])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_an_edit_that_changes_nothing_leaves_the_fused_op_bit_equal(kind):
    model, x = _model(kind, True)
    with torch.no_grad():
        plain = model(x)
    rule = tl.when(tl.facet("h", module="rnn", step=1), tl.action(lambda v: v.clone()))
    got = tl.run(model, x, intervene=rule)
    assert all(torch.equal(g, p) for g, p in zip(got, plain, strict=True))
    untouched = tl.run(model, x)
    assert all(torch.equal(g, p) for g, p in zip(untouched, plain, strict=True))


def test_patching_a_step_from_another_run_takes_that_runs_state():
    model, x = _model("lstm", True)
    x2 = torch.randn_like(x)
    clean = tl.trace(model, x2)
    clean_h = clean.modules["rnn"].facets["h"][..., 4, :]  # [layer, direction, batch, hidden]
    got = tl.run(model, x, intervene=tl.when(tl.facet("h", module="rnn", step=4),
                                             tl.patch_from(clean)))
    with torch.no_grad():
        where = {(layer, d, 4) for layer in range(2) for d in range(2)}
        want, _ = _by_cells(model.rnn, x, "h", where, _patcher(clean_h))
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-5)


def _patcher(clean_h):
    order = iter([(0, 0), (0, 1), (1, 0), (1, 1)])  # the order _by_cells edits them in
    return lambda v: clean_h[next(order)]


def test_every_step_is_edited_without_step():
    model, x = _model("gru", False)
    got = tl.trace(model, x, intervene=tl.when(tl.facet("h", module="rnn"),
                                               tl.zero_ablate().at[1, 0, :, :, 0]))
    with torch.no_grad():
        where = {(1, 0, t) for t in range(x.shape[0])}
        want, _ = _by_cells(model.rnn, x, "h", where,
                            lambda v: v.index_fill(-1, torch.tensor([0]), 0.0))
    assert torch.allclose(got.output[0], want[0], atol=1e-5)
    assert torch.equal(got.modules["rnn"].facets["h"][1, 0, :, :, 0], torch.zeros(2, 6))


def test_bad_steps_are_refused_with_the_fix():
    model, x = _model("rnn", False)
    with pytest.raises(tl.InterventionError, match="6 time steps"):
        tl.run(model, x, intervene=tl.when(tl.facet("h", module="rnn", step=6),
                                           tl.zero_ablate()))
    with pytest.raises(tl.InterventionError, match="not computed step by step"):
        tl.run(model, x, intervene=tl.when(tl.facet("output", module="rnn", step=1),
                                           tl.zero_ablate()))
    with pytest.raises(tl.SelectorError, match="step="):
        tl.facet("h", step=True)
    shown = repr(tl.facet("h", module="rnn", step=[1, 2]))
    assert shown == "tl.facet('h', module='rnn', step=[1, 2])"


def test_the_readme_example_edits_one_unit_at_one_step():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.lstm = nn.LSTM(3, 6, batch_first=True)
    x = torch.randn(2, 5, 3)
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text.split("## Editing a recurrence step by step", 1)[1]
    # the section's second block: the first builds its own model (replaced here by ours)
    code = section.split("```python\n", 2)[2].split("```", 1)[0]
    trace = tl.trace(model, x, intervention_ready=True)
    scope = {"tl": tl, "torch": torch, "model": model, "x": x, "trace": trace}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    with torch.no_grad():
        want, _ = _by_cells(model.lstm, x, "h", {(0, 0, 3)},
                            lambda v: v.index_fill(-1, torch.tensor([5]), 0.0))
    assert torch.allclose(scope["out"][0], want[0], atol=1e-5)
    halved = {(0, 0, 2), (0, 0, 4)}
    with torch.no_grad():
        want, _ = _by_cells(model.lstm, x, "f", halved, lambda v: 0.5 * v)
    assert torch.allclose(scope["fork"].output[0], want[0], atol=1e-5)


def test_a_calls_facets_name_the_same_site():
    model, x = _model("gru", True)
    trace = tl.trace(model, x, intervention_ready=True)
    site = trace.modules["rnn"].calls[0].facets.site("n", step=2)
    assert site == tl.facet("n", module="rnn:1", step=2)
    by_site = trace.fork().intervene(site, tl.zero_ablate()).replay()
    by_name = trace.fork().intervene(tl.facet("n", module="rnn", step=2),
                                     tl.zero_ablate()).replay()
    assert torch.equal(by_site.output[0], by_name.output[0])
    assert not torch.equal(by_site.output[0], trace.output[0])
    assert torch.equal(by_site.modules["rnn"].facets["n"][:, :, :, 2], torch.zeros(2, 1, 2, 5))
