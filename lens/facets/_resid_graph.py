"""The layout of a residual stream, read from the recorded graph (metadata only).

Blocks come from the residual facets (lens.facets.residual), in execution order. Around
them this module finds: the ops forming the first block's input (token and position
embeddings, when an add forms it), the final norm reading the last block's output, and
the unembedding reading the norm's output and producing a model output. Ops that only
carry values along unchanged (``dropout``, casts, same-shape views and full slices) are
walked through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..capture.records import ParamRef, Ref
from ._graph import ADDS, MATMULS, arg, records
from ._providers import structure
from ._registry import Owner

if TYPE_CHECKING:
    from ..tracing import Trace

_CARRY = frozenset({"dropout", "to", "type", "float", "contiguous", "clone", "detach",
                    "identity", "view", "reshape", "view_as", "reshape_as"})
_MULS = frozenset({"mul", "__mul__", "__rmul__"})
_SUBS = frozenset({"sub", "__sub__", "__rsub__"})


@dataclass(frozen=True)
class Block:
    """One call of a residual block: the call indices of its residual facets."""

    owner: Owner
    pre: int
    mid: int
    post: int
    attn: int
    mlp: int
    names: tuple[str, str]  # ('attn_out', 'mlp_out') or ('branch1_out', 'branch2_out')


@dataclass(frozen=True)
class Norm:
    """The final norm: ``(x - mean(x) if centered) / scale * weight + bias`` over the last
    dim, ``scale = sqrt(mean(centered x ** 2) + eps)``. ``scale_op`` is an op whose saved
    value is the scale (``inverse``: its reciprocal, an ``rsqrt``), when the norm is written
    out op by op; a fused ``layer_norm``/``rms_norm`` keeps no scale and it is recomputed."""

    where: str
    input: int
    output: int
    centered: bool
    eps: float | None  # None: torch's default for rms_norm (the dtype's machine epsilon)
    weight: Any  # ParamRef, Ref or None
    bias: Any
    scale_op: int | None = None
    inverse: bool = False


@dataclass(frozen=True)
class Unembed:
    """The op producing logits from the final norm's output: ``x @ W.T + b`` (``linear``)
    or ``x @ W`` (``matmul``, ``transposed``)."""

    where: str
    op: int
    weight: Any
    bias: Any
    transposed: bool


@dataclass(frozen=True)
class Layout:
    blocks: tuple[Block, ...]
    embeds: tuple[tuple[str, Any], ...]  # (label, Ref or ParamRef) summing to the first pre
    broken: str | None  # why the blocks' adds are not the whole stream (None: they are)
    norm: Norm | None
    unembed: Unembed | None


def layout(trace: Trace) -> Layout | None:
    """The residual stream of ``trace``, or None when no residual block was found."""
    index = structure(trace)
    blocks = tuple(_block(g.owner, g.info()) for o in index.owners("residual")
                   for g in index.of(o) if g.kind == "residual")
    if not blocks:
        return None
    recs = records(trace)
    norm = _norm(trace, recs, blocks[-1].post)
    return Layout(blocks, _embeds(trace, recs, blocks[0].pre), _broken(recs, blocks),
                  norm, _unembed(trace, recs, norm) if norm is not None else None)


def _block(owner: Owner, ops: dict[str, int]) -> Block:
    names = ("attn_out", "mlp_out") if "attn_out" in ops else ("branch1_out", "branch2_out")
    return Block(owner, ops["resid_pre"], ops["resid_mid"], ops["resid_post"],
                 ops[names[0]], ops[names[1]], names)


def label(recs: Sequence[Any], ci: int) -> str:
    rec = recs[ci]
    name = getattr(rec, "label", None) if hasattr(rec, "layer") else None
    return f"{name or f'op #{ci}'} ({rec.func_name})"


def _carried(recs: Sequence[Any], ci: int) -> int | None:
    """The op whose value op ``ci`` carries along unchanged, or None."""
    rec = recs[ci]
    parents = set(rec.parent_idx) if rec is not None else set()
    if len(parents) != 1:
        return None
    p = int(next(iter(parents)))
    if tuple(recs[p].shape) != tuple(rec.shape):
        return None
    name = rec.func_name
    if name in _CARRY or (name == "__getitem__" and _full(arg(rec, 1, "idx"))):
        return p
    return None


def _full(idx: Any) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(i is Ellipsis or (isinstance(i, slice) and i.start in (None, 0)
                                 and i.stop is None and i.step in (None, 1)) for i in items)


def _back(recs: Sequence[Any], ci: int, stop: int | None = None) -> int:
    """Walk from op ``ci`` back through carrying ops to ``stop``, or to the first op that
    computes."""
    while ci != stop and (p := _carried(recs, ci)) is not None:
        ci = p
    return ci


def _forward(recs: Sequence[Any], ci: int) -> list[int]:
    """Op ``ci`` and every op carrying its value along, in call order."""
    found, todo = [ci], [ci]
    while todo:
        for c in recs[todo.pop()].child_idx:
            if recs[c] is not None and c not in found and _carried(recs, c) in found:
                found.append(c)
                todo.append(c)
    return sorted(found)


def _broken(recs: Sequence[Any], blocks: Sequence[Block]) -> str | None:
    """Why the stream is not the embeddings plus the blocks' branches, or None."""
    steps: list[tuple[int | None, int]] = []
    for i, b in enumerate(blocks):
        if i:
            steps.append((b.pre, blocks[i - 1].post))
        steps += [(_stream_parent(recs, b.mid, b.attn), b.pre),
                  (_stream_parent(recs, b.post, b.mlp), b.mid)]
    for start, target in steps:
        if start is None or (stop := _back(recs, start, target)) != target:
            where = label(recs, stop) if start is not None else "an add"
            return (f"the stream passes through {where} between {label(recs, target)} and "
                    "the next residual add, so the blocks' outputs do not simply add up "
                    "(a post-norm block, as in BERT, normalizes the stream itself)")
    return None


def _stream_parent(recs: Sequence[Any], add: int, branch: int) -> int | None:
    others = [p for p in dict.fromkeys(recs[add].parent_idx) if p != branch]
    return others[0] if len(others) == 1 else None


def _embeds(trace: Trace, recs: Sequence[Any], pre: int) -> tuple[tuple[str, Any], ...]:
    """Token and position embeddings when an add forms the first block's input: the
    addend with fewer elements (no batch dim) or the one not an ``embedding`` of a model
    input is the position embedding. Otherwise the block input itself, as ``embed``."""
    whole = (("embed", Ref(pre)),)
    e = _back(recs, pre)
    rec = recs[e]
    terms = [a for a in rec.args[:2] if isinstance(a, (Ref, ParamRef))]
    if rec.func_name not in ADDS or len(rec.args) != 2 or len(terms) != 2 or rec.kwargs:
        return whole
    sizes = [_numel(_shape(trace, recs, t)) for t in terms]
    if sizes[0] != sizes[1]:
        tok = 0 if sizes[0] > sizes[1] else 1
    else:
        tok_like = [_indexes_input(recs, t) for t in terms]
        if tok_like.count(True) != 1:
            return whole
        tok = tok_like.index(True)
    return (("embed", terms[tok]), ("pos_embed", terms[1 - tok]))


def _indexes_input(recs: Sequence[Any], t: Any) -> bool:
    if not isinstance(t, Ref) or recs[t.op].func_name != "embedding":
        return False
    ids = arg(recs[t.op], 0, "input")
    return isinstance(ids, Ref) and recs[ids.op].func_name == "input"


def _shape(trace: Trace, recs: Sequence[Any], t: Any) -> tuple[int, ...]:
    if isinstance(t, Ref):
        return tuple(recs[t.op].shape)
    return tuple(trace.param_meta[t.name][0])


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _norm(trace: Trace, recs: Sequence[Any], final: int) -> Norm | None:
    """The norm reading the last block's output: a fused ``layer_norm``/``rms_norm`` op,
    or a module call computing ``rsqrt``/``sqrt`` whose input is that output."""
    stream = _forward(recs, final)
    width = recs[final].shape[-1]
    users = sorted({c for s in stream for c in recs[s].child_idx if c not in stream})
    for c in users:
        rec = recs[c]
        if not _reads(rec, stream):
            continue
        if rec.func_name == "layer_norm" and tuple(arg(rec, 1, "normalized_shape")) == (width,):
            return Norm(_where(rec), arg(rec, 0, "input").op, c, True,
                        float(arg(rec, 4, "eps", 1e-5)),
                        arg(rec, 2, "weight"), arg(rec, 3, "bias"))
        if rec.func_name == "rms_norm" and tuple(arg(rec, 1, "normalized_shape")) == (width,):
            eps = arg(rec, 3, "eps")
            return Norm(_where(rec), arg(rec, 0, "input").op, c, False,
                        None if eps is None else float(eps), arg(rec, 2, "weight"), None)
    for c in users:
        found = _written_norm(trace, recs, stream, c) if recs[c] is not None else None
        if found is not None:
            return found
    return None


def _reads(rec: Any, ops: list[int]) -> bool:
    """Whether ``rec``'s first argument is one of ``ops``."""
    a = arg(rec, 0, "input") if rec is not None else None
    return isinstance(a, Ref) and a.op in ops


def _where(rec: Any) -> str:
    return rec.module_ctx[-1].address if rec.module_ctx else "the model's own forward"


def _written_norm(trace: Trace, recs: Sequence[Any], stream: list[int], c: int
                  ) -> Norm | None:
    for call in reversed(recs[c].module_ctx):
        if not set(call.input_ops) & set(stream) or len(call.output_ops) != 1:
            continue
        out = call.output_ops[0]
        span = [ci for ci in range(call.first_op, call.last_op + 1) if recs[ci] is not None]
        roots = [ci for ci in span if recs[ci].func_name in ("rsqrt", "sqrt")]
        if tuple(recs[out].shape) != tuple(recs[stream[0]].shape) or len(roots) != 1:
            continue
        centered = any(recs[ci].func_name in _SUBS and set(recs[ci].parent_idx) & set(stream)
                       for ci in span)
        fed = [recs[p] for p in recs[roots[0]].parent_idx]
        consts = [a for a in fed[0].args if isinstance(a, float)] \
            if fed and fed[0].func_name in ADDS else []
        width = (recs[out].shape[-1],)
        weight = _param_in(trace, recs, span, _MULS, width)
        return Norm(call.address, stream[0], out, centered,
                    consts[0] if consts else 0.0, weight,
                    _param_in(trace, recs, span, ADDS, width), roots[0],
                    recs[roots[0]].func_name == "rsqrt")
    return None


def _param_in(trace: Trace, recs: Sequence[Any], span: list[int], funcs: frozenset[str],
              width: tuple[int, ...]) -> ParamRef | None:
    for ci in span:
        if recs[ci].func_name in funcs:
            for a in recs[ci].args:
                if isinstance(a, ParamRef) and tuple(trace.param_meta[a.name][0]) == width:
                    return a
    return None


def _unembed(trace: Trace, recs: Sequence[Any], norm: Norm) -> Unembed | None:
    """A ``linear``/``matmul`` reading the norm's output whose result is a model output."""
    normed = _forward(recs, norm.output)
    width = recs[norm.output].shape[-1]
    for c in sorted({c for s in normed for c in recs[s].child_idx if c not in normed}):
        rec = recs[c]
        if not _reads(rec, normed):
            continue
        name = rec.func_name
        weight = arg(rec, 1, "weight") if name == "linear" else arg(rec, 1, "other")
        if name not in MATMULS and name != "linear" or not isinstance(weight, (Ref, ParamRef)):
            continue
        shape = _shape(trace, recs, weight)
        wide = shape[1] if name == "linear" else shape[0]
        if len(shape) != 2 or wide != width or not _is_output(recs, c):
            continue
        bias = arg(rec, 2, "bias") if name == "linear" else None
        return Unembed(_where(rec), c, weight, bias, name != "linear")
    return None


def _is_output(recs: Sequence[Any], ci: int) -> bool:
    return any(recs[c] is not None and recs[c].func_name == "output"
               for s in _forward(recs, ci) for c in recs[s].child_idx)
