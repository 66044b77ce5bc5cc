"""Hand-written attention for the ground truth of facet tests: plain torch from each
module's weights and its input (caught with a forward pre-hook), no lens code."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


def catch(module: nn.Module, model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Run ``model`` once; the first call's input args/kwargs and output of ``module``."""
    seen: dict[str, Any] = {}

    def pre(m: nn.Module, a: tuple, kw: dict) -> None:
        seen.setdefault("args", a)
        seen.setdefault("kwargs", kw)

    def post(m: nn.Module, a: tuple, kw: dict, out: Any) -> None:
        seen.setdefault("out", out)

    h1 = module.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = module.register_forward_hook(post, with_kwargs=True)
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        h1.remove()
        h2.remove()
    return seen


def heads(t: Tensor, n: int) -> Tensor:
    """[batch, seq, n*d] -> [batch, n, seq, d]."""
    b, s, e = t.shape
    return t.reshape(b, s, n, e // n).transpose(1, 2)


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, causal: bool = False,
           keep: Tensor | None = None) -> dict[str, Tensor]:
    """scores, pattern, z; ``keep``: bool mask broadcast to scores (True = attend)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    n_q, n_k = scores.shape[-2:]
    if causal:
        scores = scores.masked_fill(~torch.ones(n_q, n_k, dtype=torch.bool).tril(),
                                    float("-inf"))
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    pattern = scores.softmax(-1)
    return {"q": q, "k": k, "v": v, "scores": scores, "pattern": pattern, "z": pattern @ v}


def per_head(z: Tensor, weight_in_out: Tensor) -> Tensor:
    """Each head's share of an output projection with weight ``[in, out]``:
    ``[batch, head, seq, out]``."""
    n, d = z.shape[1], z.shape[3]
    return torch.stack([z[:, h] @ weight_in_out[h * d:(h + 1) * d] for h in range(n)], dim=1)


def rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def gpt2(model: nn.Module, args: tuple, kwargs: dict, layer: int) -> dict[str, Tensor]:
    attn = model.transformer.h[layer].attn
    seen = catch(attn, model, args, kwargs)
    x = seen["args"][0] if seen["args"] else seen["kwargs"]["hidden_states"]
    n, e = model.config.n_head, model.config.n_embd
    qkv = x @ attn.c_attn.weight + attn.c_attn.bias  # Conv1D: weight is [in, out]
    q, k, v = (heads(t, n) for t in qkv.split(e, dim=-1))
    found = attend(q, k, v, causal=True)
    found["result"] = per_head(found["z"], attn.c_proj.weight)
    found["_bias"], found["_out"] = attn.c_proj.bias, _first(seen["out"])
    return found


def bert(model: nn.Module, args: tuple, kwargs: dict, layer: int) -> dict[str, Tensor]:
    lay = model.encoder.layer[layer]
    sa = lay.attention.self
    seen = catch(sa, model, args, kwargs)
    x = seen["args"][0] if seen["args"] else seen["kwargs"]["hidden_states"]
    n = model.config.num_attention_heads
    q, k, v = (heads(lin(x), n) for lin in (sa.query, sa.key, sa.value))
    keep = kwargs["attention_mask"].bool()[:, None, None, :]
    found = attend(q, k, v, keep=keep)
    dense = lay.attention.output.dense
    found["result"] = per_head(found["z"], dense.weight.t())
    out = catch(dense, model, args, kwargs)["out"]
    found["_bias"], found["_out"] = dense.bias, out
    return found


def llama(model: nn.Module, args: tuple, kwargs: dict, layer: int) -> dict[str, Tensor]:
    sa = model.model.layers[layer].self_attn
    seen = catch(sa, model, args, kwargs)
    x = seen["args"][0] if seen["args"] else seen["kwargs"]["hidden_states"]
    cos, sin = catch(model.model.rotary_emb, model, args, kwargs)["out"]
    cfg = model.config
    n, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    q0, k0, v = heads(sa.q_proj(x), n), heads(sa.k_proj(x), n_kv), heads(sa.v_proj(x), n_kv)
    cos, sin = cos[:, None], sin[:, None]
    q = q0 * cos + rotate_half(q0) * sin
    k = k0 * cos + rotate_half(k0) * sin
    rep = n // n_kv
    found = attend(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), causal=True)
    found.update(k=k, v=v, k_expanded=k.repeat_interleave(rep, 1),
                 v_expanded=v.repeat_interleave(rep, 1), q_pre_rotary=q0, k_pre_rotary=k0)
    found["result"] = per_head(found["z"], sa.o_proj.weight.t())
    found["_bias"], found["_out"] = None, catch(sa.o_proj, model, args, kwargs)["out"]
    return found


def vit(model: nn.Module, args: tuple, kwargs: dict, layer: int) -> dict[str, Tensor]:
    at = model.layers[layer].attention
    seen = catch(at, model, args, kwargs)
    x = seen["args"][0] if seen["args"] else seen["kwargs"]["hidden_states"]
    n = model.config.num_attention_heads
    q, k, v = (heads(lin(x), n) for lin in (at.q_proj, at.k_proj, at.v_proj))
    found = attend(q, k, v)
    found["result"] = per_head(found["z"], at.o_proj.weight.t())
    found["_bias"], found["_out"] = at.o_proj.bias, catch(at.o_proj, model, args, kwargs)["out"]
    return found


def mixer(model: nn.Module, args: tuple, kwargs: dict, mix: nn.Module) -> dict[str, Tensor]:
    """The zoo's hand-written attention class (``Mixer``)."""
    x = catch(mix, model, args, kwargs)["args"][0]
    q, k, v = (heads(lin(x), mix.heads) for lin in (mix.q, mix.k, mix.v))
    found = attend(q, k, v, scale=mix.scale, causal=mix.causal)
    found["result"] = per_head(found["z"], mix.out.weight.t())
    found["_bias"], found["_out"] = mix.out.bias, catch(mix, model, args, kwargs)["out"]
    return found


def mha(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Tensor]:
    at = model.attn
    x = catch(at, model, args, kwargs)["args"][0]  # batch first
    n = at.num_heads
    wq, wk, wv = at.in_proj_weight.chunk(3)
    bq, bk, bv = at.in_proj_bias.chunk(3)
    q, k, v = (heads(x @ w.t() + b, n) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    found = attend(q, k, v)
    found["result"] = per_head(found["z"], at.out_proj.weight.t())
    found["_bias"], found["_out"] = at.out_proj.bias, catch(at, model, args, kwargs)["out"][0]
    return found


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out
