# %% [markdown]
# # 02 — Extraction: keep only what you need, stop early, save to disk
#
# A full trace keeps every op's output. For real work you usually want a few sites over
# many inputs. This tutorial shows the cheaper paths, on the induction model of
# tutorial 03 (trained once, then cached):
#
# - `save=`: keep payloads only for ops a selector (or a list of names) matches;
# - `halt=`: stop the forward pass right after a site;
# - `tl.pluck`: one activation, one call, at the lowest cost that site allows;
# - `tl.record`: capture now, build the labelled trace later (or never);
# - `tl.extract_dataset`: a whole data set's activations, sharded to safetensors, resumable;
# - `tl.save` / `tl.load`: a trace on disk (JSON + safetensors, never pickle).

# %%
from __future__ import annotations

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

OUT = Path(os.environ.get("LENS_TUTORIAL_OUT", "tutorials-out")) / "02_extraction"
OUT.mkdir(parents=True, exist_ok=True)
WORK = Path(tempfile.mkdtemp(prefix="lens-extraction-"))

model, config = induction.load_or_train()
clean, _, _ = induction.prompts(config, batch=8)


def hooked(module_address: str, x: torch.Tensor) -> torch.Tensor:
    """Ground truth from plain PyTorch: a forward hook on one module."""
    got: list[torch.Tensor] = []
    h = model.get_submodule(module_address).register_forward_hook(
        lambda m, i, o: got.append(o.detach().clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    return got[0]


# %% [markdown]
# ## Selective saving
#
# Every op is still recorded (labels, shapes, graph), but only the ops `save=` matches
# keep their output. Here: the attention patterns (the softmax ops) and the residual
# stream after each block (module addresses).

# %%
patterns = tl.func("softmax")
full = tl.trace(model, clean)
lean = tl.trace(model, clean, save=patterns | tl.module("blocks.0") | tl.module("blocks.1"))
print(repr(full))
print(repr(lean))
kept = [op.label for op in lean.ops if op.has_payload]
print("kept:", kept)  # the model's inputs are always kept
assert len(lean.ops) == len(full.ops)  # the same graph...
assert lean.saved_nbytes < full.saved_nbytes / 3  # ...for a fraction of the memory
assert torch.equal(lean["blocks.1"].out, hooked("blocks.1", clean))
try:
    _ = lean["blocks.0.attn.q"].out
except tl.PayloadError as e:
    print("as expected:", str(e)[:100], "...")
else:
    raise AssertionError("an unsaved op should have no payload")

# %% [markdown]
# `save=` also takes a list mixing labels, module addresses and selectors.

# %%
by_name = tl.trace(model, clean, save=["blocks.0", full["embed"].label])
assert [op.label for op in by_name.ops if op.has_payload and not op.is_input] == [
    full["embed"].label, full["blocks.0"].label]

# %% [markdown]
# ## Halting
#
# `halt=` stops the forward pass right after the first op a selector matches: nothing
# after layer 0 runs. The trace holds what ran.

# %%
halted = tl.trace(model, clean, halt=tl.module("blocks.0"))
print(repr(halted), "halted:", halted.halted)
assert halted.halted
assert not any(op.module and op.module.startswith("blocks.1") for op in halted.ops)
assert torch.equal(halted[-1].out, hooked("blocks.0", clean))

# %% [markdown]
# ## One activation: `pluck`
#
# `tl.pluck` picks the cheapest way to get one site's output: for a module address or a
# selector decided as ops run, one forward that halts right after it and keeps only it.

# %%
resid0 = tl.pluck(model, clean, "blocks.0")
assert torch.equal(resid0, hooked("blocks.0", clean))
pattern1 = tl.pluck(model, clean, tl.func("softmax") & tl.in_module("blocks.1.attn"))
assert torch.equal(pattern1, full[[op.label for op in full.ops if patterns(op)][1]].out)
print("layer-1 attention pattern:", tuple(pattern1.shape))

# %% [markdown]
# ## Record now, label later
#
# `tl.record` runs the capture engine but skips postprocessing (labels, loop detection),
# which is most of a trace's cost beyond the forward pass. Payloads are indexed by call
# order or function name; `to_trace()` builds the full trace when you need it.

# %%
rec = tl.record(model, clean, save=patterns)
print(rec)
softmaxes = rec["softmax"]
assert len(softmaxes) == config.n_layers
assert torch.equal(softmaxes[1], pattern1)
assert rec.to_trace().labels == full.labels

# %% [markdown]
# ## A data set's activations, resumable
#
# `tl.extract_dataset` traces each batch with `save=<sites>` and appends the sites'
# outputs to safetensors shards, with a JSON manifest. Each shard is written whole and
# renamed into place, so an interrupted run leaves only complete shards; running it
# again skips them.
#
# The data: 48 fresh induction prompts, in batches of 8, given as ready batches
# (`batches=`; a list given as `data` would be taken as samples and collated). The sites
# are named: the residual stream after layer 0, and layer 1's attention pattern.

# %%
data = [induction.prompts(config, batch=8, seed=100 + i)[0] for i in range(6)]
sites = {"resid0": "blocks.0", "pattern1": tl.func("softmax") & tl.in_module("blocks.1.attn")}
store = WORK / "activations"


class Stop(Exception):
    pass


def crash_after(n: int):  # noqa: ANN201
    def on_batch(i: int, acts: dict[str, torch.Tensor]) -> None:
        if i == n:
            raise Stop(f"killed while tracing batch {i}")
    return on_batch


try:
    tl.extract_dataset(model, None, sites, batches=data, output_dir=store,
                       on_batch=crash_after(3), progress=False)
except Stop as e:
    print("interrupted:", e)
shards_before = sorted(p.name for p in store.glob("*.safetensors"))
print("shards on disk:", shards_before)
assert len(shards_before) == 3

seen: list[int] = []
manifest = tl.extract_dataset(model, None, sites, batches=data, output_dir=store,
                              on_batch=lambda i, a: seen.append(i), progress=False)
print("resumed; traced batches", seen)
assert seen == [3, 4, 5] and manifest["completed"]

acts = tl.load_dataset_activations(store)
print({k: tuple(v.shape) for k, v in acts.items()})
truth = torch.cat([hooked("blocks.0", x) for x in data])
assert torch.equal(acts["resid0"], truth)

# %% [markdown]
# With the activations on disk, analysis needs no model. Over all 48 prompts: how much
# of layer 1's attention (averaged over heads) goes to the induction stripe (from
# query i in the second copy to key i - n + 1)?

# %%
n = config.max_period
last = clean.shape[1] - 1
q = torch.arange(n + 1, last + 1)
stripe = acts["pattern1"][:, :, q, q - n + 1].mean(dim=(0, 2))
print("layer-1 induction stripe score per head:", stripe.numpy().round(2))
assert bool((stripe > 0.5).all())

fig, ax = plt.subplots(figsize=(4.5, 4))
ax.imshow(acts["pattern1"].mean(dim=(0, 1)), cmap="Blues")
ax.set_title("layer 1 attention, mean over 48 prompts and heads")
ax.set_xlabel("key position")
ax.set_ylabel("query position")
fig.tight_layout()
fig.savefig(OUT / "mean_layer1_pattern.png", dpi=110)
plt.close(fig)

# %% [markdown]
# ## Save and load a trace
#
# `tl.save` writes a directory: `trace.json` (graph, labels, modules, metadata) and
# `tensors.safetensors` (payloads and, by default, parameters). Loading never runs code
# from the file. The loaded trace has the same labels and payloads.

# %%
path = tl.save(full, WORK / "trace")
print(sorted(p.name for p in path.iterdir()))
back = tl.load(path)
assert back.labels == full.labels
for a, b in zip(full.ops, back.ops, strict=True):
    assert a.has_payload == b.has_payload
    if a.has_payload:
        assert torch.equal(a.out, b.out), a.label
print(repr(back), "->", back["blocks.1.attn"].label)

shutil.copytree(path, OUT / "saved_trace", dirs_exist_ok=True)
shutil.rmtree(WORK)
print("02_extraction: all checks passed")
