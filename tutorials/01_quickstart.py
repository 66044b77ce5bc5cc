# %% [markdown]
# # 01 — Quickstart: trace a model, find any op, draw the graph
#
# `tl.trace(model, *inputs)` runs the model once and records **every tensor operation**
# (not only module outputs) as a graph of ops. Each op has a label, its parents and
# children, the module it ran in, and (by default) its output, the *payload*.
#
# Run this file top to bottom (`python tutorials/01_quickstart.py`), or open it as a
# notebook with jupytext. Figures go to `$LENS_TUTORIAL_OUT` (default `tutorials-out/`).

# %%
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

import lens as tl

OUT = Path(os.environ.get("LENS_TUTORIAL_OUT", "tutorials-out")) / "01_quickstart"
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% [markdown]
# ## A small convolutional network
#
# The same network as in the README: three conv/ReLU stages and a linear classifier.

# %%
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # features.0-2
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # features.3-5
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),                  # features.6-7
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


model = Net().eval()
x = torch.randn(2, 3, 32, 32)
trace = tl.trace(model, x)
print(trace)

# %% [markdown]
# ## Three ways to name an op
#
# - its **label** `{type}_{type_num}_{total_num}`: `conv2d_3_7` is the 3rd `conv2d`, the
#   7th op counting from the input (the short form `conv2d_3` works too);
# - the **module address** whose output it is: `features.6`;
# - its **ordinal** in execution order, Python-style: `trace[7]`, `trace[-1]`.
#
# All three find the same op (ops are light views over the trace: compare them with `==`).

# %%
op = trace["conv2d_3_7"]
assert op == trace["conv2d_3"] == trace["features.6"] == trace[7]
print(op)
print("parents:", op.parent_labels, " children:", op.child_labels)
print("module:", op.module, " shape:", tuple(op.shape))

# %% [markdown]
# The payload `op.out` is the tensor the op produced. Check it against an independent
# route: a plain PyTorch forward hook on `features.6`.

# %%
seen: dict[str, torch.Tensor] = {}
handle = model.features[6].register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
with torch.no_grad():
    logits = model(x)
handle.remove()
assert torch.equal(trace["features.6"].out, seen["o"])
assert torch.equal(trace[-1].out, logits)  # the last op is the model's output

# %% [markdown]
# Ops you never wrote a module for are there too: the `mean` over the spatial dims,
# for instance. `trace.labels` lists every op in execution order.

# %%
print(trace.labels)
mean_op = trace["mean_1"]
assert torch.allclose(mean_op.out, seen["o"].relu().mean(dim=(2, 3)))

# %% [markdown]
# ## Summaries and tables
#
# `trace.summary()` is a module table; `trace.to_pandas()` has one row per op.

# %%
print(trace.summary())
df = trace.to_pandas()
print(df[["label", "type", "shape", "module", "parents", "num_params"]].to_string())
assert len(df) == len(trace.ops)
df.to_csv(OUT / "ops.csv", index=False)

# %% [markdown]
# ## Selectors: many ops at once
#
# Selectors are small predicates over ops, combined with `&`, `|` and `~`.

# %%
relus_after_conv = tl.func("relu") & tl.preceded_by(tl.func("conv2d"))
picked = [o.label for o in trace.ops if relus_after_conv(o)]
print(picked)
assert len(picked) == 3

# %% [markdown]
# ## A recurrent model: rolled and unrolled graphs
#
# A Python loop that reuses the same `nn.Linear` at every time step. lens recognises the
# repeats as **passes** of one **layer** (`linear_2_4:1`, `linear_2_4:2`, ...), following
# the recurrence rules of TorchLens.

# %%
class LoopRNN(nn.Module):
    def __init__(self, d_in: int = 4, d_hidden: int = 16) -> None:
        super().__init__()
        self.d_hidden = d_hidden
        self.inp = nn.Linear(d_in, d_hidden)
        self.cell = nn.Linear(d_hidden, d_hidden)
        self.head = nn.Linear(d_hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.d_hidden)
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.cell(h))
        return self.head(h)


steps = 5
rnn = LoopRNN().eval()
seq = torch.randn(3, steps, 4)
rtrace = tl.trace(rnn, seq)
print(rtrace)
assert rtrace.is_recurrent and rtrace.max_passes == steps

# %% [markdown]
# The module call `cell:k` is the k-th call of `cell`; a layer label without `:k` names
# all its passes at once.

# %%
third = rtrace["cell:3"]
layer = rtrace[third.layer_label]
print(third.label, "is pass", third.pass_num, "of", layer.num_passes)
assert third.pass_num == 3 and layer.num_passes == steps

# %% [markdown]
# Draw the graph both ways: **unrolled** (one node per op, every pass separate) and
# **rolled** (one node per layer, `(xN)` for N passes).

# %%
unrolled = rtrace.draw(str(OUT / "rnn_unrolled.svg"), vis_mode="unrolled")
rolled = rtrace.draw(str(OUT / "rnn_rolled.svg"), vis_mode="rolled")
rtrace.draw(str(OUT / "rnn_rolled.png"), vis_mode="rolled")
cnn = trace.draw(str(OUT / "cnn.svg"))
print("wrote", unrolled, rolled, cnn)


def count_nodes(svg_path: str) -> int:
    return Path(svg_path).read_text().count('class="node"')


n_unrolled, n_rolled = count_nodes(unrolled), count_nodes(rolled)
print(f"unrolled: {n_unrolled} nodes, rolled: {n_rolled} nodes")
assert n_rolled < n_unrolled

# %% [markdown]
# ## Validate
#
# `tl.validate` replays every op from its saved parents and checks it reproduces the
# saved output: a check that the recorded graph is the computation that ran.

# %%
report = tl.validate(rnn, seq)
print(report)
assert report.ok
print("01_quickstart: all checks passed")
