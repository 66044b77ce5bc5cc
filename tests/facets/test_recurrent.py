"""Recurrent facets: per-step states and gates of fused nn.LSTM / nn.GRU / nn.RNN equal a
step-by-step run of nn.*Cell modules loaded with the same weights, and the gates rebuild
the fused op's h_n / c_n."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens as tl
from tests.helpers import build
from tests.models import get


class Wrap(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0].sum(-1)


def _cell(rnn: nn.Module, layer: int, direction: int) -> nn.Module:
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    width = rnn.input_size if layer == 0 else rnn.hidden_size * (2 if rnn.bidirectional else 1)
    if isinstance(rnn, nn.LSTM):
        cell = nn.LSTMCell(width, rnn.hidden_size, bias=rnn.bias)
    elif isinstance(rnn, nn.GRU):
        cell = nn.GRUCell(width, rnn.hidden_size, bias=rnn.bias)
    else:
        cell = nn.RNNCell(width, rnn.hidden_size, bias=rnn.bias, nonlinearity=rnn.nonlinearity)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if rnn.bias else [])
    with torch.no_grad():
        for n in names:
            getattr(cell, n).copy_(getattr(rnn, n + sfx))
    return cell


def _by_cells(rnn: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """h (and c) per layer, direction and step: [layer, dir, batch, time, hidden]."""
    seq = x.transpose(0, 1) if rnn.batch_first else x
    dirs = 2 if rnn.bidirectional else 1
    hs, cs = [], []
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(dirs):
            cell = _cell(rnn, layer, d)
            h = torch.zeros(seq.shape[1], rnn.hidden_size)
            c = torch.zeros_like(h)
            h_t, c_t = [None] * seq.shape[0], [None] * seq.shape[0]
            steps = range(seq.shape[0]) if d == 0 else reversed(range(seq.shape[0]))
            for t in steps:
                if isinstance(rnn, nn.LSTM):
                    h, c = cell(seq[t], (h, c))
                else:
                    h = cell(seq[t], h)
                h_t[t], c_t[t] = h, c
            hs.append(torch.stack(h_t, 1))
            cs.append(torch.stack(c_t, 1))
            outs.append(torch.stack(h_t, 0))
        seq = torch.cat(outs, -1)
    shape = (rnn.num_layers, dirs, *hs[0].shape)
    return {"h": torch.stack(hs).reshape(shape), "c": torch.stack(cs).reshape(shape)}


def _cases():
    torch.manual_seed(0)
    rnn = Wrap(nn.RNN(5, 7, num_layers=2, bidirectional=True, nonlinearity="relu",
                      batch_first=True)).eval()
    lstm = Wrap(nn.LSTM(5, 6, num_layers=2, bidirectional=True)).eval()
    return {
        "lstm": (*build(get("lstm"))[:2], "lstm"),
        "gru_bidir": (*build(get("gru_bidir"))[:2], "gru"),
        "rnn_relu_bidir_2layer": (rnn, (torch.randn(3, 4, 5),), "rnn"),
        "lstm_bidir_2layer_time_major": (lstm, (torch.randn(4, 3, 5),), "rnn"),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_states_equal_a_run_of_cells(name):
    model, args, address = _cases()[name]
    module = model.get_submodule(address)
    trace = tl.trace(model, *args)
    f = trace.modules[address].facets
    assert f.kinds == ("recurrent",)
    x = trace.modules[address].calls[0].inputs[0].out
    with torch.no_grad():
        want = _by_cells(module, x)
        out, h_n = module(x)[0], module(x)[1]
    assert torch.allclose(f["h"], want["h"], atol=1e-6)
    if isinstance(module, nn.LSTM):
        assert torch.allclose(f["c"], want["c"], atol=1e-6)
        assert torch.allclose(f["c_n"], h_n[1], atol=1e-6)
        h_n = h_n[0]
    assert torch.allclose(f["output"], out, atol=1e-6)
    assert torch.allclose(f["h_n"], h_n, atol=1e-6)


def test_lstm_gates_reproduce_h_n_and_c_n():
    model, args, _ = build(get("lstm"))
    f = tl.trace(model, *args).modules["lstm"].facets
    i, fg, g, o = (f[n] for n in "ifgo")
    layers, _, batch, steps, hidden = i.shape
    for layer in range(layers):
        c = torch.zeros(batch, hidden)
        for t in range(steps):
            c = fg[layer, 0, :, t] * c + i[layer, 0, :, t] * g[layer, 0, :, t]
            h = o[layer, 0, :, t] * torch.tanh(c)
        assert torch.allclose(c, f["c_n"][layer], atol=1e-6)
        assert torch.allclose(h, f["h_n"][layer], atol=1e-6)


def test_lstm_gates_equal_the_gate_equations_on_the_weights():
    model, args, _ = build(get("lstm"))
    lstm = model.lstm
    f = tl.trace(model, *args).modules["lstm"].facets
    x = args[0]
    h = torch.zeros(x.shape[0], lstm.hidden_size)
    with torch.no_grad():
        for t in range(x.shape[1]):
            pre = (x[:, t] @ lstm.weight_ih_l0.t() + lstm.bias_ih_l0 + h @ lstm.weight_hh_l0.t()
                   + lstm.bias_hh_l0)
            gates = pre.chunk(4, -1)
            want = [torch.sigmoid(gates[0]), torch.sigmoid(gates[1]), torch.tanh(gates[2]),
                    torch.sigmoid(gates[3])]
            for name, w in zip("ifgo", want, strict=True):
                assert torch.allclose(f[name][0, 0, :, t], w, atol=1e-6), (name, t)
            h = f["h"][0, 0, :, t]


def test_gru_gates_rebuild_the_states():
    model, args, _ = build(get("gru_bidir"))
    f = tl.trace(model, *args).modules["gru"].facets
    r, z, n, h = f["r"], f["z"], f["n"], f["h"]
    assert r.shape == (1, 2, 3, 7, 8)
    prev = torch.zeros(3, 8)
    for t in range(7):  # forward direction: h_t = (1 - z) * n + z * h_{t-1}
        prev = (1 - z[0, 0, :, t]) * n[0, 0, :, t] + z[0, 0, :, t] * prev
        assert torch.allclose(prev, h[0, 0, :, t], atol=1e-6)
    assert torch.allclose(h[0, 1, :, 0], f["h_n"][1], atol=1e-6)  # reverse ends at t=0


def test_packed_sequences_are_noted_not_guessed():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 5)

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = lstm

        def forward(self, x):
            p = nn.utils.rnn.pack_padded_sequence(x, [3, 2], enforce_sorted=True)
            return self.lstm(p)[1][0]

    trace = tl.trace(Packed(), torch.randn(3, 2, 4))
    f = trace.modules["lstm"].facets
    assert list(f) == []
    with pytest.raises(tl.LookupKeyError, match="packed sequence"):
        f["h"]


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_projected_lstm_states_rebuild_the_fused_outputs():
    torch.manual_seed(0)
    model = Wrap(nn.LSTM(5, 6, num_layers=2, proj_size=3, batch_first=True)).eval()
    x = torch.randn(2, 4, 5)
    f = tl.trace(model, x).modules["rnn"].facets
    out, (h_n, c_n) = model.rnn(x)
    assert f["h"].shape == (2, 1, 2, 4, 3) and f["c"].shape == (2, 1, 2, 4, 6)
    assert torch.allclose(f["h"][-1, 0], out, atol=1e-6)  # top layer's h is the output
    assert torch.allclose(f["h"][:, 0, :, -1], h_n, atol=1e-6)
    assert torch.allclose(f["c"][:, 0, :, -1], c_n, atol=1e-6)
