# %% [markdown]
# # 06 — Steering and projection: editing directions in the residual stream
#
# Tutorial 03 found *where* the induction model keeps the token it will copy: at
# position k+1, in the residual stream after layer 0. Here we edit that activation
# along meaningful directions, while the model runs (`tl.when` + `tl.run`) or after
# the fact (`trace.fork()` + `replay()`), and measure what happens to the output:
#
# - **steering**: add `alpha * (embedding(X) - embedding(A))` at that one position, and
#   the model copies `X` instead of `A`;
# - **projection**: remove one direction (`tl.project_off`) or keep only it
#   (`tl.project_onto`), and compare with a random direction as a control.

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

OUT = Path(os.environ.get("LENS_TUTORIAL_OUT", "tutorials-out")) / "06_steering"
OUT.mkdir(parents=True, exist_ok=True)
torch.set_grad_enabled(False)

model, config = induction.load_or_train()
clean, corrupted, answers = induction.prompts(config, batch=8)
metric = induction.LogitDiff(answers)  # logit(A) - logit(X) at the last position
n = config.max_period
k = clean.shape[1] - 1 - n
A, X = answers[:, 0], answers[:, 1]
clean_ld, corrupted_ld = float(metric(model(clean))), float(metric(model(corrupted)))
print(f"clean {clean_ld:+.2f}, corrupted {corrupted_ld:+.2f}")

# %% [markdown]
# ## Steering with a token direction
#
# The direction is the difference of two token embeddings, one per prompt: shape
# `(batch, d_model)`. `tl.steer(d, alpha).at[:, k + 1]` adds `alpha * d` to the value at
# position k+1 only; `tl.when('blocks.0', ...)` applies it to the output of module
# `blocks.0` (the residual stream after layer 0) as the model runs. `tl.run` returns only
# the model's output, recording nothing.

# %%
E = model.embed.tok.weight
direction = E[X] - E[A]
alphas = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]


def steered(alpha: float, position: int) -> torch.Tensor:
    rule = tl.when("blocks.0", tl.steer(direction, alpha=alpha).at[:, position])
    return tl.run(model, clean, intervene=rule)


curve = [float(metric(steered(a, k + 1))) for a in alphas]
control = [float(metric(steered(a, 3))) for a in alphas]  # a position that does not matter
for a, v, c in zip(alphas, curve, control, strict=True):
    print(f"alpha {a:4.2f}: at position k+1 {v:+7.2f}   at position 3 {c:+7.2f}")

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(alphas, curve, marker="o", label="steer at position k+1")
ax.plot(alphas, control, marker="s", label="steer at position 3 (control)")
ax.axhline(0, color="grey", linewidth=0.8)
ax.set_xlabel("alpha")
ax.set_ylabel("logit(A) - logit(X)")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "steering_curve.png", dpi=110)
plt.close(fig)

# %% [markdown]
# **Finding 1.** The logit difference falls steadily with alpha and changes sign: at
# alpha = 1 the model predicts `X` for most prompts: it copies whatever token identity
# sits at position k+1. The same edit at position 3 does almost nothing.

# %%
assert all(b < a for a, b in zip(curve[:-1], curve[1:], strict=True)), curve
assert curve[0] > 2 and curve[alphas.index(1.0)] < -2
top = steered(1.0, k + 1)[:, -1].argmax(-1)
print("prediction is X for", int((top == X).sum()), "of", len(X), "prompts")
assert int((top == X).sum()) >= 6
assert max(abs(c - curve[0]) for c in control) < 0.1 * abs(curve[-1] - curve[0])

# %% [markdown]
# ## The same edit after the fact: fork and replay
#
# A trace captured with `intervention_ready=True` can be forked, edited and replayed:
# only the ops downstream of the edit are recomputed from the recorded graph (no model
# code runs). The result equals the live run.

# %%
trace = tl.trace(model, clean, intervention_ready=True)
edit = tl.steer(direction, alpha=1.0).at[:, k + 1]
fork = trace.fork().intervene("blocks.0", edit).replay()
replayed = fork[-1].out
assert torch.allclose(replayed, steered(1.0, k + 1), atol=1e-5)
assert torch.equal(trace[-1].out, model(clean))  # the source trace is unchanged
print("replay equals the live run; the source trace is untouched")

# %% [markdown]
# ## Projection: remove one direction, or keep only it
#
# Remove from position k+1 (after layer 0) the component along the embedding of the
# token to be copied, `A`, one prompt at a time (the direction differs per prompt). As
# a control, remove a random direction instead.

# %%
g = torch.Generator().manual_seed(0)
drop_token, drop_random = [], []
for b in range(len(clean)):
    x, m = clean[b:b + 1], induction.LogitDiff(answers[b:b + 1])
    before = float(m(model(x)))
    off_token = tl.run(model, x, intervene=tl.when("blocks.0",
                                                   tl.project_off(E[A[b]]).at[:, k + 1]))
    rand = torch.randn(config.d_model, generator=g)
    off_rand = tl.run(model, x, intervene=tl.when("blocks.0",
                                                  tl.project_off(rand).at[:, k + 1]))
    drop_token.append(before - float(m(off_token)))
    drop_random.append(before - float(m(off_rand)))
mean_token = sum(drop_token) / len(drop_token)
mean_random = sum(abs(d) for d in drop_random) / len(drop_random)
print(f"logit difference lost: token direction {mean_token:.2f}, "
      f"random direction {mean_random:.2f} (of {clean_ld:.2f})")

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.bar(range(len(clean)), drop_token, width=0.4, label="project off embedding(A)")
ax.bar([i + 0.4 for i in range(len(clean))], drop_random, width=0.4,
       label="project off a random direction")
ax.set_xlabel("prompt")
ax.set_ylabel("logit difference lost")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "projection_effects.png", dpi=110)
plt.close(fig)

# %% [markdown]
# **Finding 2.** Removing one direction out of 48, the token's own embedding, costs
# most of the logit difference; a random direction costs almost nothing.

# %%
assert mean_token > 0.5 * clean_ld
assert mean_token > 5 * mean_random

# %% [markdown]
# ## The read-out direction
#
# The logit difference is linear in the final residual stream: `(W_U[A] - W_U[X]) . x
# + (b_A - b_X)`. So projecting the last position onto `u = W_U[A] - W_U[X]` changes
# nothing, and projecting `u` off leaves exactly the bias difference: a check that the
# edits do what they say.

# %%
W, bias = model.unembed.weight, model.unembed.bias
for b in range(3):
    x, m = clean[b:b + 1], induction.LogitDiff(answers[b:b + 1])
    u = W[A[b]] - W[X[b]]
    onto = tl.when("blocks.1", tl.project_onto(u).at[:, -1])
    off = tl.when("blocks.1", tl.project_off(u).at[:, -1])
    kept = float(m(tl.run(model, x, intervene=onto)))
    gone = float(m(tl.run(model, x, intervene=off)))
    full = float(m(model(x)))
    print(f"prompt {b}: full {full:+.3f}  onto u {kept:+.3f}  off u {gone:+.3f}  "
          f"bias difference {float(bias[A[b]] - bias[X[b]]):+.3f}")
    assert abs(kept - full) < 1e-3 * max(1.0, abs(full))
    assert abs(gone - float(bias[A[b]] - bias[X[b]])) < 1e-3

# %% [markdown]
# ## Steering a generation
#
# The model has no `.generate`, so a ten-line wrapper gives it a greedy loop. lens traces
# a bound method of a module (`tl.run(gen.generate, ...)`) and hooks the module it belongs
# to; each call of that module is one decoding step, selected with `tl.step(k)`. Steering
# step 1 only (the module is now `model.blocks.0`, under the wrapper) makes the first new
# token X; the steps after it run unedited.


# %%
class Greedy(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)  # type: ignore[no-any-return]

    def generate(self, ids: torch.Tensor, new: int) -> torch.Tensor:
        for _ in range(new):
            ids = torch.cat([ids, self(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
        return ids


gen = Greedy(model)
plain_gen = gen.generate(clean, 3)
rule = tl.when(tl.step(1) & tl.module("model.blocks.0"),
               tl.steer(direction, alpha=1.0).at[:, k + 1])
steered_gen = tl.run(gen.generate, clean, 3, intervene=rule)
first = clean.shape[1]
print(f"first new token is X: plain {float((plain_gen[:, first] == X).float().mean()):.2f}, "
      f"steered at step 1 {float((steered_gen[:, first] == X).float().mean()):.2f}")
assert torch.equal(steered_gen[:, first], top)  # the same edit as the one-pass run above
assert (plain_gen[:, first] == A).float().mean() > 0.5
print("06_steering: all checks passed")
