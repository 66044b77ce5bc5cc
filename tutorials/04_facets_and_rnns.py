# %% [markdown]
# # 04 — Facets: attention heads in Hugging Face models, gates inside an LSTM
#
# Some quantities interpretability needs are not the output of any op a model runs:
#
# - a Hugging Face model with `attn_implementation="sdpa"` never materialises its
#   attention pattern: one fused `scaled_dot_product_attention` op takes q, k, v and
#   returns the heads' outputs `z`;
# - `nn.LSTM` is one fused op: its input, forget and output gates exist only inside it.
#
# A **facet** is a named view derived from the recorded ops and parameters of a module:
# a head's q, k, v, pattern, z and result; an LSTM's gates at each step. lens finds them
# from the graph: `trace.modules[address].facets["pattern"]`. This tutorial first derives
# each one **by hand** from the trace (`op.parents`, `op.out`, `trace.param_values`) to
# show what it means, then checks lens's facet against that hand computation and against
# an independent route (the eager attention implementation; the LSTM's own outputs).
#
# The models are built from small configs (no downloads); the LSTM is trained here on a
# toy task in a few seconds.

# %%
from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

import lens as tl  # noqa: E402

OUT = Path(os.environ.get("LENS_TUTORIAL_OUT", "tutorials-out")) / "04_facets_and_rnns"
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
torch.set_grad_enabled(False)

# %% [markdown]
# ## GPT-2 and Llama from configs
#
# Tiny random-weight models: 2 layers, 4 heads of size 8. The Llama has 2 key/value
# heads shared by its 4 query heads (grouped-query attention) and rotary positions.
# Each is built twice from the same weights: with the default `sdpa` attention (the one
# we trace) and with `eager` attention, which returns its patterns
# (`output_attentions=True`): the independent route.

# %%
def build(kind: str, attn: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=32,
                         bos_token_id=0, eos_token_id=0, attn_implementation=attn)
        return GPT2LMHeadModel(cfg).eval()
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=50,
                      max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


tokens = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(1))
models = {kind: build(kind, "sdpa") for kind in ("gpt2", "llama")}
traces = {kind: tl.trace(m, tokens) for kind, m in models.items()}
for kind, tr in traces.items():
    attn_ops = [op for op in tr.ops if tl.func("scaled_dot_product_attention")(op)]
    print(kind, repr(tr), [f"{op.label} in {op.module}" for op in attn_ops])

# %% [markdown]
# ## Per-head q, k, v, pattern and z
#
# The fused attention op's first three parents are q, k and v, each
# `(batch, heads, position, d_head)`; its output is z. The pattern is
# `softmax(q k^T * scale)` with the causal mask. With grouped-query attention, query
# head h reads key/value head `h // (heads / kv_heads)`.

# %%
def head_facets(op: tl.Op) -> dict[str, torch.Tensor]:
    q, k, v = (p.out for p in op.parents[:3])
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scale = op.kwargs.get("scale") or 1 / math.sqrt(q.shape[-1])
    scores = q @ k.transpose(-2, -1) * scale
    t = q.shape[-2]
    causal = torch.ones(t, t, dtype=torch.bool).triu(1)
    pattern = scores.masked_fill(causal, float("-inf")).softmax(-1)
    return {"q": q, "k": k, "v": v, "pattern": pattern, "z": op.out}


facets = {kind: [head_facets(op) for op in tr.ops
                 if tl.func("scaled_dot_product_attention")(op)]
          for kind, tr in traces.items()}
for kind, layers in facets.items():
    print(kind, {name: tuple(t.shape) for name, t in layers[0].items()})

# %% [markdown]
# Check against the eager implementation: same weights, patterns returned by the model.
# And z must be the pattern applied to v.

# %%
for kind, layers in facets.items():
    eager = build(kind, "eager")
    eager.load_state_dict(models[kind].state_dict())
    want = eager(tokens, output_attentions=True).attentions
    for f, w in zip(layers, want, strict=True):
        torch.testing.assert_close(f["pattern"], w, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(f["pattern"] @ f["v"], f["z"], rtol=1e-4, atol=1e-5)
    print(f"{kind}: patterns equal the eager model's output_attentions in every layer")

# %% [markdown]
# The same views by name, from `lens.facets`: each attention module's facets hold
# `(batch, head, position, ...)` tensors equal to the hand computations above.

# %%
ATTN = {"gpt2": "transformer.h.{}.attn", "llama": "model.layers.{}.self_attn"}
for kind, layers in facets.items():
    for layer, f in enumerate(layers):
        named = traces[kind].modules[ATTN[kind].format(layer)].facets
        for name in ("q", "pattern", "z"):
            torch.testing.assert_close(named[name], f[name], rtol=1e-4, atol=1e-5)
    print(f"{kind}: tl facets q, pattern and z equal the hand computation in every layer")

# %% [markdown]
# ## Per-head results
#
# A head's **result** is its contribution to the residual stream: its slice of z times
# its slice of the output projection. GPT-2's projection is `attn.c_proj`, a `Conv1D`
# (`x @ W + b`, W of shape `(d_model, d_model)`). The heads' results plus the bias add
# up to the attention module's output, which the trace recorded.

# %%
tr = traces["gpt2"]
for layer, f in enumerate(facets["gpt2"]):
    z = f["z"]  # (batch, head, pos, d_head)
    w = tr.param_values[f"transformer.h.{layer}.attn.c_proj.weight"]
    b = tr.param_values[f"transformer.h.{layer}.attn.c_proj.bias"]
    d_head = z.shape[-1]
    w_heads = w.view(z.shape[1], d_head, -1)  # rows of W belong to heads
    result = torch.einsum("bhpd,hdm->bhpm", z, w_heads)  # (batch, head, pos, d_model)
    proj = tr[f"transformer.h.{layer}.attn.c_proj"].out
    torch.testing.assert_close(result.sum(1) + b, proj, rtol=1e-4, atol=1e-5)
    norms = result.norm(dim=-1).mean(dim=(0, 2))
    print(f"layer {layer}: mean norm of each head's result {norms.numpy().round(3)}")

for kind, cmap in (("gpt2", "Blues"), ("llama", "Greens")):
    fig, axes = plt.subplots(2, 4, figsize=(10, 5))
    for layer, row in enumerate(axes):
        for h, ax in enumerate(row):
            ax.imshow(facets[kind][layer]["pattern"][0, h], cmap=cmap, vmin=0, vmax=1)
            kv = f" (kv {h // 2})" if kind == "llama" else ""
            ax.set_title(f"{kind} layer {layer} head {h}{kv}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(OUT / f"{kind}_patterns.png", dpi=100)
    plt.close(fig)

# %% [markdown]
# Causal masking, as a property of the facets: no head attends to a later position,
# and each row of a pattern sums to 1.

# %%
for layers in facets.values():
    for f in layers:
        p = f["pattern"]
        assert float(p.triu(1).abs().max()) == 0.0
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))

# %% [markdown]
# ## LSTM gates over time
#
# A task with a known use for the forget gate: read a stream of numbers and output,
# at every step, the running sum since the last **reset** flag. At a reset the cell
# must forget what it holds. Inputs are `(value, flag)` pairs.

# %%
torch.set_grad_enabled(True)


class Accumulator(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out).squeeze(-1)


def stream(batch: int, steps: int, g: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    value = torch.rand(batch, steps, generator=g) - 0.5
    reset = (torch.rand(batch, steps, generator=g) < 0.2).float()
    target, total = torch.zeros(batch, steps), torch.zeros(batch)
    for t in range(steps):
        total = total * (1 - reset[:, t]) + value[:, t]
        target[:, t] = total
    return torch.stack([value, reset], dim=-1), target, reset.bool()


torch.manual_seed(0)
lstm_model = Accumulator()
opt = torch.optim.Adam(lstm_model.parameters(), lr=1e-2)
g = torch.Generator().manual_seed(1)
for _ in range(800):
    x, y, _ = stream(64, 16, g)
    loss = ((lstm_model(x) - y) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
torch.set_grad_enabled(False)
lstm_model.eval()
x, y, reset = stream(256, 16, torch.Generator().manual_seed(99))
mse = float(((lstm_model(x) - y) ** 2).mean())
print(f"test MSE {mse:.4f} (variance of the target {float(y.var()):.3f})")
assert mse < 0.1 * float(y.var())

# %% [markdown]
# The trace holds the fused `lstm` op, its input and the LSTM's parameters. The gates
# follow from the standard equations, step by step; the recomputed hidden states must
# equal the op's output (the check that these are the gates the model used).

# %%
ltrace = tl.trace(lstm_model, x)
lstm_ops = [op for op in ltrace.ops if op.type == "lstm"]
print("lstm ops (output sequence, h_n, c_n):", [op.label for op in lstm_ops])
seq_out = lstm_ops[0].out  # (batch, step, hidden)
P = {n.removeprefix("lstm."): t for n, t in ltrace.param_values.items() if n.startswith("lstm.")}
x_in = ltrace["input_1"].out
hidden = P["weight_hh_l0"].shape[1]
h = torch.zeros(x_in.shape[0], hidden)
c = torch.zeros(x_in.shape[0], hidden)
gates: dict[str, list[torch.Tensor]] = {"input": [], "forget": [], "cell": [], "output": []}
hs = []
for t in range(x_in.shape[1]):
    pre = (x_in[:, t] @ P["weight_ih_l0"].T + P["bias_ih_l0"]
           + h @ P["weight_hh_l0"].T + P["bias_hh_l0"])
    i, f, gg, o = pre.chunk(4, dim=-1)
    i, f, gg, o = i.sigmoid(), f.sigmoid(), gg.tanh(), o.sigmoid()
    c = f * c + i * gg
    h = o * c.tanh()
    for name, val in zip(gates, (i, f, gg, o), strict=True):
        gates[name].append(val)
    hs.append(h)
stacked = {name: torch.stack(v, dim=1) for name, v in gates.items()}  # (batch, step, unit)
torch.testing.assert_close(torch.stack(hs, dim=1), seq_out, rtol=1e-4, atol=1e-5)

# %% [markdown]
# lens's recurrent facets give the same gates by name, laid out
# `(layer, direction, batch, step, unit)`.

# %%
lstm_facets = ltrace.modules["lstm"].facets
for name, key in zip(gates, "ifgo", strict=True):
    torch.testing.assert_close(lstm_facets[key][0, 0], stacked[name], rtol=1e-4, atol=1e-5)
print("LSTM facets i, f, g, o equal the hand-computed gates")

# %% [markdown]
# **Finding.** The forget gate drops at reset steps: averaged over units, it is far
# lower where the flag is set than elsewhere. That is how the cell clears its sum.

# %%
forget = stacked["forget"].mean(-1)  # (batch, step): mean over units
at_reset, elsewhere = float(forget[reset].mean()), float(forget[~reset].mean())
print(f"forget gate: {at_reset:.2f} at resets, {elsewhere:.2f} elsewhere")
assert at_reset < 0.6 * elsewhere

fig, axes = plt.subplots(3, 1, figsize=(7, 5.5), sharex=True)
row = int(reset[:, 2:14].sum(1).argmax())  # a sequence with several resets
steps = range(x.shape[1])
axes[0].bar(steps, x[row, :, 0], color=["tab:red" if r else "tab:blue" for r in reset[row]])
axes[0].set_ylabel("input (red: reset)")
for name in ("input", "forget", "output"):
    axes[1].plot(steps, stacked[name][row].mean(-1), marker=".", label=name)
axes[1].set_ylabel("gate, mean of units")
axes[1].legend(fontsize=7)
axes[2].plot(steps, y[row], label="target")
axes[2].plot(steps, lstm_model(x[row:row + 1])[0], "--", label="model")
axes[2].set_ylabel("running sum")
axes[2].set_xlabel("step")
axes[2].legend(fontsize=7)
fig.tight_layout()
fig.savefig(OUT / "lstm_gates.png", dpi=110)
plt.close(fig)
print("04_facets_and_rnns: all checks passed")
