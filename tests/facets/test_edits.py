"""Editing facets: any action on one head's slice, live (tl.when), by fork/replay and by
rerun, checked against edited copies of the models (plain hooks, no lens)."""

from __future__ import annotations

import copy

import pytest
import torch

import lens as tl
from lens.facets import FacetError, facet
from tests.facets import _truth
from tests.facets._hf import other_ids, pair
from tests.helpers import build
from tests.models import get

# zoo case: (attention module, output projection, heads, d_head)
PROJ = {
    "gpt2_tiny": ("transformer.h.0.attn", "transformer.h.0.attn.c_proj", 4, 8),
    "bert_tiny": ("encoder.layer.1.attention.self", "encoder.layer.1.attention.output.dense",
                  4, 8),
    "llama_tiny": ("model.layers.1.self_attn", "model.layers.1.self_attn.o_proj", 4, 8),
    "vit_tiny": ("layers.0.attention", "layers.0.attention.o_proj", 4, 8),
    "custom_attention": ("", "out", 4, 4),
    "tiny_transformer_2block": ("blocks.1.attn", "blocks.1.attn.out", 4, 4),
}


def _logits(out):
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _with_pre_hook(model, address, fn, args, kwargs):
    """A copy of ``model`` whose module ``address`` sees ``fn(input)``; its output."""
    twin = copy.deepcopy(model)
    twin.get_submodule(address).register_forward_pre_hook(lambda m, a: (fn(a[0]), *a[1:]))
    with torch.no_grad():
        return _logits(twin(*args, **kwargs))


def _zero_cols(lo, hi):
    def fn(x):
        x = x.clone()
        x[..., lo:hi] = 0
        return x
    return fn


@pytest.mark.parametrize("name", sorted(PROJ))
def test_zero_ablating_a_heads_z_equals_zeroing_it_before_the_output_projection(name):
    model, args, kwargs = build(get(name))
    attn, proj, _, d = PROJ[name]
    head = 2
    want = _with_pre_hook(model, proj, _zero_cols(head * d, (head + 1) * d), args, kwargs)
    sel = facet("z", head=head, module=attn or None) if attn else facet("z", head=head)
    trace = tl.trace(model, *args, input_kwargs=kwargs, intervention_ready=True)
    replayed = trace.fork().intervene(sel, tl.zero_ablate()).replay()
    live = tl.trace(model, *args, input_kwargs=kwargs, intervene=tl.when(sel, tl.zero_ablate()))
    assert torch.allclose(_logits(replayed.output), want, atol=1e-5)
    assert torch.allclose(_logits(live.output), want, atol=1e-5)
    assert not torch.allclose(_logits(trace.output), want, atol=1e-5)  # the edit mattered


def test_zero_ablating_a_heads_result_equals_zeroing_its_z():
    model, args, kwargs = build(get("gpt2_tiny"))
    trace = tl.trace(model, *args, intervention_ready=True)
    where = tl.in_module("transformer.h.1")
    by_result = trace.fork().intervene(facet("result", head=1) & where, tl.zero_ablate()).replay()
    by_z = trace.fork().intervene(facet("z", head=1) & where, tl.zero_ablate()).replay()
    assert torch.allclose(by_result.output.logits, by_z.output.logits, atol=1e-5)
    proj = trace.modules["transformer.h.1.attn"].facets.info["projection_op"]
    assert trace.find_sites(facet("result", head=1) & where) == [trace.op_at_call(proj).label]


@pytest.mark.parametrize("which,cols", [("q", (16, 24)), ("k", (32 + 8, 32 + 16)),
                                         ("v", (64 + 24, 64 + 32))])
def test_editing_one_heads_q_k_or_v_equals_editing_the_fused_projection(which, cols):
    model, args, kwargs = build(get("gpt2_tiny"))
    head = {"q": 2, "k": 1, "v": 3}[which]
    twin = copy.deepcopy(model)
    twin.transformer.h[0].attn.c_attn.register_forward_hook(
        lambda m, a, out: _zero_cols(*cols)(out))
    with torch.no_grad():
        want = twin(*args).logits
    sel = facet(which, head=head, module="transformer.h.0.attn")
    trace = tl.trace(model, *args, intervention_ready=True)
    got = trace.fork().intervene(sel, tl.zero_ablate()).replay()
    assert torch.allclose(got.output.logits, want, atol=1e-5)


def test_grouped_query_heads_edit_the_kv_head_shared_by_its_query_heads():
    model, args, kwargs = build(get("llama_tiny"))
    twin = copy.deepcopy(model)
    twin.model.layers[0].self_attn.k_proj.register_forward_hook(
        lambda m, a, out: _zero_cols(8, 16)(out))  # kv head 1 (rotary of 0 is 0)
    with torch.no_grad():
        want = twin(*args).logits
    trace = tl.trace(model, *args, intervention_ready=True)
    sel = facet("k", head=1, module="model.layers.0.self_attn")
    got = trace.fork().intervene(sel, tl.zero_ablate()).replay()
    assert torch.allclose(got.output.logits, want, atol=1e-5)
    z = got.modules["model.layers.0.self_attn"].facets["z"]
    z0 = trace.modules["model.layers.0.self_attn"].facets["z"]
    assert torch.equal(z[:, :2], z0[:, :2]) and not torch.equal(z[:, 2:], z0[:, 2:])


@pytest.mark.parametrize("family,address", [("gpt2", "transformer.h.0.attn"),
                                            ("llama", "model.layers.0.self_attn")])
def test_patching_a_heads_pattern_on_fused_attention_equals_the_eager_patch(family, address):
    pytest.importorskip("transformers")
    (fused, eager), ids = pair(family)
    clean_ids = other_ids()
    sel = facet("pattern", head=1, module=address)
    outs = []
    for model in (fused, eager):
        clean = tl.trace(model, clean_ids, intervention_ready=True)
        corrupt = tl.trace(model, ids, intervention_ready=True)
        patched = corrupt.fork().intervene(sel, tl.patch_from(clean)).replay()
        live = tl.trace(model, ids, intervene=tl.when(sel, tl.patch_from(clean)))
        assert torch.allclose(patched.output.logits, live.output.logits, atol=1e-5)
        assert not torch.allclose(patched.output.logits, corrupt.output.logits, atol=1e-4)
        got = patched.modules[address].facets["pattern"]
        want = clean.modules[address].facets["pattern"]
        assert torch.allclose(got[:, 1], want[:, 1], atol=1e-6)
        base = corrupt.modules[address].facets["pattern"]
        assert torch.allclose(got[:, [0, 2, 3]], base[:, [0, 2, 3]], atol=1e-6)
        outs.append(patched.output.logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_a_fused_pattern_edit_leaves_the_other_heads_bit_identical():
    model, args, _ = build(get("gpt2_tiny"))
    trace = tl.trace(model, *args, intervention_ready=True)
    sel = facet("pattern", head=0, module="transformer.h.0.attn")
    fork = trace.fork().intervene(sel, tl.scale(0.5)).replay()
    z, z0 = (t.modules["transformer.h.0.attn"].facets["z"] for t in (fork, trace))
    assert torch.equal(z[:, 1:], z0[:, 1:])
    p0 = trace.modules["transformer.h.0.attn"].facets["pattern"]
    assert torch.allclose(z[:, 0], (0.5 * p0[:, 0]) @ trace.modules[
        "transformer.h.0.attn"].facets["v"][:, 0], atol=1e-6)


def test_nn_multihead_attention_heads_can_be_edited():
    model, args, _ = build(get("mha"))
    want = _truth.mha(model, args, {})
    x = args[0]
    z = want["z"].clone()
    z[:, 1] = 0
    merged = z.transpose(1, 2).reshape(x.shape)
    attn_out = merged @ model.attn.out_proj.weight.t() + model.attn.out_proj.bias
    with torch.no_grad():
        expected = model.norm(x + attn_out)
    trace = tl.trace(model, *args, intervention_ready=True)
    for name in ("z", "result"):
        got = trace.fork().intervene(facet(name, head=1), tl.zero_ablate()).replay()
        assert torch.allclose(got.output, expected, atol=1e-5), name
    pattern = want["pattern"].clone()
    pattern[:, 3] = 1.0 / pattern.shape[-1]  # uniform attention for head 3
    z = pattern @ want["v"]
    attn_out = z.transpose(1, 2).reshape(x.shape) @ model.attn.out_proj.weight.t() \
        + model.attn.out_proj.bias
    with torch.no_grad():
        expected = model.norm(x + attn_out)
    flat = tl.replace_with(1.0 / pattern.shape[-1])
    got = trace.fork().intervene(facet("pattern", head=3), flat).replay()
    assert torch.allclose(got.output, expected, atol=1e-5)
    assert torch.allclose(got.modules["attn"].facets["pattern"][:, 3], pattern[:, 3])


def test_edits_by_transformer_lens_alias_use_its_layout():
    model, args, _ = build(get("tiny_transformer_2block"))
    trace = tl.trace(model, *args, intervention_ready=True).with_aliases("transformer_lens")
    by_alias = trace.fork().intervene("blocks.1.attn.hook_z", tl.zero_ablate().at[:, :, 3])
    by_facet = trace.fork().intervene(facet("z", head=3, module="blocks.1.attn"),
                                      tl.zero_ablate())
    assert torch.allclose(by_alias.replay().output, by_facet.replay().output)
    view = trace["blocks.1.attn.hook_z"]
    assert trace.fork().intervene(view.selector, tl.zero_ablate()).replay().output is not None


def test_mean_ablating_a_head_against_a_reference_trace():
    model, args, _ = build(get("tiny_transformer_2block"))
    ref_ids = torch.randint(0, 50, (5, 6), generator=torch.Generator().manual_seed(3))
    reference = tl.trace(model, ref_ids)
    trace = tl.trace(model, *args, intervention_ready=True)
    sel = facet("z", head=0, module="blocks.0.attn")
    got = trace.fork().intervene(sel, tl.mean_ablate(source=reference)).replay()
    mean = reference.modules["blocks.0.attn"].facets["z"][:, 0].mean(0)
    z = got.modules["blocks.0.attn"].facets["z"]
    assert torch.allclose(z[:, 0], mean.expand_as(z[:, 0]))


def test_replay_live_and_rerun_agree_on_facet_edits():
    model, args, _ = build(get("llama_tiny"))
    trace = tl.trace(model, *args, intervention_ready=True)
    sel = facet("pattern", head=[0, 3], module="model.layers.1.self_attn")
    fork = trace.fork().intervene(sel, tl.scale(0.0)).replay()
    rerun = fork.rerun(model, *args)
    live = tl.trace(model, *args, intervene=tl.when(sel, tl.scale(0.0)))
    assert torch.allclose(fork.output.logits, rerun.output.logits, atol=1e-6)
    assert torch.allclose(fork.output.logits, live.output.logits, atol=1e-6)
    z = live.modules["model.layers.1.self_attn"].facets["z"]
    assert torch.equal(z[:, [0, 3]], torch.zeros_like(z[:, [0, 3]]))


def test_recurrent_and_residual_facets_edit_their_ops():
    model, args, _ = build(get("lstm"))
    twin = copy.deepcopy(model)
    twin.lstm.register_forward_hook(lambda m, a, out: (out[0] * 0.5, out[1]))
    with torch.no_grad():
        want = twin(*args)
    trace = tl.trace(model, *args, intervention_ready=True)
    got = trace.fork().intervene(facet("output", module="lstm"), tl.scale(0.5)).replay()
    assert torch.allclose(got.output, want, atol=1e-6)
    model, args, _ = build(get("tiny_transformer_2block"))
    twin = copy.deepcopy(model)
    twin.blocks[0].mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    with torch.no_grad():
        want = twin(*args)
    trace = tl.trace(model, *args, intervention_ready=True)
    got = trace.fork().intervene(facet("mlp_out", module="blocks.0"), tl.zero_ablate())
    assert torch.allclose(got.replay().output, want, atol=1e-6)


def test_facet_selectors_explain_what_they_cannot_do():
    model, args, _ = build(get("tiny_transformer_2block"))
    trace = tl.trace(model, *args, intervention_ready=True)
    with pytest.raises(tl.InterventionError, match="no head dimension"):
        trace.fork().intervene(facet("resid_post", head=1), tl.zero_ablate())
    with pytest.raises(tl.SelectorError, match="Did you mean 'pattern'"):
        tl.trace(model, *args, intervene=tl.when(facet("patern"), tl.zero_ablate()))
    with pytest.raises(tl.SelectorError, match="under ~"):
        trace.fork().intervene(~facet("z", head=0) & tl.func("matmul"), tl.zero_ablate())
    with pytest.raises(tl.SelectorError, match="finished trace"):
        facet("z")(trace.ops[3].__class__.__new__(type(trace.ops[3])))
    with pytest.raises(tl.InterventionError, match="matches no op"):
        trace.fork().intervene(facet("h_n"), tl.zero_ablate())
    assert repr(facet("z", head=[1, 2], module="blocks.0.attn")) == \
        "tl.facet('z', head=[1, 2], module='blocks.0.attn')"
    assert trace.find_sites(facet("pattern", module="blocks.0")) == [
        trace.op_at_call(trace.modules["blocks.0.attn"].facets.info["core_op"]).label]



def test_a_fork_shows_the_facets_it_edited():
    model, args, _ = build(get("gpt2_tiny"))
    trace = tl.trace(model, *args, intervention_ready=True)
    at = "transformer.h.0.attn"
    fork = (trace.fork()
            .intervene(facet("pattern", head=1, module=at), tl.scale(2.0))
            .intervene(facet("z", head=2, module=at), tl.zero_ablate())
            .replay())
    f, f0 = fork.modules[at].facets, trace.modules[at].facets
    assert torch.allclose(f["pattern"][:, 1], 2 * f0["pattern"][:, 1])
    assert torch.equal(f["pattern"][:, 0], f0["pattern"][:, 0])
    assert torch.equal(f["z"][:, 2], torch.zeros_like(f["z"][:, 2]))
    assert torch.allclose(f["z"][:, 1], f["pattern"][:, 1] @ f["v"][:, 1], atol=1e-6)
    assert torch.equal(trace.modules[at].facets["pattern"], f0["pattern"])  # source intact
    live = tl.trace(model, *args, detach=True, intervene=tl.when(
        facet("pattern", head=1, module=at), tl.scale(2.0)))
    with pytest.raises(FacetError, match="detach="):
        live.modules[at].facets["pattern"]


def test_rebuilt_recurrent_states_are_edited_and_root_sites_work():
    model, args, _ = build(get("lstm"))
    trace = tl.trace(model, *args, intervention_ready=True)
    fork = trace.fork().intervene(facet("c", module="lstm"), tl.zero_ablate()).replay()
    f = fork.modules["lstm"].facets  # c = 0 at every step makes h = o * tanh(0) = 0
    assert torch.equal(f["output"], torch.zeros_like(f["output"]))
    assert torch.equal(f["c_n"], torch.zeros_like(f["c_n"]))
    assert not torch.equal(trace.modules["lstm"].facets["output"], f["output"])
    model, args, _ = build(get("custom_attention"))
    trace = tl.trace(model, *args, intervention_ready=True)
    site = trace.facets.site("pattern", head=0)
    assert site.module == ":1"
    fork = trace.fork().intervene(site, tl.zero_ablate()).replay()
    assert torch.equal(fork.facets["z"][:, 0], torch.zeros_like(fork.facets["z"][:, 0]))


def test_patching_a_heads_result_equals_patching_its_z():
    model, args, _ = build(get("vit_tiny"))
    g = torch.Generator().manual_seed(1)
    clean = tl.trace(model, torch.randn(2, 3, 16, 16, generator=g), intervention_ready=True)
    trace = tl.trace(model, *args, intervention_ready=True)
    at = "layers.1.attention"
    by_result = trace.fork().intervene(facet("result", head=3, module=at),
                                       tl.patch_from(clean)).replay()
    by_z = trace.fork().intervene(facet("z", head=3, module=at), tl.patch_from(clean)).replay()
    out = by_result.output.last_hidden_state
    assert torch.allclose(out, by_z.output.last_hidden_state, atol=1e-5)
    assert not torch.allclose(out, trace.output.last_hidden_state, atol=1e-4)
    assert torch.allclose(by_result.modules[at].facets["result"][:, 3],
                          clean.modules[at].facets["result"][:, 3], atol=1e-6)


def test_editing_expanded_kv_heads_of_fused_grouped_query_attention():
    model, args, _ = build(get("llama_tiny"))
    trace = tl.trace(model, *args, intervention_ready=True)
    at = "model.layers.0.self_attn"
    fork = trace.fork().intervene(facet("v_expanded", head=3, module=at),
                                  tl.zero_ablate()).replay()
    f, f0 = fork.modules[at].facets, trace.modules[at].facets
    assert torch.equal(f["v_expanded"][:, 3], torch.zeros_like(f["v_expanded"][:, 3]))
    assert torch.equal(f["z"][:, 3], torch.zeros_like(f["z"][:, 3]))  # its query head only
    assert torch.equal(f["z"][:, :3], f0["z"][:, :3])


def _mean_cols(lo, hi):
    def fn(x):  # x: [batch, pos, heads*d_head] entering the output projection
        x = x.clone()
        x[..., lo:hi] = x[..., lo:hi].mean(dim=(0, 1), keepdim=True)
        return x
    return fn


@pytest.mark.parametrize("name", ["gpt2_tiny", "llama_tiny"])
def test_mean_ablating_one_head_over_batch_and_position_equals_the_hand_computation(name):
    model, args, kwargs = build(get(name))
    attn, proj, n_heads, d = PROJ[name]
    head = 2
    want = _with_pre_hook(model, proj, _mean_cols(head * d, (head + 1) * d), args, kwargs)
    sel = facet("z", head=head, module=attn)
    shapes = []

    def look(x):
        shapes.append(tuple(x.shape))
        return x

    trace = tl.trace(model, *args, input_kwargs=kwargs, intervention_ready=True)
    trace.fork().intervene(sel, tl.action(look)).replay()
    batch, seq = args[0].shape
    assert shapes == [(batch, 1, seq, d)]  # [batch, head, pos, d_head], the head axis kept
    replayed = trace.fork().intervene(sel, tl.mean_ablate(over=(0, 2))).replay()
    live = tl.run(model, *args, input_kwargs=kwargs,
                  intervene=tl.when(sel, tl.mean_ablate(over=(0, 2))))
    assert torch.allclose(_logits(replayed.output), want, atol=1e-5)
    assert torch.allclose(_logits(live), want, atol=1e-5)
    assert not torch.allclose(_logits(trace.output), want, atol=1e-5)
