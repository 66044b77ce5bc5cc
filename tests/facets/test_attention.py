"""Attention facets equal q/k/v/scores/pattern/z/result computed by hand from each
module's weights and input, on every attention layout the zoo has."""

from __future__ import annotations

import pytest
import torch

import lens as tl
from lens.facets import FacetError, find_facets
from tests.facets import _truth
from tests.helpers import build
from tests.models import get

NAMES = ("q", "k", "v", "scores", "pattern", "z", "result")


def _facets_of(trace, address):
    return trace.facets if address == "" else trace.modules[address].facets


CASES = {
    # zoo case: (module address holding the attention, hand-written truth)
    "gpt2_tiny": ("transformer.h.1.attn", lambda m, a, k: _truth.gpt2(m, a, k, 1)),
    "bert_tiny": ("encoder.layer.0.attention.self", lambda m, a, k: _truth.bert(m, a, k, 0)),
    "llama_tiny": ("model.layers.1.self_attn", lambda m, a, k: _truth.llama(m, a, k, 1)),
    "vit_tiny": ("layers.1.attention", lambda m, a, k: _truth.vit(m, a, k, 1)),
    "custom_attention": ("", lambda m, a, k: _truth.mixer(m, a, k, m)),
    "tiny_transformer_2block": ("blocks.1.attn",
                                lambda m, a, k: _truth.mixer(m, a, k, m.blocks[1].attn)),
    "mha": ("attn", _truth.mha),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_facets_equal_a_hand_computation(name):
    model, args, kwargs = build(get(name))
    address, truth = CASES[name]
    want = truth(model, args, kwargs)
    trace = tl.trace(model, *args, input_kwargs=kwargs)
    f = _facets_of(trace, address)
    assert f.kinds == ("attention",)
    for key, expected in want.items():
        if key.startswith("_"):
            continue
        got = f[key]
        assert got.shape == expected.shape, key
        if key == "scores":  # -inf where masked: compare where finite, and where masked
            assert torch.equal(torch.isinf(got), torch.isinf(expected)), key
            got, expected = got[torch.isfinite(got)], expected[torch.isfinite(expected)]
        assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4), key
    assert set(NAMES) <= set(f)


@pytest.mark.parametrize("name", sorted(CASES))
def test_results_summed_over_heads_plus_bias_equal_the_attention_output(name):
    model, args, kwargs = build(get(name))
    address, truth = CASES[name]
    want = truth(model, args, kwargs)
    f = _facets_of(tl.trace(model, *args, input_kwargs=kwargs), address)
    total = f["result"].sum(1)
    if want["_bias"] is not None:
        total = total + want["_bias"]
    assert torch.allclose(total, want["_out"], atol=2e-5, rtol=1e-4)


def test_heads_and_kv_heads_are_read_from_the_tensors():
    model, args, kwargs = build(get("llama_tiny"))
    f = tl.trace(model, *args).modules["model.layers.0.self_attn"].facets
    assert (f.info["n_heads"], f.info["n_kv_heads"], f.info["d_head"]) == (4, 2, 8)
    assert f["k"].shape[1] == 2 and f["k_expanded"].shape[1] == 4
    assert torch.equal(f["k_expanded"], f["k"].repeat_interleave(2, dim=1))
    assert torch.allclose(f["pattern"] @ f["v_expanded"], f["z"], atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_eager_attention_has_the_same_facets_as_fused(family):
    pytest.importorskip("transformers")
    from tests.facets._hf import pair

    (fused, eager), ids = pair(family)
    a = tl.trace(fused, ids)
    b = tl.trace(eager, ids)
    addr = "transformer.h.0.attn" if family == "gpt2" else "model.layers.0.self_attn"
    fa, fb = a.modules[addr].facets, b.modules[addr].facets
    assert fa.info["kind"] == "fused" and fb.info["kind"] == "eager"
    assert set(fa) == set(fb)
    for key in fa:
        x, y = fa[key], fb[key]
        if key == "scores":  # eager adds a finite "minus large" mask, fused -inf
            keep = torch.isfinite(x)
            x, y = x[keep], y[keep]
        assert torch.allclose(x, y, atol=2e-5, rtol=1e-4), key


def test_modules_called_several_times_have_facets_per_call():
    model, args, _ = build(get("albert_shared"))
    trace = tl.trace(model, *args)
    calls = trace.modules["block.attn"].calls
    assert len(calls) == 3
    patterns = [c.facets["pattern"] for c in calls]
    assert not torch.equal(patterns[0], patterns[1])
    for call in calls:  # each call's pattern reproduces that call's z
        assert torch.allclose(call.facets["pattern"] @ call.facets["v"], call.facets["z"],
                              atol=1e-6)
    with pytest.raises(tl.LookupKeyError, match="called 3 times"):
        trace.modules["block.attn"].facets  # noqa: B018


def test_a_module_without_attention_has_no_attention_facets():
    model, args, _ = build(get("tiny_transformer_2block"))
    trace = tl.trace(model, *args)
    mlp = trace.modules["blocks.0.mlp"].facets
    assert list(mlp) == [] and mlp.kinds == ()
    with pytest.raises(tl.LookupKeyError, match="has no facet 'pattern'") as err:
        mlp["pattern"]
    assert "It has no facets" in str(err.value)
    block = trace.modules["blocks.0"].facets
    with pytest.raises(KeyError) as err:
        block["pattern"]
    msg = str(err.value)
    assert "resid_pre" in msg and "blocks.0.attn:1" in msg  # what exists, where it lives
    with pytest.raises(tl.LookupKeyError, match="Did you mean 'pattern'"):
        trace.modules["blocks.0.attn"].facets["patern"]


def test_find_facets_lists_every_call_with_structure_in_order():
    model, args, _ = build(get("tiny_transformer_2block"))
    found = find_facets(tl.trace(model, *args))
    assert list(found) == ["blocks.0:1", "blocks.0.attn:1", "blocks.1:1", "blocks.1.attn:1"]
    assert list(find_facets(tl.trace(model, *args), "attention")) == [
        "blocks.0.attn:1", "blocks.1.attn:1"]


def test_structure_is_found_without_payloads_and_values_say_what_is_missing():
    model, args, _ = build(get("tiny_transformer_2block"))
    trace = tl.trace(model, *args, save=False)
    f = trace.modules["blocks.0.attn"].facets
    assert "pattern" in f
    with pytest.raises(tl.PayloadError, match="save=True"):
        f["pattern"]


def test_a_reconstruction_that_does_not_reproduce_the_output_raises():
    model, args, kwargs = build(get("gpt2_tiny"))
    trace = tl.trace(model, *args)
    sdpa = trace.modules["transformer.h.0.attn"].facets.info["core_op"]
    op = trace.op_at_call(sdpa)
    op.payload = op.payload + 1.0  # as if the call did something lens does not model
    with pytest.raises(FacetError, match="pattern @ v differs"):
        trace.modules["transformer.h.0.attn"].facets["pattern"]


def test_facet_values_are_cached_until_a_payload_they_come_from_changes():
    model, args, _ = build(get("custom_attention"))
    trace = tl.trace(model, *args)
    q = trace.facets["q"]
    assert trace.facets["q"] is q  # cached
    soft = trace.op_at_call(trace.facets.info["core_op"])  # the softmax: the pattern
    soft.payload = torch.zeros_like(soft.payload)
    assert torch.equal(trace.facets["pattern"], torch.zeros_like(soft.payload))
    assert torch.equal(trace.facets["q"], q)


def test_multihead_attention_with_masks_and_time_major_inputs():
    torch.manual_seed(0)

    class Cross(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(12, 3, kdim=12, vdim=12)

        def forward(self, x, mem, pad, causal):
            return self.attn(x, mem, mem, key_padding_mask=pad, attn_mask=causal)[0]

    model = Cross().eval()
    x, mem = torch.randn(4, 2, 12), torch.randn(4, 2, 12)  # [seq, batch, dim]
    pad = torch.tensor([[False, False, False, True], [False] * 4])
    causal = torch.ones(4, 4, dtype=torch.bool).triu(1)  # True: may not attend
    trace = tl.trace(model, x, mem, pad, causal)
    f = trace.modules["attn"].facets
    at = model.attn
    wq, wk, wv = at.in_proj_weight.chunk(3)
    bq, bk, bv = at.in_proj_bias.chunk(3)
    with torch.no_grad():
        q = _truth.heads((x @ wq.t() + bq).transpose(0, 1), 3)
        k = _truth.heads((mem @ wk.t() + bk).transpose(0, 1), 3)
        v = _truth.heads((mem @ wv.t() + bv).transpose(0, 1), 3)
        keep = ~causal[None, None] & ~pad[:, None, None, :]
        want = _truth.attend(q, k, v, keep=keep)
        _, weights = at(x, mem, mem, key_padding_mask=pad, attn_mask=causal)
    for key in ("q", "k", "v", "pattern", "z"):
        assert torch.allclose(f[key], want[key], atol=1e-6), key
    assert torch.allclose(f["pattern"].mean(1), weights, atol=1e-6)  # the module's own
    out = f["result"].sum(1) + at.out_proj.bias
    assert torch.allclose(out, trace.output.transpose(0, 1), atol=1e-6)


def test_loaded_traces_have_the_same_facets(tmp_path):
    model, args, kwargs = build(get("llama_tiny"))
    trace = tl.trace(model, *args)
    tl.save(trace, tmp_path / "t")
    loaded = tl.load(tmp_path / "t")
    for addr in ("model.layers.0.self_attn", "model.layers.1"):
        a, b = trace.modules[addr].facets, loaded.modules[addr].facets
        assert list(a) == list(b)
        for key in a:
            assert torch.equal(a[key], b[key]), key
