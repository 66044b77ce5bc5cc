"""``nn.MultiheadAttention``: one opaque ``multi_head_attention_forward`` op.

Its facets are reconstructed from the op's recorded inputs (query, key, value, masks)
and the module's weights (named in the op's argument template), then checked against
the op's output. Every facet is edited at that op: the call is recomputed from its
inputs with the facet edited, and the change is added to the recorded output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..capture.fired import fired_on
from ..capture.records import ParamRef, Ref
from ..capture.template import template_refs
from ..errors import FacetError
from ._graph import close, max_error, param, payload, records, template_slots, token
from ._registry import (
    Carrier,
    FacetGroup,
    Owner,
    StructureIndex,
    edit_lost,
    edited_value,
    owner_of,
    rewritten,
)

if TYPE_CHECKING:
    from ..tracing import Trace

Edit = Callable[[Tensor], Tensor]
MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
            "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p",
            "out_proj_weight", "out_proj_bias", "training", "key_padding_mask",
            "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
            "k_proj_weight", "v_proj_weight", "static_k", "static_v",
            "average_attn_weights", "is_causal")
NAMES = ("q", "k", "v", "scores", "pattern", "z", "result")


@dataclass(frozen=True)
class MhaSpec:
    owner: Owner
    out: int  # the op holding the attention output [L, N, E]
    inputs: tuple[int, ...]  # its activation inputs (query, key, value, masks), in order
    slots: tuple[str, ...]
    heads: int
    weights: tuple[str | None, ...]  # w_q, w_k, w_v, b_q/k/v source, w_o, b_o (see _weights)
    separate: bool


def detect_mha(trace: Trace, rec: Any, index: StructureIndex, seen: set[Owner]) -> None:
    bound = {n: rec.args[i] for i, n in enumerate(MHA_ARGS) if i < len(rec.args)}
    bound.update(rec.kwargs)
    owner = owner_of(rec)
    why = _unsupported(bound, records(trace), rec)
    if why:
        index.note(owner, f"nn.MultiheadAttention-style op #{rec.call_index} {why}")
        return
    if owner in seen:
        return
    seen.add(owner)
    names = [_name(bound.get(n)) for n in ("in_proj_weight", "q_proj_weight",
                                           "k_proj_weight", "v_proj_weight",
                                           "in_proj_bias", "out_proj_weight",
                                           "out_proj_bias")]
    ins = tuple(r.op for t in (*rec.args, *rec.kwargs.values()) for r in template_refs(t))
    spec = MhaSpec(owner, rec.call_index, ins, template_slots(rec, MHA_ARGS),
                   int(bound["num_heads"]), tuple(names),
                   bool(bound.get("use_separate_proj_weight", False)))
    index.add(MhaGroup(spec), rec.call_index)


def _name(t: Any) -> str | None:
    return t.name if isinstance(t, ParamRef) else None


def _unsupported(bound: dict[str, Any], recs: Any, rec: Any) -> str:
    for n in ("bias_k", "bias_v", "static_k", "static_v"):
        if bound.get(n) is not None:
            return f"uses {n}, which lens does not model, so it has no facets"
    if bound.get("add_zero_attn"):
        return "uses add_zero_attn, which lens does not model, so it has no facets"
    if bound.get("training", True) and bound.get("dropout_p", 0.0):
        return "applies attention dropout (training mode), so its facets cannot be rebuilt"
    q = bound.get("query")
    if not isinstance(q, Ref) or len(recs[q.op].shape) != 3:
        return "has unbatched inputs, which lens does not model, so it has no facets"
    for n in ("in_proj_weight", "out_proj_weight"):
        t = bound.get(n)
        if t is not None and not isinstance(t, ParamRef):
            return f"takes {n} as a computed tensor, so it has no facets"
    return ""


class MhaWeights:
    def __init__(self, trace: Trace, spec: MhaSpec) -> None:
        w_in, w_q, w_k, w_v, b_in, w_o, b_o = (
            param(trace, n) if n is not None else None for n in spec.weights)
        self.w: tuple[Tensor | None, ...]
        self.b: tuple[Tensor | None, ...]
        if spec.separate:
            self.w = (w_q, w_k, w_v)
        else:
            assert w_in is not None
            self.w = tuple(w_in.chunk(3))
        self.b = tuple(b_in.chunk(3)) if b_in is not None else (None, None, None)
        assert w_o is not None
        self.w_o, self.b_o = w_o, b_o
        self.heads = spec.heads


def run(wts: MhaWeights, named: dict[str, Tensor], edit: tuple[str, Edit] | None = None
        ) -> dict[str, Tensor]:
    """Recompute the call (``F.multi_head_attention_forward`` without dropout), applying
    ``edit = (facet, fn)`` on the way; returns every facet and ``out`` ``[L, N, E]``."""
    query, key, value = named["query"], named["key"], named["value"]
    h = wts.heads
    out: dict[str, Tensor] = {}

    def stage(name: str, t: Tensor) -> Tensor:
        if edit is not None and edit[0] == name:
            t = edit[1](t)
        out[name] = t
        return t

    def heads(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
        y = F.linear(x, w, b)  # type: ignore[arg-type]
        return rearrange(y, "s b (h d) -> b h s d", h=h)

    q = stage("q", heads(query, wts.w[0], wts.b[0]))
    k = stage("k", heads(key, wts.w[1], wts.b[1]))
    v = stage("v", heads(value, wts.w[2], wts.b[2]))
    n_batch, _, n_q, d = q.shape
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
    mask = named.get("attn_mask")
    if mask is not None:
        mask = mask.reshape(-1, mask.shape[-2], mask.shape[-1])
        mask = mask.reshape(n_batch, h, *mask.shape[-2:]) if mask.shape[0] > 1 else mask[0]
        scores = _masked(scores, mask)
    kpm = named.get("key_padding_mask")
    if kpm is not None:
        scores = _masked(scores, kpm[:, None, None, :])
    scores = stage("scores", scores)
    pattern = stage("pattern", torch.softmax(scores, dim=-1).nan_to_num(0.0))
    z = stage("z", pattern @ v)
    w_o = rearrange(wts.w_o, "e (h d) -> e h d", h=h).to(z.dtype)
    result = stage("result", torch.einsum("nhld,ehd->nhle", z, w_o))
    total = result.sum(1) + (wts.b_o if wts.b_o is not None else 0)
    out["out"] = total.permute(1, 0, 2)
    return out


def _masked(scores: Tensor, mask: Tensor) -> Tensor:
    if mask.dtype == torch.bool:  # True: not allowed to attend
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask


class MhaGroup(FacetGroup):
    kind = "attention"

    def __init__(self, spec: MhaSpec) -> None:
        self.spec = spec
        self.owner = spec.owner
        self._memo: tuple[tuple[int, ...], dict[str, Tensor]] | None = None

    def names(self) -> tuple[str, ...]:
        return NAMES

    def sources(self) -> tuple[int, ...]:
        return (*self.spec.inputs, self.spec.out)

    def head_dim(self, name: str) -> int | None:
        return 1

    def info(self) -> dict[str, Any]:
        return {"kind": "multi_head_attention_forward", "n_heads": self.spec.heads,
                "n_kv_heads": self.spec.heads, "core_op": self.spec.out}

    def describe(self) -> str:
        return f"attention (nn.MultiheadAttention, {self.spec.heads} heads)"

    def _named(self, trace: Trace) -> dict[str, Tensor]:
        vals = [payload(trace, ci, f"of {self.owner.name()}") for ci in self.spec.inputs]
        return dict(zip(self.spec.slots, vals, strict=False))

    def value(self, trace: Trace, name: str) -> Tensor:
        hit = edited_value(trace, self.spec.out, self.owner, name)
        if hit is not None:
            return hit
        if rewritten(trace, self.spec.out, self.owner):
            raise FacetError(edit_lost(self.owner, name, self.spec.out))
        tok = token(trace, self.sources())
        if self._memo is not None and self._memo[0] == tok:
            return self._memo[1][name]
        with torch.no_grad():
            found = run(MhaWeights(trace, self.spec), self._named(trace))
            got = payload(trace, self.spec.out, f"{name!r} of {self.owner.name()}")
        if not fired_on(records(trace)[self.spec.out]) and not close(found["out"], got):
            raise FacetError(
                f"Rebuilding the attention of {self.owner.name()} (op #{self.spec.out}) from "
                f"its recorded inputs and weights does not reproduce its output (off by "
                f"{max_error(found['out'], got):.3g}); its facets are not available.")
        self._memo = (tok, found)
        return found[name]

    def carrier(self, trace: Trace, name: str) -> Carrier | None:
        return Carrier(self.spec.out, MhaRewrite(MhaWeights(trace, self.spec), self.spec.slots))



class MhaRewrite:
    def __init__(self, weights: MhaWeights, slots: tuple[str, ...]) -> None:
        self.weights = weights
        self.slots = slots

    def apply(self, value: Tensor, inputs: list[Tensor], name: str, fn: Edit
              ) -> tuple[Tensor, dict[str, Tensor]]:
        named = dict(zip(self.slots, inputs, strict=False))
        base = run(self.weights, named)["out"]
        edited = run(self.weights, named, (name, fn))
        new = value + (edited.pop("out") - base).to(value.dtype)
        return new, edited
