"""FLOPs and MACs counted from shapes equal the textbook formulas, computed by hand here
from each module's own attributes."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

import lens as tl


def _only(trace, func_name):
    (op,) = [op for op in trace.ops if op.func_name == func_name]
    return op


def test_linear_and_elementwise():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(50, 8)
    tr = tl.trace(model, x)
    want_macs = sum(x.shape[0] * m.out_features * m.in_features
                    for m in model if isinstance(m, nn.Linear))
    bias_adds = sum(x.shape[0] * m.out_features for m in model if isinstance(m, nn.Linear))
    relu = x.shape[0] * model[0].out_features
    total = sum(op.flops for op in tr.ops)
    assert sum(op.macs for op in tr.ops) == want_macs
    assert total == 2 * want_macs + bias_adds + relu
    assert f"MACs: {want_macs / 1e3:.1f} KFLOPs" in tr.summary()


def test_convolutions_plain_grouped_and_transposed():
    torch.manual_seed(0)
    convs = [nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(4, 8, 3, groups=2, bias=False),
             nn.ConvTranspose2d(4, 6, 3, stride=2)]
    x = torch.randn(2, 4, 9, 9)
    for conv in convs:
        tr = tl.trace(conv, x)
        op = [op for op in tr.ops if op.kind == "op"][0]
        out = conv(x)
        k = conv.kernel_size[0] * conv.kernel_size[1]
        if isinstance(conv, nn.ConvTranspose2d):
            # every input element is scattered to out_channels/groups * k outputs
            macs = x.numel() * (conv.out_channels // conv.groups) * k
        else:
            macs = out.numel() * (conv.in_channels // conv.groups) * k
        bias = out.numel() if conv.bias is not None else 0
        assert (op.flops, op.macs) == (2 * macs + bias, macs), conv


def test_matmul_einsum_and_attention():
    a, b = torch.randn(2, 3, 5), torch.randn(2, 5, 7)
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 3)

    class M(nn.Module):
        def forward(self, a, b, q, k, v):
            return (a @ b, torch.einsum("bij,bjk->bik", a, b), torch.bmm(a, b),
                    F.scaled_dot_product_attention(q, k, v))

    tr = tl.trace(M(), a, b, q, k, v)
    mm = 2 * 3 * 7 * 5  # batch * rows * cols * inner
    for name in ("matmul", "einsum", "bmm"):
        assert _only(tr, name).macs == mm, name
    # scores: L x S x E per batch-head, then pattern @ v: L x S x Ev
    assert _only(tr, "scaled_dot_product_attention").macs == 1 * 2 * 4 * 6 * (8 + 3)


def test_shape_ops_cost_nothing_and_norms_cost_five_per_element():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(6)

        def forward(self, x):
            return self.ln(x.view(3, 2, 6).transpose(0, 1)[0])

    x = torch.randn(6, 6)
    tr = tl.trace(M(), x)
    for name in ("view", "transpose", "__getitem__"):
        assert _only(tr, name).flops == 0, name
    assert _only(tr, "layer_norm").flops == 5 * 3 * 6


def test_module_rows_sum_their_ops_and_loaded_traces_agree(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    tr = tl.trace(model, torch.randn(3, 8))
    row = next(line for line in tr.summary().splitlines() if line.startswith("| 0 (Linear)"))
    flops_cell = row.split("|")[5].strip()
    assert re.fullmatch(r"\d+(\.\d)? ?[KMG]?", flops_cell)
    assert flops_cell == str(2 * 3 * 16 * 8 + 3 * 16)  # 2 MACs + bias, under 1 K
    tl.save(tr, tmp_path / "t")
    loaded = tl.load(tmp_path / "t")
    assert [op.flops for op in loaded.ops] == [op.flops for op in tr.ops]


def test_fused_multihead_attention_and_recurrent_calls():
    torch.manual_seed(0)
    e, heads, L, S, n = 8, 2, 5, 7, 3
    mha = nn.MultiheadAttention(e, heads, batch_first=True)
    q, kv = torch.randn(n, L, e), torch.randn(n, S, e)
    tr = tl.trace(mha, q, kv, kv)
    out, weights = [op for op in tr.ops if op.type == "multiheadattentionforward"]
    # q, k, v and output projections, then scores and pattern @ v over all heads
    want = n * L * e * e + 2 * n * S * e * e + 2 * n * L * S * e + n * L * e * e
    assert out.macs == want and out.flops == 2 * want
    assert weights.macs == 0  # the call's second output: counted once, at the first

    for rnn, gates in ((nn.LSTM(6, 4, num_layers=2, bidirectional=True, batch_first=True), 4),
                       (nn.GRU(6, 4), 3), (nn.RNN(6, 4), 1)):
        x = torch.randn(3, 5, 6)
        tr = tl.trace(rnn, x)
        op, *later = [op for op in tr.ops if op.type in ("lstm", "gru", "rnntanh")]
        assert later and all(o.macs == 0 for o in later)  # h_n (and c_n) add nothing
        dirs = 2 if rnn.bidirectional else 1
        per_row = 0
        for layer in range(rnn.num_layers):
            width = rnn.input_size if layer == 0 else rnn.hidden_size * dirs
            per_row += dirs * gates * rnn.hidden_size * (width + rnn.hidden_size)
        assert op.macs == 3 * 5 * per_row, rnn
