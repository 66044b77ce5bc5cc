"""Sweep rows in the user's terms (site as given, layer, op, head, position), facet and
head cells, and per-row positions, each equal to the same patch made with plain hooks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import lens as tl
from lens import sweeps
from lens.errors import InterventionError
from tests.sweeps.conftest import gpt2_small_config_model

N_HEAD, D_HEAD = 4, 8


def batch_diff(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 3] - logits[:, -1, 5]).sum()


@pytest.fixture(scope="module")
def gpt2b():
    pytest.importorskip("transformers")
    model = gpt2_small_config_model()
    g = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 50, (2, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = (clean[:, 1] + 11) % 50
    return model, clean, corrupted


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _with_first(out, new):
    return (new, *out[1:]) if isinstance(out, tuple) else new


def _metric_with(model, x, module, hook, pre=False):
    reg = module.register_forward_pre_hook if pre else module.register_forward_hook
    h = reg(hook)
    try:
        with torch.no_grad():
            return float(batch_diff(model(x).logits))
    finally:
        h.remove()


def _saved(model, x, module, pre=False):
    got = {}

    def keep(m, args, out=None):
        got["v"] = (args[0] if pre else (out[0] if isinstance(out, tuple) else out)).clone()

    reg = module.register_forward_pre_hook if pre else module.register_forward_hook
    h = reg(keep)
    with torch.no_grad():
        model(x)
    h.remove()
    return got["v"]


def _close(a, b):
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)


def test_module_sites_are_named_as_given_with_layer_and_op(gpt2b):
    model, clean, corrupted = gpt2b
    sites = tl.module("transformer.h.0") | tl.module("transformer.h.1.mlp")
    res = sweeps.patching(model, clean, corrupted, sites, metric=batch_diff, positions=[1, 4],
                          progress=False)
    tr = tl.trace(model, corrupted)
    got = {(r["site"], r["layer"], r["op"]) for r in res.rows}
    assert got == {("transformer.h.0", 0, tr["transformer.h.0"].label),
                   ("transformer.h.1.mlp", 1, tr["transformer.h.1.mlp"].label)}
    block = model.transformer.h[0]
    src = _saved(model, clean, block)
    for row in (r for r in res.rows if r["site"] == "transformer.h.0"):
        p = row["position"]

        def patch(m, args, out, p=p):
            new = _first(out).clone()
            new[:, p] = src[:, p]
            return _with_first(out, new)

        assert _close(row["value"], _metric_with(model, corrupted, block, patch)), row
    table = res.pivot()  # layer x position
    assert list(table.index) == [0, 1] and list(table.columns) == [1, 4]
    assert table.loc[0, 4] == next(r["value"] for r in res.rows
                                   if r["site"] == "transformer.h.0" and r["position"] == 4)
    plain = sweeps.ablation(model, clean, tl.func("tanh") & tl.in_module("transformer.h.1"),
                            metric=batch_diff, progress=False)
    (row,) = plain.rows
    assert row["site"] == row["op"] and row["layer"] == 1 and row["op"].startswith("tanh")


def _z_hook_route(model, clean, corrupted, layer, head, position, zero=False):
    """Patch (or zero) head ``head``'s z at ``position`` through the input of c_proj, where
    heads sit side by side as [batch, pos, head * d_head]."""
    proj = model.transformer.h[layer].attn.c_proj
    src = _saved(model, clean, proj, pre=True)
    cols = slice(head * D_HEAD, (head + 1) * D_HEAD)

    def pre(m, args):
        x = args[0].clone()
        x[:, position, cols] = 0 if zero else src[:, position, cols]
        return (x,)

    return _metric_with(model, corrupted, proj, pre, pre=True)


def test_head_each_z_cells_equal_c_proj_input_hooks(gpt2b):
    model, clean, corrupted = gpt2b
    sel = tl.facet("z", module="transformer.h.1.attn", head="each")
    res = sweeps.patching(model, clean, corrupted, sel, metric=batch_diff, progress=False)
    assert len(res) == N_HEAD * clean.shape[1]
    tr = tl.trace(model, corrupted)
    for row in res.rows:
        assert row["site"] == "transformer.h.1.attn.z" and row["layer"] == 1
        assert row["op"] in tr.labels
        want = _z_hook_route(model, clean, corrupted, 1, row["head"], row["position"])
        assert _close(row["value"], want), row
    table = res.pivot()  # layer x head, per position
    assert table.shape == (clean.shape[1], N_HEAD)
    assert list(table.columns) == list(range(N_HEAD))
    assert list(table.index.names) == ["layer", "position"]
    abl = sweeps.ablation(model, corrupted, tl.facet("z", module="transformer.h.0.attn",
                                                     head=[2]), positions=[3],
                          metric=batch_diff, progress=False)
    (row,) = abl.rows
    assert row["head"] == 2 and row["layer"] == 0
    assert _close(row["value"], _z_hook_route(model, corrupted, corrupted, 0, 2, 3, zero=True))


def _attention_by_hand(attn, x, pattern_edit):
    """GPT-2 attention recomputed from its weights, with the pattern edited."""
    q, k, v = attn.c_attn(x).split(N_HEAD * D_HEAD, dim=2)
    q, k, v = (t.view(x.shape[0], x.shape[1], N_HEAD, D_HEAD).transpose(1, 2)
               for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(D_HEAD)
    mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
    pattern = pattern_edit(scores.masked_fill(~mask, float("-inf")).softmax(-1))
    z = (pattern @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    return attn.c_proj(z), pattern


def test_pattern_cells_of_fused_attention_equal_a_hand_recomputation(gpt2b):
    model, clean, corrupted = gpt2b
    sel = tl.facet("pattern", module="transformer.h.0.attn", head=[1, 3])
    res = sweeps.patching(model, clean, corrupted, sel, metric=batch_diff, positions=[2, 5],
                          progress=False)
    assert [(r["head"], r["position"]) for r in res.rows] == [(1, 2), (1, 5), (3, 2), (3, 5)]
    attn, ln = model.transformer.h[0].attn, model.transformer.h[0].ln_1
    clean_in = _saved(model, clean, ln)
    with torch.no_grad():
        _, clean_pattern = _attention_by_hand(attn, clean_in, lambda p: p)
    for row in res.rows:
        h, p = row["head"], row["position"]

        def edit(pat, h=h, p=p):
            pat = pat.clone()
            pat[:, h, p] = clean_pattern[:, h, p]
            return pat

        def replace(m, args, kwargs, out, edit=edit):
            return (_attention_by_hand(m, args[0], edit)[0], *out[1:])

        h_ = attn.register_forward_hook(replace, with_kwargs=True)
        try:
            with torch.no_grad():
                want = float(batch_diff(model(corrupted).logits))
        finally:
            h_.remove()
        assert _close(row["value"], want), row
        assert row["site"] == "transformer.h.0.attn.pattern" and row["layer"] == 0


class TinyAttention(nn.Module):
    """A hand-written attention whose pattern is a module's output (hookable)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.softmax = nn.Softmax(dim=-1)
        self.out = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (t.view(b, s, 2, 4).transpose(1, 2) for t in self.qkv(x).split(8, -1))
        pattern = self.softmax(q @ k.transpose(-1, -2) / 2.0)
        return self.out((pattern @ v).transpose(1, 2).reshape(b, s, 8))


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([TinyAttention(), TinyAttention()])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = x + blk(x)
        return self.head(x)


def tiny_metric(out: torch.Tensor) -> torch.Tensor:
    return out[:, -1, 0].sum() - out[:, -1, 2].sum()


def test_pattern_and_per_row_positions_on_a_hand_written_model():
    torch.manual_seed(0)
    model = TinyModel().eval()
    clean, corrupted = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    rows_at = torch.tensor([4, 2, 3])  # a padded batch: each row's last real token
    sel = tl.facet("pattern", module="blocks.1", head="each")
    res = sweeps.patching(model, clean, corrupted, sel, metric=tiny_metric,
                          positions=rows_at, progress=False)
    assert [(r["layer"], r["head"], r["position"]) for r in res.rows] == [(1, 0, 0), (1, 1, 0)]
    # named after the module call the attention facets were found in
    assert all(r["site"].startswith("blocks.1.") and r["site"].endswith(".pattern")
               for r in res.rows)
    soft = model.blocks[1].softmax
    src = _saved_plain(model, clean, soft)
    for row in res.rows:
        def patch(m, args, out, h=row["head"]):
            new = out.clone()
            for b, p in enumerate(rows_at.tolist()):
                new[b, h, p] = src[b, h, p]
            return new

        want = _plain_metric(model, corrupted, soft, patch)
        assert _close(row["value"], want), row
        assert row["op"].startswith("softmax")


def _saved_plain(model, x, module):
    got = {}
    h = module.register_forward_hook(lambda m, i, o: got.__setitem__("v", o.clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    return got["v"]


def _plain_metric(model, x, module, hook):
    h = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return float(tiny_metric(model(x)))
    finally:
        h.remove()


def test_per_row_positions_on_gpt2_blocks_equal_hooks(gpt2b):
    model, clean, corrupted = gpt2b
    cols = torch.tensor([[5, 1], [3, 0]])  # [batch, 2]: two cells per site
    res = sweeps.patching(model, clean, corrupted, ["transformer.h.0", "transformer.h.1"],
                          metric=batch_diff, positions=cols, progress=False)
    assert [(r["site"], r["position"]) for r in res.rows] == [
        ("transformer.h.0", 0), ("transformer.h.0", 1),
        ("transformer.h.1", 0), ("transformer.h.1", 1)]
    for row in res.rows:
        block = model.get_submodule(row["site"])
        src = _saved(model, clean, block)

        def patch(m, args, out, j=row["position"], src=src):
            new = _first(out).clone()
            for b in range(new.shape[0]):
                new[b, cols[b, j]] = src[b, cols[b, j]]
            return _with_first(out, new)

        assert _close(row["value"], _metric_with(model, corrupted, block, patch)), row
    with pytest.raises(InterventionError, match="rows"):
        sweeps.patching(model, clean, corrupted, "transformer.h.0", metric=batch_diff,
                        positions=torch.tensor([1, 2, 3]), progress=False)
    with pytest.raises(InterventionError, match="out of range"):
        sweeps.patching(model, clean, corrupted, "transformer.h.0", metric=batch_diff,
                        positions=torch.tensor([1, 6]), progress=False)


def test_attribution_rows_name_sites_and_take_per_row_positions(gpt2b):
    model, clean, corrupted = gpt2b
    at = torch.tensor([2, 4])
    res = sweeps.attribution_patching(model, clean, corrupted, "transformer.h.0",
                                      metric=batch_diff, positions=at)
    (row,) = res.rows
    block = model.transformer.h[0]
    src = _saved(model, clean, block)
    grabbed = {}

    def keep(m, args, out):
        _first(out).retain_grad()
        grabbed["v"] = _first(out)

    h = block.register_forward_hook(keep)
    batch_diff(model(corrupted).logits).backward()
    h.remove()
    model.zero_grad(set_to_none=True)
    attr = (src - grabbed["v"].detach()) * grabbed["v"].grad
    want = sum(float(attr[b, p].sum()) for b, p in enumerate(at.tolist()))
    assert row["site"] == "transformer.h.0" and row["layer"] == 0
    assert math.isclose(row["value"], want, rel_tol=1e-4, abs_tol=1e-6)


def test_head_each_is_for_sweeps_and_old_result_folders_are_refused(gpt2b, tmp_path):
    model, clean, corrupted = gpt2b
    assert repr(tl.facet("z", head="each")) == "tl.facet('z', head='each')"
    tr = tl.trace(model, clean, intervention_ready=True)
    with pytest.raises(InterventionError, match="one sweep cell per head"):
        tr.fork().intervene(tl.facet("z", head="each"), tl.zero_ablate()).replay()
    out = tmp_path / "sweep"
    sweeps.patching(model, clean, corrupted, "transformer.h.0", metric=batch_diff,
                    positions=[0], out=str(out), progress=False)
    spec = json.loads((out / "spec.json").read_text())
    del spec["spec"]["rows"]  # as written before rows named sites as given
    spec["digest"] = "0123456789abcdef"
    (out / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(sweeps.SpecMismatchError, match="older format"):
        sweeps.patching(model, clean, corrupted, "transformer.h.0", metric=batch_diff,
                        positions=[0], out=str(out), progress=False)


def _eager_attn(model, ids, backward):
    """Layer 0's pattern and z (merged heads) of an eager copy of ``model``, with their
    gradients of batch_diff when ``backward``: plain hooks and retain_grad."""
    from transformers import GPT2LMHeadModel

    cfg = model.config.to_dict() | {"attn_implementation": "eager"}
    eager = GPT2LMHeadModel(type(model.config)(**cfg)).eval()
    eager.load_state_dict(model.state_dict())
    attn, seen = eager.transformer.h[0].attn, {}

    def grab(name, t):
        t.retain_grad()
        seen[name] = t

    hs = [attn.register_forward_hook(lambda m, a, out: grab("pattern", out[1])),
          attn.c_proj.register_forward_pre_hook(lambda m, a: grab("z", a[0]))]
    value = batch_diff(eager(ids).logits)
    for h in hs:
        h.remove()
    if backward:
        value.backward()
    b, s, _ = seen["z"].shape
    z = {k: t.reshape(b, s, N_HEAD, D_HEAD).transpose(1, 2) if t is not None else None
         for k, t in (("z", seen["z"]), ("z_grad", seen["z"].grad))}
    return {"pattern": seen["pattern"], "pattern_grad": seen["pattern"].grad, **z}


@pytest.mark.parametrize("name", ["pattern", "z"])
def test_attribution_per_head_equals_an_eager_copy(gpt2b, name):
    model, clean, corrupted = gpt2b
    res = sweeps.attribution_patching(
        model, clean, corrupted, tl.facet(name, module="transformer.h.0.attn", head="each"),
        metric=batch_diff, positions=None)
    src = _eager_attn(model, clean, backward=False)[name].detach()
    got = _eager_attn(model, corrupted, backward=True)
    attr = (src - got[name].detach()) * got[f"{name}_grad"]
    assert [r["head"] for r in res.rows] == list(range(N_HEAD))
    for row in res.rows:
        want = float(attr[:, row["head"]].sum())
        assert math.isclose(row["value"], want, rel_tol=1e-3, abs_tol=1e-9), row
    assert min(abs(r["value"]) for r in res.rows) > 1e-7  # every head compares something
