# %% [markdown]
# # 05 — Bundles and sweeps: comparing runs, resuming, scaling out on Ray
#
# - A **bundle** is several traces of one model, aligned op by op and compared with a
#   baseline: where does a one-token change to the input spread?
# - A **sweep** is a grid of interventions (here: zero-ablate each attention head), one
#   result row per cell. Its results can be written to a directory as they are
#   computed, so an interrupted sweep resumes where it stopped.
# - The same sweep runs on a **Ray** cluster by changing the executor; here a local
#   2-CPU cluster this script starts and shuts down.
#
# Uses the induction model of tutorial 03 (trained once, then cached).

# %%
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import lens as tl  # noqa: E402
from lens.examples import induction  # noqa: E402

OUT = Path(os.environ.get("LENS_TUTORIAL_OUT", "tutorials-out")) / "05_bundles_and_sweeps"
OUT.mkdir(parents=True, exist_ok=True)
REPO = Path(__file__).resolve().parents[1]

model, config = induction.load_or_train()
clean, corrupted, answers = induction.prompts(config, batch=8)
_, matched, _ = induction.prompts(config, batch=8, corrupt="matched")
metric = induction.LogitDiff(answers)

# %% [markdown]
# ## Bundles: three runs side by side
#
# The clean prompts, the prompts with the *copied* token corrupted, and the prompts
# with the *matched* token corrupted (see tutorial 03). The three traces have the same
# graph, so the bundle aligns them op by op.

# %%
runs = {name: tl.trace(model, x) for name, x in
        [("clean", clean), ("copied", corrupted), ("matched", matched)]}
b = tl.bundle(runs, baseline="clean")
print(b)
diffs = b.compare_at(["embed", "blocks.0", "blocks.1", "unembed"], metric="relative_l2")
print(diffs.to_string())

# %% [markdown]
# Whole-tensor metrics mix positions. A metric is any function
# `f(member, baseline) -> float`; this one looks at the last position only, where the
# model makes its prediction.

# %%
def last_position_change(member: torch.Tensor, baseline: torch.Tensor) -> float:
    a, base = member[:, -1], baseline[:, -1]
    return float((a - base).norm() / base.norm())


at_last = b.compare_at(["embed", "blocks.0", "blocks.1"], metric=last_position_change)
print(at_last.to_string())

# %% [markdown]
# **Finding.** Neither corruption touches the last position's embedding (its token is
# the same), yet after layer 1 the last position has changed a lot: attention carried
# the change there from another position.

# %%
embed_label, l1_label = runs["clean"]["embed"].label, runs["clean"]["blocks.1"].label
for member in ("copied", "matched"):
    assert at_last.loc[embed_label, member] == 0.0
    assert at_last.loc[l1_label, member] > 0.3

print(b.most_changed(k=5).to_string())
fig = b.plot(metric="relative_l2")
fig.savefig(OUT / "bundle_differences.png", dpi=110)
plt.close(fig)
graph = b.draw(str(OUT / "bundle_graph.svg"), member="copied")
print("wrote", graph)

# %% [markdown]
# ## An ablation sweep, interrupted and resumed
#
# Zero-ablate the output `z` of each attention head in turn (`position_dim=1` is the
# head dimension of `z`) and measure the logit difference on the clean prompts.
#
# The action is `tl.zero_ablate()` (any lens action works, or a callable
# `(value, op) -> new value`). The action's `repr` is part of the sweep's identity, which
# must be the same when you resume in a new process: lens actions print as the code
# that builds them; for your own callable, use a small frozen dataclass.

# %%
Z = tl.func("matmul") & tl.preceded_by(tl.func("softmax"))  # z = pattern @ v, per layer


def ablation_sweep(**kwargs: object) -> tl.SweepResult:
    return tl.sweep.ablation(model, clean, Z, metric=metric, action=tl.zero_ablate(),
                             positions="each", position_dim=1, batch_size=1, **kwargs)  # type: ignore[arg-type]


reference = ablation_sweep(progress=False)  # uninterrupted, for comparison

# %% [markdown]
# A crash in the middle: this executor computes three batches and then raises, as a
# killed job would. Rows already computed are on disk (`rows.jsonl`, one line per row).

# %%
class Interrupted(Exception):
    pass


class CrashAfter(tl.sweep.LocalExecutor):
    def __init__(self, batches: int) -> None:
        super().__init__(progress=False)
        self.batches = batches

    def map(self, job, batches):  # type: ignore[no-untyped-def]
        for i, rows in enumerate(super().map(job, batches)):
            yield rows
            if i + 1 == self.batches:
                raise Interrupted(f"killed after {self.batches} batches")


work = Path(tempfile.mkdtemp(prefix="lens-sweep-"))
store = work / "head_ablation"
try:
    ablation_sweep(out=str(store), executor=CrashAfter(3))
except Interrupted as e:
    print("sweep interrupted:", e)
done_before = len((store / "rows.jsonl").read_text().splitlines())
print(f"{done_before} of {len(reference)} rows on disk")
assert done_before == 3

# %% [markdown]
# Run the same call again with the same `out=`: only the missing cells are computed
# (this executor counts them), and the result equals the uninterrupted run.

# %%
class Counting(tl.sweep.LocalExecutor):
    def __init__(self) -> None:
        super().__init__(progress=False)
        self.cells = 0

    def map(self, job, batches):  # type: ignore[no-untyped-def]
        for rows in super().map(job, batches):
            self.cells += len(rows)
            yield rows


counter = Counting()
resumed = ablation_sweep(out=str(store), executor=counter)
print(f"resumed: computed {counter.cells} cells")
assert counter.cells == len(reference) - done_before
assert [r["value"] for r in resumed.rows] == [r["value"] for r in reference.rows]

# %% [markdown]
# **Finding.** Among layer 0's heads, the most harmful to ablate is a previous-token
# head (most of its attention goes from position i to i-1); heads without that pattern
# matter less. Layer 1's four induction heads back each other up.

# %%
frame = resumed.to_pandas()
z_labels = list(dict.fromkeys(frame["site"]))
frame["layer"] = frame["site"].map({s: i for i, s in enumerate(z_labels)})
frame["head"] = frame["position"]
print(frame.pivot(index="layer", columns="head", values="value").round(2).to_string())
layer0 = frame[frame["layer"] == 0].set_index("head")["value"]
softmax_ops = [op for op in runs["clean"].ops if tl.func("softmax")(op)]
pattern0 = softmax_ops[0].out.detach()  # layer 0's attention: (batch, head, query, key)
t = pattern0.shape[-1]
prev_score = pattern0[:, :, torch.arange(1, t), torch.arange(t - 1)].mean(dim=(0, 2))
print("previous-token score of layer-0 heads:", prev_score.numpy().round(2))
worst = int(layer0.idxmin())
print(f"most harmful layer-0 ablation: head {worst} (logit difference "
      f"{layer0[worst]:.2f}, was {frame['baseline'].iloc[0]:.2f})")
assert prev_score[worst] > 0.5
assert layer0[worst] < frame["baseline"].iloc[0]
for head in range(len(prev_score)):
    if prev_score[head] < 0.35:
        assert layer0[head] > layer0[worst], (head, layer0.to_dict())
fig = resumed.heatmap(title="zero-ablating one head: logit difference")
fig.axes[0].set_yticklabels([f"layer {i}" for i in range(len(z_labels))])
fig.axes[0].set_xlabel("head")
fig.savefig(OUT / "head_ablation.png", dpi=110)
plt.close(fig)
resumed.save(str(OUT / "head_ablation.csv"))

# %% [markdown]
# ## The same sweep on Ray
#
# `ray.init(num_cpus=2)` starts a local cluster (on a real cluster: `ray.init(address=
# "auto")`). `tl.RayExecutor` ships the model to each worker once, spreads the batches
# over the workers, and re-runs a batch whose worker died. The workers import `lens`
# and this tutorial's model code, so they get the repository on their `PYTHONPATH`.
#
# The executor is not part of a sweep's identity: here Ray finishes a sweep that was
# interrupted while running locally.

# %%
import ray  # noqa: E402

ray_store = work / "head_ablation_ray"
with contextlib.suppress(Interrupted):
    ablation_sweep(out=str(ray_store), executor=CrashAfter(2))
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
try:
    on_ray = ablation_sweep(out=str(ray_store), executor=tl.RayExecutor(workers=2))
finally:
    ray.shutdown()
print(on_ray.to_pandas()[["site", "position", "value"]].to_string())
assert len(on_ray) == len(reference)
assert torch.allclose(torch.tensor([r["value"] for r in on_ray.rows]),
                      torch.tensor([r["value"] for r in reference.rows]),
                      rtol=1e-5, atol=1e-5)
shutil.rmtree(work)
print("05_bundles_and_sweeps: all checks passed")
