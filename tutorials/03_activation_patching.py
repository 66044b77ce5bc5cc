# %% [markdown]
# # 03 — Activation patching: finding the induction circuit
#
# We train (once; then it is cached) a 2-layer attention-only transformer on sequences of
# random tokens in which a segment repeats: `[BOS, A1 .. An, A1 .. An]`. On the second
# copy the next token is predictable only by **induction**: find the earlier occurrence
# of the current token, copy the token that followed it. The known mechanism (Olsson et
# al., 2022) is a two-step circuit: a **previous-token head** in layer 0 writes "my
# previous token was A(j)" into position j+1, and an **induction head** in layer 1 attends
# from the second `A(j)` to that position and copies its token.
#
# Activation patching recovers this without looking at weights: run the model on a
# *clean* and a *corrupted* prompt, copy one activation from the clean run into the
# corrupted run, and see how much of the clean behaviour comes back.
#
# Runs in well under a minute once the model is cached (training takes ~30 s on a CPU).

# %%
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import lens as tl  # noqa: E402
from lens.examples import induction  # noqa: E402

OUT = Path(os.environ.get("LENS_TUTORIAL_OUT", "tutorials-out")) / "03_activation_patching"
OUT.mkdir(parents=True, exist_ok=True)

model, config = induction.load_or_train()
accuracy = induction.induction_accuracy(model, config)
print(f"accuracy on the repeated half: {accuracy:.1%}")
assert accuracy > 0.9

# %% [markdown]
# ## Clean and corrupted prompts
#
# Clean prompts are `[BOS, A1 .. An, A1 .. Ak]` (n = 12, k = 10): the answer is `A(k+1)`.
# In the corrupted prompts, `A(k+1)` in the *first* copy (position k+1) is replaced by a
# token `X` seen nowhere else, so induction now predicts `X`. The metric is the logit
# difference `logit(A(k+1)) - logit(X)` at the last position, averaged over 8 prompts.

# %%
n = config.max_period
clean, corrupted, answers = induction.prompts(config, batch=8)
k = clean.shape[1] - 1 - n
last = clean.shape[1] - 1
metric = induction.LogitDiff(answers)
with torch.no_grad():
    clean_ld, corrupted_ld = float(metric(model(clean))), float(metric(model(corrupted)))
print(f"logit difference: clean {clean_ld:+.2f}, corrupted {corrupted_ld:+.2f}")
assert clean_ld > 2 and corrupted_ld < -2

# %% [markdown]
# ## Where the model keeps the answer: patching the residual stream
#
# The model's blocks return the residual stream after them, so the module addresses
# `embed`, `blocks.0` and `blocks.1` name the stream at depths 0, 1 and 2. One call
# patches each (depth, position) in turn: 3 x 23 patched runs, each replayed from the
# patched op onwards only (no model code runs again).

# %%
RESIDUAL = ["embed", "blocks.0", "blocks.1"]
trace = tl.trace(model, clean)
resid = tl.sweep.patching(model, clean, corrupted, RESIDUAL, metric=metric, progress=False)
frame = resid.to_pandas()
frame["restored"] = (frame["value"] - frame["baseline"]) / (frame["clean"] - frame["baseline"])
table = frame.pivot(index="site", columns="position", values="restored").loc[RESIDUAL]
print(table.round(2).to_string())

fig = resid.heatmap(title="residual stream patching: logit difference")
fig.axes[0].set_yticklabels(RESIDUAL)
fig.savefig(OUT / "residual_patching.png", dpi=110)
plt.close(fig)

# %% [markdown]
# **Finding 1.** Before the attention layers can act, the clean answer lives only at
# position k+1 (where the clean token sits). After both layers it lives only at the
# last position: layer 1 moved it there. Each alone restores the clean behaviour.

# %%
assert table.loc["embed", k + 1] > 0.9
assert table.loc["blocks.1", last] > 0.9
others = table.drop(columns=[k + 1, last])
assert others.abs().max().max() < 0.1, others.abs().max()

# %% [markdown]
# ## Which heads: patching one head at a time
#
# Inside `blocks.{i}.attn` the attention is spelled out: `scores = q @ k^T`, `pattern =
# softmax(scores)`, `z = pattern @ v`, with `z` shaped `(batch, head, position, d_head)`.
# A selector finds the two `z` ops (a matmul whose input is a softmax), and
# `position_dim=1` makes each sweep cell one **head** (patched at every position).
#
# (No hook points or model edits are needed: the `z` op is recorded like any other.
# `lens.facets` also names per-head views such as a head's `z` or `result`, read as
# `trace.modules['blocks.0.attn'].facets['z']`; tutorial 04 shows them.)

# %%
Z = tl.func("matmul") & tl.preceded_by(tl.func("softmax"))
z_labels = [op.label for op in trace.ops if Z(op)]
print("z ops:", z_labels)
assert len(z_labels) == config.n_layers
heads = tl.sweep.patching(model, clean, corrupted, Z, metric=metric, position_dim=1,
                          progress=False)
hf = heads.to_pandas().drop(columns="head").rename(columns={"position": "head"})
hf["layer"] = hf["site"].map({s: i for i, s in enumerate(z_labels)})
hf["restored"] = (hf["value"] - hf["baseline"]) / (hf["clean"] - hf["baseline"])
head_table = hf.pivot(index="layer", columns="head", values="restored")
print(head_table.round(2).to_string())

fig = heads.heatmap(title="per-head patching (z): logit difference")
fig.axes[0].set_yticklabels([f"layer {i}" for i in range(config.n_layers)])
fig.axes[0].set_xlabel("head")
fig.savefig(OUT / "head_patching.png", dpi=110)
plt.close(fig)

# %% [markdown]
# Layer 1's heads sit on a linear path to the logits (no MLP, no LayerNorm after them),
# so their effects add up: patching all of layer 1's heads at once (`positions=None`:
# the whole `z` tensor) changes the metric by the sum of the single-head changes.

# %%
all_l1 = tl.sweep.patching(model, clean, corrupted, [z_labels[1]], metric=metric,
                           positions=None, progress=False)
together = all_l1.rows[0]["value"] - all_l1.rows[0]["baseline"]
one_by_one = float((hf[hf["layer"] == 1]["value"] - hf[hf["layer"] == 1]["baseline"]).sum())
print(f"all layer-1 heads together: {together:+.3f}; sum of single heads: {one_by_one:+.3f}")
assert abs(together - one_by_one) < 1e-3 * abs(together)

# %% [markdown]
# ## What the important head looks at
#
# The attention patterns are the softmax ops. We compute the **induction stripe** by
# hand: a query at position i in the second copy (token `A(j)`, i = n + j) should attend
# to key i - n + 1, the position right after the first `A(j)`. The score of a head is its
# mean attention on that stripe.

# %%
softmaxes = [op for op in trace.ops if tl.func("softmax")(op)]
patterns = [op.out.detach() for op in softmaxes]  # each (batch, head, query, key)
queries = torch.arange(n + 1, last + 1)  # the second copy


def induction_stripe(pattern: torch.Tensor) -> torch.Tensor:
    """Mean attention, per head, from query i to key i - n + 1."""
    return pattern[:, :, queries, queries - n + 1].mean(dim=(0, 2))


def previous_token(pattern: torch.Tensor) -> torch.Tensor:
    """Mean attention, per head, from query i to key i - 1 (all queries but the first)."""
    t = pattern.shape[-1]
    i = torch.arange(1, t)
    return pattern[:, :, i, i - 1].mean(dim=(0, 2))


stripe = torch.stack([induction_stripe(p) for p in patterns])  # (layer, head)
prev = torch.stack([previous_token(p) for p in patterns])
print("induction stripe score (layer x head):\n", stripe.numpy().round(2))
print("previous-token score   (layer x head):\n", prev.numpy().round(2))

top = hf.loc[hf["restored"].idxmax()]
top_layer, top_head = int(top["layer"]), int(top["head"])
print(f"top head by patching: layer {top_layer} head {top_head} "
      f"({top['restored']:.0%} restored), stripe score {stripe[top_layer, top_head]:.2f}")

# %% [markdown]
# **Finding 2.** The head whose patching restores the most is an induction head: it
# sits in layer 1 and its attention pattern is the induction stripe. Layer 0's heads
# neither show the stripe nor matter for this corruption (the corrupted token changes
# what is *copied*, which layer 1 reads directly from position k+1).

# %%
assert top_layer == 1
assert stripe[top_layer, top_head] > 0.5
assert stripe[top_layer, top_head] >= stripe.max() - 0.1
assert bool((stripe[0] < 0.3).all())
assert float(head_table.loc[0].abs().max()) < 0.1

fig, axes = plt.subplots(1, 2, figsize=(9, 4))
prev_head = int(prev[0].argmax())
for ax, (layer, head, name) in zip(axes, [(0, prev_head, "previous-token head"),
                                          (top_layer, top_head, "induction head")],
                                      strict=True):
    ax.imshow(patterns[layer][0, head], cmap="Blues", vmin=0, vmax=1)
    ax.set_title(f"layer {layer} head {head}: {name}")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
fig.tight_layout()
fig.savefig(OUT / "attention_patterns.png", dpi=110)
plt.close(fig)

# %% [markdown]
# ## The other half of the circuit: the previous-token head
#
# Corrupt instead `A(k)` in the first copy (position k): the current token's earlier
# occurrence is gone, so induction has nothing to match. Now the information has to
# travel: the clean answer starts at position k, and a layer-0 head must move it to
# position k+1 (whose *previous* token it is), where layer 1's induction head matches it.

# %%
clean_m, matched, answers_m = induction.prompts(config, batch=8, corrupt="matched")
metric_m = induction.LogitDiff(answers_m)
resid_m = tl.sweep.patching(model, clean_m, matched, RESIDUAL, metric=metric_m,
                            progress=False)
fm = resid_m.to_pandas()
fm["restored"] = (fm["value"] - fm["baseline"]) / (fm["clean"] - fm["baseline"])
table_m = fm.pivot(index="site", columns="position", values="restored").loc[RESIDUAL]
print(table_m.round(2).to_string())

heads_m = tl.sweep.patching(model, clean_m, matched, [z_labels[0]], metric=metric_m,
                            position_dim=1, progress=False)
restored_l0 = torch.tensor([(r["value"] - r["baseline"]) / (r["clean"] - r["baseline"])
                            for r in heads_m.rows])
print("layer-0 heads, fraction restored:", restored_l0.numpy().round(2))
print("layer-0 heads, previous-token score:", prev[0].numpy().round(2))

fig = resid_m.heatmap(title="residual patching, corrupting the matched token")
fig.axes[0].set_yticklabels(RESIDUAL)
fig.savefig(OUT / "residual_patching_matched.png", dpi=110)
plt.close(fig)

# %% [markdown]
# **Finding 3.** The answer moves from position k (before layer 0) to position k+1
# (after layer 0) to the last position (after layer 1). The layer-0 head that matters
# most is a previous-token head (most of its attention goes from i to i-1). The job is
# often shared by several such heads, so one head alone restores only part of it.

# %%
assert table_m.loc["embed", k] > 0.9
assert table_m.loc["blocks.0", k + 1] > 0.9
assert table_m.loc["blocks.1", last] > 0.9
top0 = int(restored_l0.argmax())
print(f"most important layer-0 head: {top0}, previous-token score {prev[0, top0]:.2f}")
assert prev[0, top0] > 0.5

# %% [markdown]
# ## Attribution patching: all cells from one backward pass
#
# Attribution patching estimates every cell at once with a first-order Taylor
# expansion: `(clean - corrupted) * d metric / d activation`, from one clean run, one
# corrupted run and one backward pass. Compare it with the real patching above.

# %%
attr_resid = tl.sweep.attribution_patching(model, clean, corrupted, RESIDUAL, metric=metric)
attr_heads = tl.sweep.attribution_patching(model, clean, corrupted, Z, metric=metric,
                                           position_dim=1)
real = torch.tensor([r["value"] - r["baseline"] for r in resid.rows + heads.rows])
approx = torch.tensor([r["value"] for r in attr_resid.rows + attr_heads.rows])
corr = float(torch.corrcoef(torch.stack([real, approx]))[0, 1])
print(f"correlation of attribution with real patching effects: {corr:.4f}")

fig, ax = plt.subplots(figsize=(4.5, 4))
ax.scatter(real, approx, s=12)
lim = float(max(real.abs().max(), approx.abs().max())) * 1.05
ax.plot([-lim, lim], [-lim, lim], color="grey", linewidth=0.8)
ax.set_xlabel("patching effect (real)")
ax.set_ylabel("attribution patching estimate")
fig.tight_layout()
fig.savefig(OUT / "attribution_vs_patching.png", dpi=110)
plt.close(fig)

# %% [markdown]
# **Finding 4.** The estimate tracks real patching closely here. For layer 1's heads it
# is exact up to rounding: the metric is linear in their output. Upstream, the softmax
# of the next layer makes it an approximation.

# %%
assert corr > 0.95
l1 = [i for i, r in enumerate(heads.rows) if r["site"] == z_labels[1]]
real_l1 = torch.tensor([heads.rows[i]["value"] - heads.rows[i]["baseline"] for i in l1])
attr_l1 = torch.tensor([attr_heads.rows[i]["value"] for i in l1])
assert torch.allclose(real_l1, attr_l1, rtol=1e-3, atol=1e-3), (real_l1, attr_l1)
print("03_activation_patching: all checks passed")
