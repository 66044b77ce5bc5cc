"""Finding attention in the recorded graph (not by class name).

A module call holds attention if one of its own ops is ``scaled_dot_product_attention``
(fused) or a ``softmax`` over the last dim of a 4-d tensor fed by ``matmul(q, k^T)`` (through
scale and mask ops) and feeding ``matmul(pattern, v)`` (eager). Heads, kv-heads and head
size are read from the tensors' shapes. Downstream of ``z``, reshape-only ops lead to the
output projection (``linear``, or ``addmm`` as in HF GPT-2's ``Conv1D``); which rows and
columns of its input hold which head is worked out by running those reshapes on an index
tensor, so ``result`` can split the projection per head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..capture.records import ParamRef, Ref
from ._graph import ADDS, MATMULS, RESHAPES, arg, records, ref, simulate, swaps_last_two
from ._graph import template_slots as slots_of
from ._registry import Owner, StructureIndex, owner_of

if TYPE_CHECKING:
    from ..tracing import Trace

SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
             "enable_gqa")
_SCORE_OPS = frozenset({"mul", "__mul__", "div", "__truediv__", "true_divide", "add",
                        "__add__", "__radd__", "sub", "__sub__", "masked_fill", "where",
                        "to", "type", "float", "contiguous", "clone"})
_PATTERN_OPS = frozenset({"to", "type", "float", "dropout", "contiguous", "clone"})
_REPEAT_OPS = frozenset({"reshape", "view", "expand", "__getitem__", "unsqueeze",
                         "repeat_interleave", "repeat", "contiguous", "flatten"})


@dataclass(frozen=True)
class Projection:
    """The output projection after the heads are merged.

    ``op`` computes ``x @ W (+ b)`` from ``x`` (op ``x``), whose flattened leading dims
    are rows: row ``r`` holds batch ``rows_b[r]``, position ``rows_s[r]``, and its last
    dim is ``[head, d_head]``. ``in_out``: the weight is ``[in, out]`` (addmm / Conv1D)
    rather than ``[out, in]`` (linear)."""

    op: int
    x: int
    weight: str
    bias: str | None
    in_out: bool
    rows_b: tuple[int, ...]
    rows_s: tuple[int, ...]


@dataclass(frozen=True)
class Fused:
    """The arguments of one ``scaled_dot_product_attention`` call."""

    slots: tuple[str, ...]  # names of its activation inputs, in site.inputs() order
    mask: int | None
    causal: bool
    scale: float | None
    dropout: float


@dataclass(frozen=True)
class AttentionSpec:
    """Where each attention facet lives in the graph (call indices)."""

    owner: Owner
    core: int  # the sdpa op, or the softmax op of an eager chain
    q: int
    k: int | None  # None: only k^T exists (op ``kt``)
    kt: int | None
    v: int
    k_rep: int | None  # eager GQA: k/v repeated to the query heads
    v_rep: int | None
    scores: int | None  # eager: the softmax input; fused: reconstructed
    pattern: int | None  # eager: the softmax
    z: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    fused: Fused | None
    proj: Projection | None
    q_pre_rotary: int | None = None
    k_pre_rotary: int | None = None


def detect(trace: Trace, index: StructureIndex) -> None:
    """The attention provider: one group per module call holding attention."""
    from ._attn_group import AttentionGroup
    from ._mha import detect_mha

    recs = records(trace)
    seen: set[Owner] = set()
    for rec in recs:
        if rec is None:  # an orphan left out of a loaded trace
            continue
        name = rec.func_name
        spec: AttentionSpec | None = None
        if name == "scaled_dot_product_attention":
            spec = _fused(trace, rec, index)
        elif name == "softmax" or name == "_softmax":
            spec = _eager(trace, rec)
        elif name == "multi_head_attention_forward" and rec.out_index[:1] == (0,):
            detect_mha(trace, rec, index, seen)
            continue
        if spec is None:
            continue
        if spec.owner in seen:
            index.note(spec.owner, f"a second attention computation (op #{spec.core}) in "
                       "the same call has no facets; only the first one does")
            continue
        seen.add(spec.owner)
        index.add(AttentionGroup(spec), spec.core)


def _fused(trace: Trace, rec: Any, index: StructureIndex) -> AttentionSpec | None:
    recs = records(trace)
    q, k, v = (ref(arg(rec, i, n)) for i, n in enumerate(SDPA_ARGS[:3]))
    if q is None or k is None or v is None:
        return None
    qs, ks = recs[q].shape, recs[k].shape
    if len(qs) != 4 or len(ks) != 4 or len(rec.shape) != 4:
        index.note(owner_of(rec), f"scaled_dot_product_attention at op #{rec.call_index} "
                   f"has inputs of shape {tuple(qs)} (no [batch, head, seq, d] layout)")
        return None
    mask = arg(rec, 3, "attn_mask")
    if mask is not None and not isinstance(mask, Ref):
        return None
    scale = arg(rec, 6, "scale")
    fused = Fused(slots_of(rec, SDPA_ARGS), ref(mask), bool(arg(rec, 5, "is_causal", False)),
                  None if scale is None else float(scale), float(arg(rec, 4, "dropout_p", 0.0)))
    z = rec.call_index
    return AttentionSpec(
        owner_of(rec), z, q, k, None, v, None, None, None, None, z, qs[1], ks[1], qs[3],
        fused, find_projection(trace, z, qs[1], recs[v].shape[3]),
        unrotate(recs, q), unrotate(recs, k))


def _eager(trace: Trace, soft: Any) -> AttentionSpec | None:
    recs = records(trace)
    if len(soft.shape) != 4:
        return None
    dim = arg(soft, 1, "dim")
    if not isinstance(dim, int) or dim % 4 != 3:
        return None
    first = ref(soft.args[0]) if soft.args else None
    m1 = _up_to_matmul(recs, first, 6) if first is not None else None
    m2 = _down_to_matmul(recs, soft.call_index, 4)
    if m1 is None or m2 is None:
        return None
    q, kt = ref(recs[m1].args[0]), ref(recs[m1].args[1])
    v = ref(recs[m2].args[1])
    if q is None or kt is None or v is None or len(recs[q].shape) != 4:
        return None
    k = recs[kt].parent_idx[0] if swaps_last_two(recs[kt]) and recs[kt].parent_idx else None
    heads = recs[q].shape[1]
    k_kv = _unrepeat(recs, k, heads) if k is not None else None
    v_kv = _unrepeat(recs, v, heads)
    if (k_kv is None) != (v_kv is None):
        k_kv = v_kv = None
    k_facet = k_kv if k_kv is not None else k
    kv_heads = recs[k_facet].shape[1] if k_facet is not None else recs[kt].shape[1]
    z = recs[m2].call_index
    return AttentionSpec(
        owner_of(soft), soft.call_index, q, k_facet, kt if k is None else None,
        v_kv if v_kv is not None else v, k if k_kv is not None else None,
        v if v_kv is not None else None, first, soft.call_index, z, heads, kv_heads,
        recs[q].shape[3], None, find_projection(trace, z, heads, recs[v].shape[3]),
        unrotate(recs, q), unrotate(recs, k_facet) if k_facet is not None else None)


def _up_to_matmul(recs: Any, ci: int, depth: int) -> int | None:
    """The ``q @ k^T`` matmul above a softmax input, through scale and mask ops."""
    rec = recs[ci]
    if rec.func_name in MATMULS and len(rec.args) >= 2 and all(
            isinstance(a, Ref) for a in rec.args[:2]) and len(rec.shape) == 4:
        return int(ci)
    if depth == 0 or rec.func_name not in _SCORE_OPS:
        return None
    for p in dict.fromkeys(rec.parent_idx):
        if tuple(recs[p].shape) == tuple(rec.shape):
            found = _up_to_matmul(recs, p, depth - 1)
            if found is not None:
                return found
    return None


def _down_to_matmul(recs: Any, ci: int, depth: int) -> int | None:
    """The ``pattern @ v`` matmul below a softmax, through dtype casts and dropout."""
    for c in recs[ci].child_idx:
        rec = recs[c]
        if rec.func_name in MATMULS and len(rec.args) >= 2 and ref(rec.args[0]) == ci \
                and isinstance(rec.args[1], Ref):
            return int(c)
        if depth > 0 and rec.func_name in _PATTERN_OPS and rec.args and \
                ref(rec.args[0]) == ci and tuple(rec.shape) == tuple(recs[ci].shape):
            found = _down_to_matmul(recs, c, depth - 1)
            if found is not None:
                return found
    return None


def _unrepeat(recs: Any, ci: int, heads: int) -> int | None:
    """For k (or v) repeated to ``heads`` heads (grouped-query attention), the op holding
    the kv heads before the repeat; None if it was not repeated."""
    target = recs[ci].shape
    cur = ci
    for _ in range(4):
        rec = recs[cur]
        parents = list(dict.fromkeys(rec.parent_idx))
        if rec.func_name not in _REPEAT_OPS or len(parents) != 1:
            return None
        cur = parents[0]
        s = recs[cur].shape
        if (len(s) == 4 and s[0] == target[0] and tuple(s[2:]) == tuple(target[2:])
                and s[1] < heads and heads % s[1] == 0):
            return int(cur)
    return None


def unrotate(recs: Any, ci: int | None) -> int | None:
    """For q or k after rotary embeddings (``x * cos + rotate_half(x) * sin``), the op
    holding ``x``; None if ``ci`` is not such a sum."""
    if ci is None:
        return None
    rec = recs[ci]
    if rec.func_name not in ADDS or len(set(rec.parent_idx)) != 2:
        return None
    full = tuple(rec.shape)
    muls = [recs[p] for p in dict.fromkeys(rec.parent_idx)]
    if not all(m.func_name in ("mul", "__mul__") for m in muls):
        return None
    direct = [[p for p in m.parent_idx if tuple(recs[p].shape) == full] for m in muls]
    for a, b in ((0, 1), (1, 0)):
        for x in direct[a]:
            if any(_reaches(recs, y, x, 4) for y in direct[b] if y != x):
                return int(x)
    return None


def _reaches(recs: Any, ci: int, target: int, depth: int) -> bool:
    if ci == target:
        return True
    if depth == 0:
        return False
    return any(_reaches(recs, p, target, depth - 1) for p in recs[ci].parent_idx)


def find_projection(trace: Trace, z: int, heads: int, d_v: int) -> Projection | None:
    """The output projection fed by ``z`` through reshape-only ops, if any."""
    recs = records(trace)
    path: list[int] = []
    cur = z
    call = None
    for _ in range(10):
        kids = list(dict.fromkeys(recs[cur].child_idx))
        if len(kids) != 1:
            return None
        c = recs[kids[0]]
        if c.func_name in RESHAPES and c.args and ref(c.args[0]) == cur:
            path.append(c.call_index)
            cur = c.call_index
            continue
        call = _projection_call(c, cur)
        break
    if call is None:
        return None
    weight, bias, in_out = call
    zs = tuple(recs[z].shape)
    xs = tuple(recs[cur].shape)
    if len(zs) != 4 or not xs or xs[-1] != heads * d_v or not path:
        return None
    b, h, s, d = zs
    ids = torch.arange(b * h * s * d).reshape(zs)
    moved = simulate(trace, z, path, ids)
    if moved is None or tuple(moved.shape) != xs:
        return None
    rows = moved.reshape(-1, h, d)
    base = rows[:, 0, 0]
    rb, rs = base // (h * s * d), (base % (s * d)) // d
    if not torch.equal(rows, ids[rb, :, rs, :]):
        return None
    return Projection(c.call_index, cur, weight, bias, in_out, tuple(rb.tolist()),
                      tuple(rs.tolist()))


def _projection_call(rec: Any, x: int) -> tuple[str, str | None, bool] | None:
    name, args = rec.func_name, rec.args
    if name == "linear" and len(args) >= 2 and ref(args[0]) == x \
            and isinstance(args[1], ParamRef):
        bias = arg(rec, 2, "bias")
        return args[1].name, bias.name if isinstance(bias, ParamRef) else None, False
    if name == "addmm" and len(args) >= 3 and ref(args[1]) == x and isinstance(
            args[0], ParamRef) and isinstance(args[2], ParamRef) and \
            rec.kwargs.get("beta", 1) == 1 and rec.kwargs.get("alpha", 1) == 1:
        return args[2].name, args[0].name, True
    if name in ("matmul", "mm", "__matmul__") and len(args) >= 2 and ref(args[0]) == x \
            and isinstance(args[1], ParamRef):
        return args[1].name, None, True
    return None
