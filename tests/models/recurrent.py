"""Recurrent models: fused nn.LSTM / nn.GRU and a Python-looped cell.

Numerics note: on CPU, nn.LSTM gives results ~1e-8 apart with grad enabled
vs under ``torch.no_grad()`` (a different kernel is used when no input
requires grad).  Each mode is itself deterministic; compare like with like.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register


class LSTMHead(nn.Module):
    """2-layer batch-first LSTM, Linear on the last time step."""

    def __init__(self, input_size=6, hidden_size=8, num_layers=2, out=4):
        super().__init__()
        self.lstm = nn.LSTM(
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
        )
        self.fc = nn.Linear(hidden_size, out)

    def forward(self, x):
        seq, (h, c) = self.lstm(x)
        return self.fc(seq[:, -1])


class BiGRUHead(nn.Module):
    """Bidirectional, time-major GRU; Linear on every step's features."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(6, 8, num_layers=1, bidirectional=True, batch_first=False)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        seq, h_n = self.gru(x)  # seq: (T, B, 16), h_n: (2, B, 8)
        pooled = seq.mean(dim=0)
        return self.fc(pooled) + h_n.sum(dim=0).sum(dim=-1, keepdim=True)


class CellLoop(nn.Module):
    """LSTMCell driven by a Python loop over time; state starts as zeros."""

    def __init__(self, input_size=6, hidden_size=8, out=4):
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.fc = nn.Linear(hidden_size, out)

    def forward(self, x):
        batch, steps, _ = x.shape
        h = torch.zeros(batch, self.hidden_size)
        c = torch.zeros(batch, self.hidden_size)
        for t in range(steps):
            h, c = self.cell(x[:, t], (h, c))
        return self.fc(h)


@register("lstm", "rnn", "grad_mode_sensitive")
def lstm():
    torch.manual_seed(0)
    model = LSTMHead().eval()
    return model, (torch.randn(3, 7, 6),), {}


@register("gru_bidir", "rnn")
def gru_bidir():
    torch.manual_seed(0)
    model = BiGRUHead().eval()
    return model, (torch.randn(7, 3, 6),), {}


@register("rnn_cell_loop", "rnn", "recurrent", "loop", "internal_tensor")
def rnn_cell_loop():
    torch.manual_seed(0)
    model = CellLoop().eval()
    return model, (torch.randn(3, 5, 6),), {}


@register("lstm_bench", "rnn", "bench", "grad_mode_sensitive")
def lstm_bench():
    torch.manual_seed(0)
    model = LSTMHead(input_size=64, hidden_size=128, num_layers=2, out=10).eval()
    return model, (torch.randn(8, 32, 64),), {}
