"""Residual-stream analysis: ``trace.residual``.

    r = trace.residual
    r.accumulated()           # stream at each block boundary: [n_blocks + 1, batch, pos, d]
    r.decompose()             # embeddings, each block's attention and MLP output
    r.logit_lens()            # each boundary through the final norm and the unembedding
    r.direct_logit_attribution(token_id)   # each component's share of that logit

Blocks are the residual facets (lens.facets.residual); the final norm and the
unembedding are found from the graph (lens.facets._resid_graph). Every method returns a
:class:`ResidualStack`: the stacked tensor (components first) and one label per row.

Conventions (as TransformerLens's ``ActivationCache``):

- ``accumulated`` rows are each block's ``resid_pre`` (``'0_pre'``, ``'1_pre'``, ...) and
  the last block's ``resid_post`` (``'final_post'``); ``layer=k`` keeps rows ``0..k``.
- ``decompose`` rows are ``'embed'`` (the first block's input, or the token embedding
  when an add of token and position embeddings forms it, then ``'pos_embed'``), and
  ``'{i}_attn_out'``, ``'{i}_mlp_out'`` per block; they sum to the accumulated row.
- ``apply_ln=True`` applies the final norm's scale, not the norm: each row is centered
  (when the final norm is a LayerNorm) and divided by the scale the model computed for
  the *actual* final residual (``sqrt(var + eps)``, or ``sqrt(mean(x**2) + eps)`` for an
  RMSNorm; read from the recorded ``rsqrt`` when the norm is written op by op). No
  weight and no bias are applied, so rows still add up: their sum is the final norm's
  output before its weight and bias.
- ``logit_lens`` applies the whole final norm to each row, with each row's own scale,
  then the unembedding: its last row equals the model's logits.
- ``direct_logit_attribution(tokens)`` dots ``decompose(apply_ln=True)`` with the
  unembedding rows of ``tokens`` times the final norm's weight (folded in), and adds a
  last row ``'bias'``: the final norm's bias through the unembedding plus the
  unembedding's bias. The sum over all rows is the model's logit for those tokens.

``pos_slice`` selects positions (dim -2 of the residual): an int (drops the dim), a
slice, or a list/tensor of positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from ..capture.records import Ref
from ..errors import ArgumentTypeError, FacetError, LookupKeyError, expect
from ._graph import close, max_error, param, payload, records
from ._resid_graph import Layout, Norm, Unembed, label, layout

if TYPE_CHECKING:
    from ..tracing import Trace

PosSlice = int | slice | Sequence[int] | Tensor | None


class ResidualStack(NamedTuple):
    """Rows of a residual-stream analysis, stacked on dim 0, and their labels."""

    tensor: Tensor
    labels: tuple[str, ...]

    def get(self, label: str) -> Tensor:
        """The row called ``label``."""
        if label not in self.labels:
            raise LookupKeyError(f"No row {label!r}; rows: {', '.join(self.labels)}.")
        return self.tensor[self.labels.index(label)]


class ResidualStream:
    """The residual stream of one trace (``trace.residual``); see the module docstring."""

    def __init__(self, trace: Trace) -> None:
        self._trace = trace

    @cached_property
    def layout(self) -> Layout:
        """Where the blocks, embeddings, final norm and unembedding are (call indices)."""
        found = layout(self._trace)
        if found is None:
            raise FacetError(
                "trace.residual: no residual block was found in this trace. Residual "
                "analysis needs transformer-style blocks: a module call whose input joins "
                "two branches through two adds (see tl.find_facets(trace, 'residual')). "
                "Trace with module hooks on (the default) a model built of such blocks.")
        return found

    @property
    def blocks(self) -> tuple[str, ...]:
        """The block calls, in execution order (``'transformer.h.0:1'``, ...)."""
        return tuple(b.owner.key for b in self.layout.blocks)

    def __repr__(self) -> str:
        if layout(self._trace) is None:
            return "<ResidualStream: no residual blocks found>"
        lay = self.layout
        norm = f"final norm {lay.norm.where!r}" if lay.norm else "no final norm"
        unembed = f"unembedding {lay.unembed.where!r}" if lay.unembed else "no unembedding"
        return (f"<ResidualStream: {len(lay.blocks)} blocks ({self.blocks[0]} .. "
                f"{self.blocks[-1]}), {norm}, {unembed}>")

    # ------------------------------------------------------------------ the four views
    def accumulated(self, layer: int | None = None, *, apply_ln: bool = False,
                    pos_slice: PosSlice = None) -> ResidualStack:
        """The stream at each block boundary up to ``layer`` (``None``: all, ending with
        the final residual; ``-1``: up to the last block's input)."""
        k = self._layer(layer)
        blocks = self.layout.blocks
        ops = [b.pre for b in blocks] + [blocks[-1].post]
        names = [f"{i}_pre" for i in range(len(blocks))] + ["final_post"]
        rows = torch.stack([self._payload(ops[i], names[i]) for i in range(k + 1)])
        if apply_ln:
            rows = self._apply_scale(rows, "accumulated(apply_ln=True)")
        return ResidualStack(_positions(rows, pos_slice), tuple(names[: k + 1]))

    def decompose(self, layer: int | None = None, *, apply_ln: bool = False,
                  pos_slice: PosSlice = None) -> ResidualStack:
        """Embeddings and each block's attention and MLP output up to ``layer``: rows
        that sum to ``accumulated(layer).tensor[-1]``."""
        k = self._layer(layer)
        lay = self.layout
        if lay.broken:
            raise FacetError(f"trace.residual.decompose: {lay.broken}. accumulated() "
                             "still gives the stream at each block boundary.")
        names, rows = [], []
        end = self._payload(lay.blocks[k].pre if k < len(lay.blocks) else lay.blocks[-1].post,
                            "the stream")
        for name, t in lay.embeds:
            names.append(name)
            rows.append(self._value(t, name).expand(end.shape))
        for i, b in enumerate(lay.blocks[:k]):
            names += [f"{i}_{b.names[0]}", f"{i}_{b.names[1]}"]
            rows += [self._payload(b.attn, names[-2]), self._payload(b.mlp, names[-1])]
        stack = torch.stack(rows)
        if not close(stack.sum(0), end):
            raise FacetError(
                f"trace.residual.decompose: the components {', '.join(names)} do not sum "
                f"to the stream (max error {max_error(stack.sum(0), end):.3g}). An op "
                "between them changes values (dropout in training mode? call model.eval() "
                "before tracing).")
        if apply_ln:
            stack = self._apply_scale(stack, "decompose(apply_ln=True)")
        return ResidualStack(_positions(stack, pos_slice), tuple(names))

    def logit_lens(self, layer: int | None = None, *, pos_slice: PosSlice = None
                   ) -> ResidualStack:
        """Each row of ``accumulated(layer)`` through the final norm (its own scale) and
        the unembedding: logits per block boundary, ``[rows, ..., vocab]``."""
        norm, unembed = self._norm("logit_lens"), self._unembed("logit_lens")
        acc = self.accumulated(layer, pos_slice=pos_slice)
        weight, bias = self._unembed_weights(unembed)
        logits = self._normalize(acc.tensor, norm) @ weight.T
        return ResidualStack(logits if bias is None else logits + bias, acc.labels)

    def direct_logit_attribution(self, tokens: Any, *, pos_slice: PosSlice = None
                                 ) -> ResidualStack:
        """Each component's direct contribution to the logit of ``tokens``: an int (that
        token at every position: rows ``[n, batch, pos]``), a tensor of ids shaped like
        the positions (one token per position), or a list or 1-d tensor of ids (each at
        every position: a last dim). The last row, ``'bias'``, holds the bias terms; all
        rows sum to the model's logit."""
        what = "direct_logit_attribution"
        norm, unembed = self._norm(what), self._unembed(what)
        comps = self.decompose(apply_ln=True, pos_slice=pos_slice)
        weight, ubias = self._unembed_weights(unembed)
        lead = tuple(comps.tensor.shape[1:-1])
        ids, each, scalar = _token_ids(tokens, lead, weight.shape[0])
        gain: Tensor | float = 1.0
        if norm.weight is not None:
            gain = self._value(norm.weight, "the final norm's weight")
        dirs = weight[ids] * gain  # [*lead, d] (each) or [k, d]
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        if norm.bias is not None:
            bias = bias + weight @ self._value(norm.bias, "the final norm's bias")
        if ubias is not None:
            bias = bias + ubias
        if each:
            rows = (comps.tensor * dirs).sum(-1)
            extra = bias[ids]
        else:
            rows = comps.tensor @ dirs.T
            extra = bias[ids].expand(*lead, len(ids))
        if scalar:
            rows, extra = rows[..., 0], extra[..., 0]
        stack = torch.cat([rows, extra.to(rows.dtype).unsqueeze(0)])
        return ResidualStack(stack, (*comps.labels, "bias"))

    # ------------------------------------------------------------------ helpers
    def _layer(self, layer: int | None) -> int:
        n = len(self.layout.blocks)
        if layer is None:
            return n
        expect(layer, int, "trace.residual: layer=", "an int (a block boundary) or None")
        k = layer + n if layer < 0 else layer
        if not 0 <= k <= n:
            raise LookupKeyError(
                f"trace.residual: no layer {layer}; this trace has {n} blocks, so layer "
                f"takes 0 .. {n} ({n}: the final residual) or -{n} .. -1.")
        return k

    def _payload(self, ci: int, what: str) -> Tensor:
        return payload(self._trace, ci, f"{what} of the residual stream")

    def _value(self, t: Any, what: str) -> Tensor:
        if isinstance(t, Ref):
            return self._payload(t.op, what)
        return param(self._trace, t.name)

    def _norm(self, what: str) -> Norm:
        norm = self.layout.norm
        if norm is None:
            raise FacetError(
                f"trace.residual.{what}: no final norm was found reading the last block's "
                f"output ({label(records(self._trace), self.layout.blocks[-1].post)}): "
                "lens looks for a layer_norm or rms_norm op, or a module computing rsqrt "
                "or sqrt, taking it as input. accumulated() and decompose() without "
                "apply_ln work without one; apply the model's norm to them yourself.")
        x = self._payload(norm.input, "final norm input")
        y, mine = self._payload(norm.output, "final norm output"), self._normalize(x, norm)
        if not close(mine, y):
            raise FacetError(
                f"trace.residual.{what}: the final norm {norm.where!r} could not be "
                f"reproduced (max error {max_error(mine, y):.3g}): it "
                "is not (x - mean) / sqrt(var + eps) * weight + bias nor its RMS form.")
        return norm

    def _unembed(self, what: str) -> Unembed:
        unembed = self.layout.unembed
        if unembed is None:
            norm = self._norm(what)
            raise FacetError(
                f"trace.residual.{what}: no unembedding was found: lens looks for a linear "
                f"or matmul reading the final norm's output ({norm.where!r}) at every "
                "position and producing a model output. Models without a language-model "
                "head (BertModel, ViTModel) have none: use their ...ForMaskedLM / "
                "...ForCausalLM variant, or project accumulated(apply_ln=True) yourself.")
        return unembed

    def _unembed_weights(self, unembed: Unembed) -> tuple[Tensor, Tensor | None]:
        """The unembedding as ``[vocab, d]`` rows, and its bias."""
        w = self._value(unembed.weight, "the unembedding weight")
        bias = self._value(unembed.bias, "the unembedding bias") \
            if unembed.bias is not None else None
        return (w.T if unembed.transposed else w), bias

    def _scale(self, x: Tensor, norm: Norm) -> Tensor:
        if norm.centered:
            x = x - x.mean(-1, keepdim=True)
        eps = torch.finfo(x.dtype).eps if norm.eps is None else norm.eps
        return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()

    def _apply_scale(self, rows: Tensor, what: str) -> Tensor:
        norm = self._norm(what)
        if norm.scale_op is not None:
            s = self._payload(norm.scale_op, "the final norm's scale")
            scale = 1 / s if norm.inverse else s
        else:
            scale = self._scale(self._payload(norm.input, "final norm input"), norm)
        if norm.centered:
            rows = rows - rows.mean(-1, keepdim=True)
        return rows / scale.to(rows.dtype)

    def _normalize(self, x: Tensor, norm: Norm) -> Tensor:
        out = (x - x.mean(-1, keepdim=True) if norm.centered else x) / self._scale(x, norm)
        if norm.weight is not None:
            out = out * self._value(norm.weight, "the final norm's weight")
        if norm.bias is not None:
            out = out + self._value(norm.bias, "the final norm's bias")
        return out


def _token_ids(tokens: Any, lead: tuple[int, ...], vocab: int
               ) -> tuple[Tensor, bool, bool]:
    """Token ids as a tensor (at least 1-d), whether they are one per position, and
    whether a single id was given."""
    if isinstance(tokens, bool) or not isinstance(tokens, (int, Tensor, list, tuple)):
        raise ArgumentTypeError(
            f"direct_logit_attribution takes token ids (an int, a list or a tensor of "
            f"ints); got {type(tokens).__name__}.")
    ids = torch.as_tensor(tokens)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ArgumentTypeError(f"direct_logit_attribution takes integer token ids; got "
                                f"dtype {ids.dtype}.")
    each = isinstance(tokens, Tensor) and tuple(ids.shape) == lead and ids.ndim > 0
    if not each and ids.ndim > 1:
        raise ArgumentTypeError(
            f"direct_logit_attribution: tokens of shape {tuple(ids.shape)} are neither one "
            f"per position {lead} nor a 1-d list of ids.")
    bad = ids[(ids < 0) | (ids >= vocab)]
    if bad.numel():
        raise LookupKeyError(f"direct_logit_attribution: token id {int(bad[0])} is outside "
                             f"the unembedding's vocabulary (0 .. {vocab - 1}).")
    return ids.reshape(-1).long() if ids.ndim == 0 else ids.long(), each, ids.ndim == 0


def _positions(t: Tensor, pos_slice: PosSlice) -> Tensor:
    """``t`` at positions ``pos_slice`` of dim -2."""
    if pos_slice is None:
        return t
    n = t.shape[-2]
    if isinstance(pos_slice, bool) or not isinstance(pos_slice, (int, slice, Tensor,
                                                                 list, tuple)):
        raise ArgumentTypeError(f"pos_slice takes an int, a slice, or a list or tensor of "
                                f"positions; got {type(pos_slice).__name__}.")
    if isinstance(pos_slice, slice):
        return t[..., pos_slice, :]
    idx = torch.as_tensor(pos_slice, device=t.device)
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.ndim > 1:
        raise ArgumentTypeError(f"pos_slice takes integer positions (0-d or 1-d); got "
                                f"{pos_slice!r}.")
    if bool(((idx < -n) | (idx >= n)).any()):
        raise LookupKeyError(f"pos_slice {pos_slice!r} is out of range: the residual has "
                             f"{n} positions.")
    if isinstance(pos_slice, int):
        return t.select(-2, pos_slice)
    return t.index_select(-2, idx.long() % n)
