"""Gradients of facets (``facets.grad(name)``) against gradients taken by hand: an eager
copy of the model with ``retain_grad`` on its tensors (caught by plain module hooks), and
a hand-written LSTM unroll; no lens code in the ground truth."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens as tl
from tests.facets._hf import pair
from tests.facets._truth import heads


def _weights(logits: torch.Tensor) -> torch.Tensor:
    return torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))


def _kept(out: object) -> torch.Tensor:
    t = out[0] if isinstance(out, tuple) else out
    t.retain_grad()
    return t  # type: ignore[return-value]


def _gpt2_truth(eager: nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of layer 0's facets in the eager copy, by hooks and retain_grad."""
    blk = eager.transformer.h[0]
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, pre: bool = False, item: int = 0):
        def hook(m, *a):
            t = (a[0] if pre else a[1])
            t = t[item] if isinstance(t, tuple) else t
            t.retain_grad()
            seen[name] = t
        return hook

    hs = [blk.register_forward_pre_hook(keep("resid_pre", pre=True)),
          blk.attn.c_attn.register_forward_hook(keep("qkv")),
          blk.attn.register_forward_hook(keep("pattern", item=1)),
          blk.attn.register_forward_hook(keep("attn_out")),
          blk.attn.c_proj.register_forward_pre_hook(keep("z", pre=True)),
          blk.attn.c_proj.register_forward_hook(keep("proj")),
          blk.ln_2.register_forward_pre_hook(keep("resid_mid", pre=True)),
          blk.mlp.register_forward_hook(keep("mlp_out")),
          blk.register_forward_hook(keep("resid_post"))]
    logits = eager(ids).logits
    for h in hs:
        h.remove()
    (logits * _weights(logits)).sum().backward()
    g = {k: t.grad for k, t in seen.items()}
    q, k, v = g.pop("qkv").split(32, dim=-1)
    g.update(q=heads(q, 4), k=heads(k, 4), v=heads(v, 4), z=heads(g["z"], 4))
    p, dp = seen["pattern"].detach(), g["pattern"]
    g["scores"] = p * (dp - (dp * p).sum(-1, keepdim=True))  # softmax backward, by hand
    g["result"] = g.pop("proj").unsqueeze(1).expand(-1, 4, -1, -1)
    return g


@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_gpt2_facet_grads_equal_an_eager_copy(impl):
    (fused, eager), ids = pair("gpt2")
    want = _gpt2_truth(eager, ids)
    trace = tl.trace(fused if impl == "fused" else eager, ids, save_grads=True)
    logits = trace.output.logits
    trace.log_backward((logits * _weights(logits)).sum())
    attn = trace.modules["transformer.h.0.attn"].facets
    block = trace.modules["transformer.h.0"].facets
    for name in ("q", "k", "v", "scores", "pattern", "z", "result"):
        assert attn.grad(name).shape == attn[name].shape, name
        assert torch.allclose(attn.grad(name), want[name], atol=1e-6), name
    for name in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
        assert torch.allclose(block.grads[name], want[name], atol=1e-6), name
    assert set(attn.grads) == set(attn)
    assert float(want["pattern"].abs().max()) > 1e-3  # the check compares something


class _Lstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x):
        return self.rnn(x)


def _loss(out, h_n, c_n) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    return sum((t * torch.randn(t.shape, generator=gen)).sum() for t in (out, h_n, c_n))


def _lstm_truth(rnn: nn.LSTM, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The LSTM equations (torch's documentation), step by step, retain_grad on each."""
    seq, kept = x.transpose(0, 1), {}
    h_n, c_n = [], []
    for layer in range(2):
        outs = []
        for d in range(2):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh, b_ih, b_hh = (getattr(rnn, n + sfx) for n in
                                      ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            h = c = torch.zeros(x.shape[0], 4)
            hs = [None] * seq.shape[0]
            for t in (range(seq.shape[0]) if d == 0 else reversed(range(seq.shape[0]))):
                gates = (seq[t] @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh).chunk(4, -1)
                i, f, o = gates[0].sigmoid(), gates[1].sigmoid(), gates[3].sigmoid()
                g = gates[2].tanh()
                c = f * c + i * g
                h = o * c.tanh()
                for name, val in zip("ifgoch", (i, f, g, o, c, h), strict=True):
                    val.retain_grad()
                    kept[(name, layer, d, t)] = val
                hs[t] = h
            h_n.append(h)
            c_n.append(c)
            outs.append(torch.stack(hs))
        seq = torch.cat(outs, -1)
    _loss(seq.transpose(0, 1), torch.stack(h_n), torch.stack(c_n)).backward()
    out = {n: torch.zeros(2, 2, x.shape[0], x.shape[1], 4) for n in "ifgoch"}
    for (name, layer, d, t), val in kept.items():
        out[name][layer, d, :, t] = val.grad
    return out


def test_lstm_state_and_gate_grads_equal_a_hand_unroll():
    model = _Lstm().eval()
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1))
    want = _lstm_truth(model.rnn, x)
    trace = tl.trace(model, x, save_grads=True)
    out, (h_n, c_n) = trace.output
    trace.log_backward(_loss(out, h_n, c_n))
    f = trace.modules["rnn"].facets
    for name in "ifgoch":
        assert f.grad(name).shape == f[name].shape, name
        assert torch.allclose(f.grad(name), want[name], atol=1e-6), name
    assert torch.allclose(f.grad("h_n"), _weights_of(out, h_n)[1])


def _weights_of(out, h_n):
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(t.shape, generator=gen) for t in (out, h_n)]


def test_grad_errors_say_what_to_do():
    (fused, _), ids = pair("gpt2")
    plain = tl.trace(fused, ids)
    with pytest.raises(tl.errors.PayloadError, match="save_grads=True"):
        plain.modules["transformer.h.0.attn"].facets.grad("z")
    trace = tl.trace(fused, ids, save_grads=True)
    with pytest.raises(tl.errors.PayloadError, match="log_backward"):
        trace.modules["transformer.h.0.attn"].facets.grad("z")
    with pytest.raises(KeyError, match="no facet 'zz'"):
        trace.modules["transformer.h.0.attn"].facets.grad("zz")


def test_readme_example_runs_and_matches():
    from pathlib import Path

    text = (Path(__file__).parents[2] / "README.md").read_text()
    code = text.split("## Gradients of facets", 1)[1].split("```python\n", 1)[1]
    code = code.split("```", 1)[0]
    (fused, eager), ids = pair("gpt2")

    def metric(logits):
        return (logits * _weights(logits)).sum()

    scope = {"tl": tl, "model": fused, "ids": ids, "metric": metric,
             "clean_ids": torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(9)),
             "corrupt_ids": ids}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    want = _gpt2_truth(eager, ids)
    assert torch.allclose(scope["g_z"], want["z"], atol=1e-6)
    assert torch.allclose(scope["g_pattern"], want["pattern"], atol=1e-6)
    assert [r["head"] for r in scope["res"].rows] == [0, 1, 2, 3]
