"""Residual-stream facets of transformer blocks equal what plain hooks see at the block
and its attention and MLP; TransformerLens names are aliases, off unless asked for."""

from __future__ import annotations

import pytest
import torch

import lens as tl
from tests.facets._truth import catch
from tests.helpers import build
from tests.models import get

BLOCKS = {  # zoo case: (block, attention, mlp)
    "gpt2_tiny": ("transformer.h.1", "transformer.h.1.attn", "transformer.h.1.mlp"),
    "llama_tiny": ("model.layers.0", "model.layers.0.self_attn", "model.layers.0.mlp"),
    "vit_tiny": ("layers.1", None, "layers.1.mlp"),
    "tiny_transformer_2block": ("blocks.0", "blocks.0.attn", "blocks.0.mlp"),
    "albert_shared": ("block", "block.attn", "block.mlp"),
}


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_facets_equal_hooked_values(name):
    model, args, kwargs = build(get(name))
    block, attn, mlp = BLOCKS[name]
    seen = catch(model.get_submodule(block), model, args, kwargs)
    x = seen["args"][0] if seen["args"] else seen["kwargs"]["hidden_states"]
    trace = tl.trace(model, *args, input_kwargs=kwargs)
    f = trace.modules[block].calls[0].facets
    assert "residual" in f.kinds
    assert torch.allclose(f["resid_pre"], x)
    assert torch.allclose(f["resid_post"], _first(seen["out"]), atol=1e-6)
    mlp_out = _first(catch(model.get_submodule(mlp), model, args, kwargs)["out"])
    assert torch.allclose(f["mlp_out"], mlp_out, atol=1e-6)
    if attn is not None:
        attn_out = _first(catch(model.get_submodule(attn), model, args, kwargs)["out"])
        assert torch.allclose(f["attn_out"], attn_out, atol=1e-6)
    assert torch.allclose(f["resid_mid"], f["resid_pre"] + f["attn_out"], atol=1e-6)
    assert torch.allclose(f["resid_post"], f["resid_mid"] + f["mlp_out"], atol=1e-6)


def test_post_norm_blocks_follow_the_stream_through_layer_norm():
    model, args, kwargs = build(get("bert_tiny"))
    lay = model.encoder.layer[0]
    trace = tl.trace(model, *args, input_kwargs=kwargs)
    f = trace.modules["encoder.layer.0"].facets
    x = catch(lay, model, args, kwargs)["args"][0]
    attn_out = catch(lay.attention.output.dropout, model, args, kwargs)["out"]
    mid_normed = _first(catch(lay.attention, model, args, kwargs)["out"])
    mlp_out = catch(lay.output.dropout, model, args, kwargs)["out"]
    assert torch.allclose(f["resid_pre"], x)
    assert torch.allclose(f["attn_out"], attn_out, atol=1e-6)
    assert torch.allclose(f["resid_mid"], x + attn_out, atol=1e-6)
    assert torch.allclose(f["mlp_out"], mlp_out, atol=1e-6)
    assert torch.allclose(f["resid_post"], mid_normed + mlp_out, atol=1e-6)


def test_whole_models_and_single_residual_modules_are_not_blocks():
    model, args, kwargs = build(get("bert_tiny"))
    trace = tl.trace(model, *args, input_kwargs=kwargs)
    assert "residual" not in trace.modules["encoder"].facets.kinds  # four adds
    assert list(trace.modules["encoder.layer.0.attention.output"].facets) == []  # one add
    model, args, _ = build(get("tiny_transformer_2block"))
    assert list(tl.trace(model, *args).facets) == []


def test_transformer_lens_names_are_off_unless_asked_for():
    model, args, _ = build(get("tiny_transformer_2block"))
    trace = tl.trace(model, *args)
    with pytest.raises(tl.LookupKeyError):
        trace["blocks.0.attn.hook_pattern"]
    assert trace.with_aliases("transformer_lens") is trace
    view = trace["blocks.0.attn.hook_pattern"]
    assert torch.equal(view.out, trace.modules["blocks.0.attn"].facets["pattern"])
    with pytest.raises(tl.LookupKeyError, match="blocks.0.attn.hook_pattern"):
        trace["blocks.0.attn.hook_patern"]
    trace.with_aliases(None)
    with pytest.raises(tl.LookupKeyError):
        trace["blocks.0.attn.hook_pattern"]


@pytest.mark.parametrize("name,block,attn", [
    ("gpt2_tiny", "transformer.h.1", "transformer.h.1.attn"),
    ("llama_tiny", "model.layers.1", "model.layers.1.self_attn"),
    ("tiny_transformer_2block", "blocks.1", "blocks.1.attn"),
])
def test_transformer_lens_aliases_name_the_facets_in_its_layout(name, block, attn):
    model, args, kwargs = build(get(name))
    trace = tl.trace(model, *args, input_kwargs=kwargs).with_aliases("transformer_lens")
    fb, fa = trace.modules[block].facets, trace.modules[attn].facets
    for hook in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
        op = trace[f"blocks.1.hook_{hook}"]
        assert isinstance(op, tl.Op)
        assert torch.equal(op.out, fb[hook])
    for hook, ours in (("hook_z", "z"), ("hook_v", "v"), ("hook_result", "result")):
        got = trace[f"blocks.1.attn.{hook}"].out
        assert torch.equal(got, fa[ours].transpose(1, 2))  # [batch, pos, head, d]
    assert torch.equal(trace["blocks.1.attn.hook_pattern"].out, fa["pattern"])
    assert torch.equal(trace["blocks.1.attn.hook_attn_scores"].out, fa["scores"])
    if name == "llama_tiny":  # rotary: hook_q before the rotation, hook_rot_q after
        assert torch.equal(trace["blocks.1.attn.hook_q"].out, fa["q_pre_rotary"].transpose(1, 2))
        assert torch.equal(trace["blocks.1.attn.hook_rot_k"].out, fa["k"].transpose(1, 2))
        assert trace["blocks.1.attn.hook_k"].out.shape[2] == 2  # kv heads, as TL's GQA
    else:
        assert torch.equal(trace["blocks.1.attn.hook_q"].out, fa["q"].transpose(1, 2))
