"""trace.residual equals a hand computation: the stream caught with plain forward hooks on
the blocks, embeddings, final norm and unembedding, pushed through hand-written norm math
(final-norm weights and biases randomized so that folding them in is checked)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lens as tl
from tests.helpers import build
from tests.models import get

pytest.importorskip("transformers")

# zoo case: blocks, attention, mlp, final norm, unembedding, token / position embedding
PARTS = {
    "gpt2_tiny": ("transformer.h", "attn", "mlp", "transformer.ln_f", "lm_head",
                  "transformer.wte", "transformer.wpe"),
    "llama_tiny": ("model.layers", "self_attn", "mlp", "model.norm", "lm_head",
                   "model.embed_tokens", None),
    "mistral_tiny": ("model.layers", "self_attn", "mlp", "model.norm", "lm_head",
                     "model.embed_tokens", None),
}


def _build(name):
    if name != "mistral_tiny":
        return build(get(name))
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                        max_position_embeddings=64, use_cache=False, bos_token_id=0,
                        eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    return MistralForCausalLM(cfg).eval(), (ids,), {}


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _run(name):
    """The model (final norm randomized), its inputs, a trace, and what plain hooks saw:
    ``pre``: each block's input, plus the final norm's input; component outputs."""
    model, args, kwargs = _build(name)
    blocks, attn, mlp, norm, _, tok, pos = PARTS[name]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.get_submodule(norm).parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1 if p.ndim else 0))
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def keep(key, pre=False):
        def hook(m, a, kw, out=None):
            x = (a[0] if a else kw["hidden_states"]) if pre else _first(out)
            seen[key] = x.detach().clone()
        return hook

    layers = model.get_submodule(blocks)
    for i, block in enumerate(layers):
        handles.append(block.register_forward_pre_hook(keep(f"{i}_pre", True),
                                                       with_kwargs=True))
        for part, key in ((attn, "attn_out"), (mlp, "mlp_out")):
            handles.append(block.get_submodule(part).register_forward_hook(
                keep(f"{i}_{key}"), with_kwargs=True))
    handles.append(model.get_submodule(norm).register_forward_pre_hook(
        keep("final_post", True), with_kwargs=True))
    for mod, key in ((tok, "embed"), (pos, "pos_embed")):
        if mod is not None:
            handles.append(model.get_submodule(mod).register_forward_hook(
                keep(key), with_kwargs=True))
    try:
        with torch.no_grad():
            logits = model(*args, **kwargs).logits
    finally:
        for h in handles:
            h.remove()
    trace = tl.trace(model, *args, input_kwargs=kwargs)
    return model, trace, seen, logits, len(layers)


def _final_norm(model, name, x):
    """The final norm by hand: torch's layer_norm for GPT-2, RMS written out for Llama
    and Mistral."""
    norm = model.get_submodule(PARTS[name][3])
    if name == "gpt2_tiny":
        return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)
    eps = norm.variance_epsilon
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight


def _scale(model, name, x):
    """What TransformerLens's ln_final.hook_scale holds for the final residual ``x``."""
    norm = model.get_submodule(PARTS[name][3])
    if name == "gpt2_tiny":
        x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    return (x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()


def _center(model, name, x):
    return x - x.mean(-1, keepdim=True) if name == "gpt2_tiny" else x


@pytest.fixture(scope="module", params=sorted(PARTS))
def case(request):
    return request.param, *_run(request.param)


def test_accumulated_is_each_block_input_then_the_final_residual(case):
    name, model, trace, seen, _, n = case
    acc = trace.residual.accumulated()
    assert acc.labels == (*(f"{i}_pre" for i in range(n)), "final_post")
    for row, key in zip(acc.tensor, acc.labels, strict=True):
        assert torch.allclose(row, seen[key], atol=1e-6), key
    first = trace.residual.accumulated(1)
    assert first.labels == ("0_pre", "1_pre")
    assert trace.residual.accumulated(-1).labels == acc.labels[:n]
    at = trace.residual.accumulated(pos_slice=[1, 3])
    assert torch.equal(at.tensor, acc.tensor[:, :, [1, 3]])
    assert torch.equal(trace.residual.accumulated(pos_slice=-1).tensor, acc.tensor[:, :, -1])
    final = seen["final_post"]
    scaled = trace.residual.accumulated(apply_ln=True)
    hand = _center(model, name, acc.tensor) / _scale(model, name, final)
    assert torch.allclose(scaled.tensor, hand, atol=1e-5)


def test_decompose_gives_hooked_components_that_sum_to_the_final_residual(case):
    name, model, trace, seen, _, n = case
    dec = trace.residual.decompose()
    embeds = ("embed", "pos_embed") if PARTS[name][6] else ("embed",)
    parts = [f"{i}_{k}" for i in range(n) for k in ("attn_out", "mlp_out")]
    assert dec.labels == (*embeds, *parts)
    final = seen["final_post"]
    for key in dec.labels:
        assert torch.allclose(dec.get(key), seen[key].expand(final.shape), atol=1e-6), key
    assert torch.allclose(dec.tensor.sum(0), final, atol=1e-5)
    upto = trace.residual.decompose(1)
    assert torch.allclose(upto.tensor.sum(0), seen["1_pre"], atol=1e-5)
    scaled = trace.residual.decompose(apply_ln=True)
    hand = _center(model, name, dec.tensor) / _scale(model, name, final)
    assert torch.allclose(scaled.tensor, hand, atol=1e-5)
    norm = model.get_submodule(PARTS[name][3])  # rows sum to the norm before its weight
    before_weight = _final_norm(model, name, final) - getattr(norm, "bias", 0)
    assert torch.allclose(scaled.tensor.sum(0) * norm.weight, before_weight, atol=1e-4)


def test_logit_lens_pushes_each_boundary_through_the_final_norm_and_unembedding(case):
    name, model, trace, seen, logits, n = case
    lens_ = trace.residual.logit_lens()
    unembed = model.get_submodule(PARTS[name][4])
    for row, key in zip(lens_.tensor, lens_.labels, strict=True):
        hand = _final_norm(model, name, seen[key]) @ unembed.weight.T
        assert torch.allclose(row, hand, atol=1e-4), key
    assert torch.allclose(lens_.tensor[-1], logits, atol=1e-4)
    last = trace.residual.logit_lens(pos_slice=-1)
    assert torch.allclose(last.tensor, lens_.tensor[:, :, -1], atol=1e-6)


def test_direct_logit_attribution_sums_to_the_models_logit(case):
    name, model, trace, seen, logits, n = case
    dla = trace.residual.direct_logit_attribution(7)
    assert dla.labels[-1] == "bias" and dla.tensor.shape == (len(dla.labels), 2, 8)
    assert torch.allclose(dla.tensor.sum(0), logits[..., 7], atol=1e-4)
    norm = model.get_submodule(PARTS[name][3])
    w_u = model.get_submodule(PARTS[name][4]).weight
    final = seen["final_post"]
    mlp = _center(model, name, seen["1_mlp_out"]) / _scale(model, name, final)
    assert torch.allclose(dla.get("1_mlp_out"), mlp @ (norm.weight * w_u[7]), atol=1e-5)
    bias = norm.bias @ w_u[7] if name == "gpt2_tiny" else torch.tensor(0.0)
    assert torch.allclose(dla.get("bias"), bias.expand(2, 8), atol=1e-6)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(3))
    per_pos = trace.residual.direct_logit_attribution(ids)
    assert torch.allclose(per_pos.tensor.sum(0), logits.gather(-1, ids[..., None])[..., 0],
                          atol=1e-4)
    several = trace.residual.direct_logit_attribution([7, 11], pos_slice=2)
    assert several.tensor.shape == (len(dla.labels), 2, 2)
    assert torch.allclose(several.tensor.sum(0), logits[:, 2, [7, 11]], atol=1e-4)
    one_each = trace.residual.direct_logit_attribution(torch.tensor([7, 11]), pos_slice=2)
    assert torch.allclose(one_each.tensor.sum(0), logits[[0, 1], 2, [7, 11]], atol=1e-4)


def test_bad_arguments_say_what_was_wrong(case):
    _, _, trace, _, _, n = case
    r = trace.residual
    with pytest.raises(tl.LookupKeyError, match=f"0 .. {n}"):
        r.accumulated(n + 1)
    with pytest.raises(tl.ArgumentTypeError, match="integer token ids"):
        r.direct_logit_attribution(torch.tensor([1.5]))
    with pytest.raises(tl.LookupKeyError, match="outside the unembedding's vocabulary"):
        r.direct_logit_attribution(100)
    with pytest.raises(tl.LookupKeyError, match="out of range"):
        r.accumulated(pos_slice=8)
    with pytest.raises(tl.LookupKeyError, match="No row 'embedd'"):
        r.decompose().get("embedd")


def _keep_input(seen, key):
    def hook(m, a, kw=None):
        seen[key] = (a[0] if a else kw["hidden_states"]).detach().clone()
    return hook


@pytest.mark.parametrize("name", ["tiny_transformer_2block", "albert_shared"])
def test_hand_written_models_with_biases_and_a_shared_block(name):
    """Position embeddings from a sliced parameter, an unembedding bias, a final
    LayerNorm with a bias, and (ALBERT) one block called three times."""
    model, args, _ = build(get(name))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in (*model.ln_f.parameters(), *model.unembed.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    seen = {}
    h = model.ln_f.register_forward_pre_hook(_keep_input(seen, "final"))
    try:
        with torch.no_grad():
            logits = model(*args)
    finally:
        h.remove()
    r = tl.trace(model, *args).residual
    n = 3 if name == "albert_shared" else 2
    dec = r.decompose()
    assert dec.labels[:2] == ("embed", "pos_embed") and len(dec.labels) == 2 + 2 * n
    seq = args[0].shape[1]
    with torch.no_grad():
        assert torch.allclose(dec.get("embed"), model.embed(args[0]))
        assert torch.allclose(dec.get("pos_embed"), model.pos[:seq].expand_as(seen["final"]))
    assert torch.allclose(dec.tensor.sum(0), seen["final"], atol=1e-5)
    assert torch.allclose(r.logit_lens().tensor[-1], logits, atol=1e-4)
    dla = r.direct_logit_attribution(4)
    assert torch.allclose(dla.tensor.sum(0), logits[..., 4], atol=1e-4)
    bias = model.ln_f.bias @ model.unembed.weight[4]
    if model.unembed.bias is not None:
        bias = bias + model.unembed.bias[4]
    assert torch.allclose(dla.get("bias"), bias.expand(2, seq), atol=1e-5)


def test_post_norm_blocks_accumulate_but_do_not_decompose():
    model, args, kwargs = build(get("bert_tiny"))
    seen = {}
    h = model.encoder.layer[1].register_forward_pre_hook(_keep_input(seen, "1_pre"),
                                                         with_kwargs=True)
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        h.remove()
    r = tl.trace(model, *args, input_kwargs=kwargs).residual
    assert torch.allclose(r.accumulated().get("1_pre"), seen["1_pre"])
    with pytest.raises(tl.FacetError, match="layer_norm.*do not simply add up"):
        r.decompose()
    with pytest.raises(tl.FacetError, match="no unembedding was found"):
        r.logit_lens()


def test_models_without_an_unembedding_still_decompose():
    model, args, kwargs = build(get("vit_tiny"))
    seen = {}
    h = model.layernorm.register_forward_pre_hook(_keep_input(seen, "final"))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        h.remove()
    r = tl.trace(model, *args, input_kwargs=kwargs).residual
    dec = r.decompose()
    assert dec.labels[:2] == ("embed", "pos_embed")  # patches + class token, position param
    assert torch.allclose(dec.tensor.sum(0), seen["final"], atol=1e-5)
    assert torch.allclose(r.accumulated().get("final_post"), seen["final"])
    with pytest.raises(tl.FacetError, match="no unembedding.*'layernorm'"):
        r.direct_logit_attribution(0)


def test_a_model_without_residual_blocks_is_told_so():
    model, args, kwargs = build(get("mha"))
    r = tl.trace(model, *args, input_kwargs=kwargs).residual
    assert "no residual blocks" in repr(r)
    with pytest.raises(tl.FacetError, match="no residual block was found"):
        r.accumulated()


def test_a_fork_is_read_with_its_edits():
    model, args, _ = build(get("gpt2_tiny"))
    trace = tl.trace(model, *args, intervention_ready=True)
    fork = trace.fork().intervene(tl.module("transformer.h.1.mlp"), tl.zero_ablate()).replay()
    h = model.transformer.h[1].mlp.register_forward_hook(lambda m, a, out: out * 0)
    try:
        with torch.no_grad():
            logits = model(*args).logits  # the same edit, by a plain hook
    finally:
        h.remove()
    dla = fork.residual.direct_logit_attribution(3)
    assert torch.equal(dla.get("1_mlp_out"), torch.zeros(2, 8))
    assert not torch.equal(trace.residual.decompose().get("1_mlp_out"), torch.zeros(2, 8, 32))
    assert torch.allclose(dla.tensor.sum(0), logits[..., 3], atol=1e-4)


def test_the_readme_example_runs_on_gpt2():
    model, (ids,), _ = build(get("gpt2_tiny"))
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text.split("## The residual stream", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope = {"tl": tl, "torch": torch, "model": model, "ids": ids, "token_id": 9}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["dec"].labels[:3] == ("embed", "pos_embed", "0_attn_out")
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.allclose(scope["dla"].tensor.sum(0), logits[..., 9], atol=1e-4)
