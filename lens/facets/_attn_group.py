"""Attention facet values (``q``, ``k``, ``v``, ``scores``, ``pattern``, ``z``, ``result``
...) and how each one is edited.

Layout (lens's): ``q``/``k``/``v``/``z`` are ``[batch, head, seq, d_head]`` (``k``/``v``
with the kv heads under grouped-query attention, ``k_expanded``/``v_expanded`` repeated
to the query heads), ``scores``/``pattern`` ``[batch, head, q_seq, k_seq]``, ``result``
``[batch, head, seq, d_model]`` (each head's share of the output projection, bias left
out: ``result.sum(1) + bias`` is the projection's output).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from torch import Tensor

from ..capture.fired import fired_on
from ..errors import FacetError
from ._graph import close, heads_changed, max_error, param, payload, records
from ._registry import Carrier, FacetGroup, edit_lost, edited_value, rewritten
from .attention import AttentionSpec, Fused, Projection

if TYPE_CHECKING:
    from ..tracing import Trace

Edit = Callable[[Tensor], Tensor]
_INSIDE_FUSED = ("scores", "pattern", "k_expanded", "v_expanded")


class AttentionGroup(FacetGroup):
    kind = "attention"

    def __init__(self, spec: AttentionSpec) -> None:
        self.spec = spec
        self.owner = spec.owner

    # ------------------------------------------------------------------ what exists
    def names(self) -> tuple[str, ...]:
        s = self.spec
        out = ["q", "k", "v", "scores", "pattern", "z"]
        if s.n_kv_heads != s.n_heads:
            out += ["k_expanded", "v_expanded"]
        if s.proj is not None:
            out.append("result")
        if s.q_pre_rotary is not None:
            out.append("q_pre_rotary")
        if s.k_pre_rotary is not None:
            out.append("k_pre_rotary")
        return tuple(out)

    def sources(self) -> tuple[int, ...]:
        s = self.spec
        found = [s.q, s.k, s.kt, s.v, s.k_rep, s.v_rep, s.scores, s.pattern, s.z,
                 s.fused.mask if s.fused else None, s.proj.x if s.proj else None,
                 s.proj.op if s.proj else None, s.q_pre_rotary, s.k_pre_rotary]
        return tuple(ci for ci in found if ci is not None)

    def head_dim(self, name: str) -> int | None:
        return 1

    def info(self) -> dict[str, Any]:
        s = self.spec
        return {"kind": "fused" if s.fused else "eager", "n_heads": s.n_heads,
                "n_kv_heads": s.n_kv_heads, "d_head": s.d_head,
                "causal": s.fused.causal if s.fused else None,
                "scale": s.fused.scale if s.fused else None,
                "core_op": s.core, "projection_op": s.proj.op if s.proj else None}

    def describe(self) -> str:
        s = self.spec
        kv = f", {s.n_kv_heads} kv heads" if s.n_kv_heads != s.n_heads else ""
        how = "fused scaled_dot_product_attention" if s.fused else "matmul-softmax-matmul"
        return f"attention ({how}, {s.n_heads} heads{kv}, d_head {s.d_head})"

    # ------------------------------------------------------------------ values
    def value(self, trace: Trace, name: str) -> Tensor:
        s = self.spec
        what = f"{name!r} of {s.owner.name()}"
        with torch.no_grad():
            derived = s.fused is not None and name in _INSIDE_FUSED
            if derived or name == "result":  # edited inside an op: read what the edit made
                carrier = s.proj.op if name == "result" and s.proj else s.core
                hit = edited_value(trace, carrier, s.owner, name)
                if hit is not None:
                    return hit
                if rewritten(trace, carrier, s.owner):
                    raise FacetError(edit_lost(s.owner, name, carrier))
            if name == "q":
                return payload(trace, s.q, what)
            if name == "k":
                if s.k is not None:
                    return payload(trace, s.k, what)
                return payload(trace, s.kt, what).transpose(-1, -2)  # type: ignore[arg-type]
            if name == "v":
                return payload(trace, s.v, what)
            if name in ("k_expanded", "v_expanded"):
                rep = s.k_rep if name == "k_expanded" else s.v_rep
                if rep is not None:
                    return payload(trace, rep, what)
                return _repeat(self.value(trace, name[0]), s.n_heads)
            if name == "z":
                return payload(trace, s.z, what)
            if name in ("scores", "pattern"):
                if s.fused is None:
                    return payload(trace, s.scores if name == "scores" else s.pattern, what)  # type: ignore[arg-type]
                return self._fused(trace, name)
            if name == "result":
                return self._result(trace)
            if name in ("q_pre_rotary", "k_pre_rotary"):
                ci = s.q_pre_rotary if name == "q_pre_rotary" else s.k_pre_rotary
                return payload(trace, ci, what)  # type: ignore[arg-type]
        raise KeyError(name)

    def _fused(self, trace: Trace, name: str) -> Tensor:
        s = self.spec
        f = s.fused
        assert f is not None
        q, k, v = (self.value(trace, n) for n in ("q", "k", "v"))
        mask = payload(trace, f.mask, f"the mask of {s.owner.name()}") if f.mask is not None \
            else None
        scores = fused_scores(q, _repeat(k, s.n_heads), mask, f)
        if name == "scores":
            return scores
        pattern = softmax(scores)
        if f.dropout == 0.0 and not fired_on(records(trace)[s.z]):  # (z edited: nothing to check)
            z = self.value(trace, "z")
            got = pattern @ _repeat(v, s.n_heads).to(pattern.dtype)
            if not close(got, z):
                raise FacetError(
                    f"The attention pattern of {s.owner.name()} was reconstructed from the "
                    f"recorded q, k, mask (causal={f.causal}, scale={f.scale}) of op "
                    f"#{s.core}, but pattern @ v differs from the op's output z by "
                    f"{max_error(got, z):.3g}. The call uses an option lens does not model; "
                    "read 'z' directly, or trace the model with eager attention.")
        return pattern

    def _result(self, trace: Trace) -> Tensor:
        s = self.spec
        p = s.proj
        assert p is not None
        x = payload(trace, p.x, f"'result' of {s.owner.name()}")
        split = HeadSplit.of(trace, s, p)
        rows = split.rows(x)
        out = payload(trace, p.op, f"'result' of {s.owner.name()}")
        got = rows.sum(1) + (split.bias if split.bias is not None else 0)
        edits = fired_on(records(trace)[p.op])
        if edits:
            raise FacetError(
                f"The output projection of {s.owner.name()} (op #{p.op}) was edited in this "
                f"trace ({', '.join(map(repr, edits))}), so its output is no longer the sum "
                "of per-head results and 'result' is not defined here. Read it from the "
                "source trace, or edit 'z' (each head's result is linear in its z).")
        if not close(got, out.reshape(got.shape)):
            raise FacetError(
                f"Splitting the output projection (op #{p.op}) of {s.owner.name()} per "
                f"head does not reproduce its output (off by "
                f"{max_error(got, out.reshape(got.shape)):.3g}); 'result' is not available "
                "for this layout.")
        return split.to_facet(rows)

    # ------------------------------------------------------------------ edits
    def carrier(self, trace: Trace, name: str) -> Carrier | None:
        s = self.spec
        direct = {"q": s.q, "v": s.v, "z": s.z, "q_pre_rotary": s.q_pre_rotary,
                  "k_pre_rotary": s.k_pre_rotary, "k_expanded": s.k_rep,
                  "v_expanded": s.v_rep, "scores": s.scores, "pattern": s.pattern}
        if name == "k":
            return Carrier(s.k) if s.k is not None else Carrier(s.kt, perm=(0, 1, 3, 2))  # type: ignore[arg-type]
        if direct.get(name) is not None:
            return Carrier(direct[name])  # type: ignore[arg-type]
        if name == "result" and s.proj is not None:
            return Carrier(s.proj.op, ResultRewrite(HeadSplit.of(trace, s, s.proj)))
        if name in ("scores", "pattern", "k_expanded", "v_expanded") and s.fused is not None \
                and s.fused.dropout == 0.0:
            return Carrier(s.core, FusedRewrite(s.fused, s.n_heads))
        return None


def _repeat(t: Tensor, heads: int) -> Tensor:
    rep = heads // t.shape[1]
    return t if rep == 1 else t.repeat_interleave(rep, dim=1)


def fused_scores(q: Tensor, k: Tensor, mask: Tensor | None, f: Fused) -> Tensor:
    """Pre-softmax scores of ``scaled_dot_product_attention`` as its documentation
    defines them: ``q @ k^T * scale``, causal mask top-left aligned, bool masks keep
    True, float masks are added."""
    scale = f.scale if f.scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1).to(q.dtype)) * scale
    if f.causal:
        lq, lk = scores.shape[-2:]
        keep = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    return scores


def softmax(scores: Tensor) -> Tensor:
    """Softmax over keys; rows with every key masked give zeros, not NaN."""
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


class HeadSplit:
    """The output projection split per head: ``rows(x)`` is ``[rows, head, d_out]``."""

    def __init__(self, weight: Tensor, bias: Tensor | None, proj: Projection, heads: int,
                 batch: int, seq: int) -> None:
        d_in = weight.shape[0] if proj.in_out else weight.shape[1]
        self.heads, self.d_head = heads, d_in // heads
        w = weight if proj.in_out else weight.t()  # [in, out]
        self.w = rearrange(w, "(h d) o -> h d o", h=heads)
        self.bias = bias
        self.rb = torch.tensor(proj.rows_b, dtype=torch.long, device=weight.device)
        self.rs = torch.tensor(proj.rows_s, dtype=torch.long, device=weight.device)
        self.batch, self.seq = batch, seq
        order = torch.arange(batch * seq, device=weight.device)
        self.row_major = len(proj.rows_b) == batch * seq and bool(
            torch.equal(self.rb * seq + self.rs, order))

    @classmethod
    def of(cls, trace: Trace, s: AttentionSpec, p: Projection) -> HeadSplit:
        b, _, seq, _ = records(trace)[s.z].shape
        bias = param(trace, p.bias) if p.bias is not None else None
        return cls(param(trace, p.weight), bias, p, s.n_heads, b, seq)

    def rows(self, x: Tensor) -> Tensor:
        xh = x.reshape(-1, self.heads, self.d_head)
        return torch.einsum("rhd,hdo->rho", xh, self.w.to(device=x.device, dtype=x.dtype))

    def to_facet(self, rows: Tensor) -> Tensor:
        if self.row_major:
            return rearrange(rows, "(b s) h o -> b h s o", b=self.batch)
        out = rows.new_zeros(self.batch, self.seq, self.heads, rows.shape[-1])
        out[self.rb.to(rows.device), self.rs.to(rows.device)] = rows
        return rearrange(out, "b s h o -> b h s o")

    def from_facet(self, facet: Tensor) -> Tensor:
        if self.row_major:
            return rearrange(facet, "b h s o -> (b s) h o")
        by_row = rearrange(facet, "b h s o -> b s h o")
        return by_row[self.rb.to(facet.device), self.rs.to(facet.device)]


class ResultRewrite:
    """Edit ``result`` at the output projection: add the edited heads' change."""

    def __init__(self, split: HeadSplit) -> None:
        self.split = split

    def apply(self, value: Tensor, inputs: list[Tensor], name: str, fn: Edit
              ) -> tuple[Tensor, dict[str, Tensor]]:
        sp = self.split
        rows = sp.rows(inputs[0])
        facet = sp.to_facet(rows)
        new = fn(facet)
        delta = sp.from_facet(new - facet).sum(1)
        return value + delta.reshape(value.shape).to(value.dtype), {"result": new}


class FusedRewrite:
    """Edit a fused attention call's ``scores``/``pattern``/expanded k or v: only the
    heads whose values changed are recomputed as ``pattern @ v`` (the others keep the
    fused kernel's output, bit for bit)."""

    def __init__(self, fused: Fused, heads: int) -> None:
        self.fused = fused
        self.heads = heads

    def apply(self, value: Tensor, inputs: list[Tensor], name: str, fn: Edit
              ) -> tuple[Tensor, dict[str, Tensor]]:
        z, changed, stages = self._run(inputs, name, fn, full=False)
        if z is None:
            return value, stages
        out = value.clone()
        out[:, changed] = z.to(value.dtype)[:, changed]
        return out, stages

    def recompute(self, value: Tensor, inputs: list[Tensor], name: str, fn: Edit) -> Tensor:
        """The call's output recomputed from the facet ``fn`` returns, every head (for
        gradients: lens.facets._grads)."""
        z = self._run(inputs, name, fn, full=True)[0]
        assert z is not None
        return z.to(value.dtype)

    def _run(self, inputs: list[Tensor], name: str, fn: Edit, full: bool
             ) -> tuple[Tensor | None, Tensor, dict[str, Tensor]]:
        """``pattern @ v`` with the facet edited (None when no head changed, unless
        ``full``), which heads changed, and the stages."""
        named = dict(zip(self.fused.slots, inputs, strict=False))
        q, k, v = named["query"], named["key"], named["value"]
        k, v = _repeat(k, self.heads), _repeat(v, self.heads)
        changed = torch.zeros(self.heads, dtype=torch.bool, device=q.device)
        if name == "k_expanded":
            k, changed = _stage(k, fn)
        if name == "v_expanded":
            v, changed = _stage(v, fn)
        scores = fused_scores(q, k, named.get("attn_mask"), self.fused)
        if name == "scores":
            scores, changed = _stage(scores, fn)
        pattern = softmax(scores)
        if name == "pattern":
            pattern, changed = _stage(pattern, fn)
        stages = {"k_expanded": k, "v_expanded": v, "scores": scores, "pattern": pattern}
        if not full and not bool(changed.any()):
            return None, changed, stages
        return pattern @ v.to(pattern.dtype), changed, stages


def _stage(old: Tensor, fn: Edit) -> tuple[Tensor, Tensor]:
    new = fn(old)
    return new, heads_changed(old, new)
