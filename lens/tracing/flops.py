"""Forward FLOPs and MACs per op, counted from recorded shapes (never by running anything).

The convention, stated once:

- **Contractions** (``linear``, ``matmul``/``mm``/``bmm``/``@``, ``addmm``/``baddbmm``,
  ``einsum``, ``conv*``/``conv_transpose*``, ``scaled_dot_product_attention``): MACs are the
  multiply-accumulates of the contraction; FLOPs are ``2 * MACs``, plus one per output
  element for a fused bias or addend.
- **Fused calls**: ``nn.MultiheadAttention``'s ``multi_head_attention_forward`` counts its
  four projections and both attention products; ``lstm``/``gru``/``rnn_tanh``/``rnn_relu``
  count each weight matrix once per step and batch row (gate nonlinearities and biases
  are left out, as in the contractions above).
- **Elementwise and reductions** (``add``, ``relu``, ``gelu``, ``sum``, ``mean``, ...): one
  FLOP per element of the largest operand or output, no MACs.
- **Normalisations**: five FLOPs per element (mean, variance, centre, scale, shift);
  **softmax** and **log_softmax**: three per element (exp, sum, divide).
- **Shape-only ops** (views, indexing, concatenation, copies, dtype casts, factories) and
  inputs/outputs: zero.

``op_cost(op)`` gives ``(flops, macs)``; ``Trace.summary()`` prints the totals, and
``module_cost`` sums the ops inside one module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch

from ..capture.records import ParamRef, Ref
from ..capture.template import arg_leaves

if TYPE_CHECKING:
    from .op import Op

Shape = tuple[int, ...]

# Matched against ``op.type``: the engine's one normalization of function names
# (lowercase, no underscores; ``__radd__``/``__iadd__``/``add_`` are all ``add``).
_ZERO = re.compile(
    r"^(view|reshape|flatten|unflatten|squeeze|unsqueeze|permute|transpose|t|contiguous|"
    r"expand|expandas|repeat|getitem|setitem|split|chunk|unbind|cat|concat|stack|narrow|"
    r"select|indexselect|gather|clone|copy|detach|to|type|float|half|double|int|long|bool|"
    r"bfloat16|cpu|cuda|zeros|ones|full|empty|arange|linspace|rand|randn|randint|tensor|"
    r"zeroslike|oneslike|fulllike|emptylike|embedding|dropout|identity|input|output|"
    r"buffer|movedim|roll|flip|tril|triu|maskedfill|where|pad|size|dim|tolist)$")
_NORMS = re.compile(r"^(layernorm|batchnorm|groupnorm|instancenorm|rmsnorm|normalize)$")
_SOFTMAX = re.compile(r"^(softmax|logsoftmax)$")


def _shapes(op: Op) -> Iterator[Shape]:
    """The shape of every tensor operand of ``op`` (arguments, then keyword arguments)."""
    trace = op.trace
    for template in (op.args, *op.kwargs.values()):
        for leaf in arg_leaves(template):
            if isinstance(leaf, Ref):
                found = trace.op_at_call(leaf.op)
                if found is not None:
                    yield tuple(found.shape)
            elif isinstance(leaf, ParamRef):
                meta = trace.param_meta.get(leaf.name)
                if meta is not None:
                    yield tuple(meta[0])
            elif isinstance(leaf, torch.Tensor):
                yield tuple(leaf.shape)


def _numel(shape: Iterable[int]) -> int:
    return math.prod(shape)


def _contraction(name: str, ins: list[Shape], out: Shape, op: Op) -> tuple[int, int] | None:
    """(MACs, extra FLOPs) for a contraction, or None if ``name`` is not one."""
    n_out = _numel(out)
    if name == "linear" and ins:
        return n_out * ins[0][-1], (n_out if len(ins) > 2 else 0)
    if name in ("matmul", "mm", "bmm", "rmatmul", "dot", "mv", "inner") and ins:
        first = ins[1] if name == "rmatmul" and len(ins) > 1 else ins[0]
        return n_out * (first[-1] if first else 1), 0
    if name in ("addmm", "baddbmm", "addbmm", "addmv") and len(ins) >= 2:
        return n_out * ins[1][-1], n_out
    if name.startswith("conv") and len(ins) >= 2:
        weight = ins[1]
        if name.startswith("convtranspose"):  # weight (C_in, C_out/groups, *k)
            return _numel(ins[0]) * _numel(weight[1:]), (n_out if len(ins) > 2 else 0)
        return n_out * _numel(weight[1:]), (n_out if len(ins) > 2 else 0)
    if name == "scaleddotproductattention" and len(ins) >= 3:
        q, k, v = ins[:3]
        batch = _numel(q[:-2])
        return batch * q[-2] * k[-2] * (q[-1] + v[-1]), 0
    if name == "einsum":
        return _einsum_macs(op, ins), 0
    if name == "multiheadattentionforward" and len(ins) >= 3:
        return _mha_macs(ins), 0
    if name in _RECURRENT and ins and ins[0]:
        steps = _numel(ins[0]) // max(ins[0][-1], 1)  # time x batch, whatever the layout
        meta = op.trace.param_meta
        weights = [meta[n][0] for n in dict.fromkeys(op.params) if n in meta]
        return steps * sum(w[0] * w[1] for w in weights if len(w) == 2), 0
    return None


# Fused recurrent calls: every 2-D weight (input-hidden and hidden-hidden, per gate, layer
# and direction) is applied once per step and batch row. (A second layer's steps take the
# first layer's output, of the same number of rows, so the count holds for every layer.)
_RECURRENT = frozenset({"lstm", "gru", "rnntanh", "rnnrelu"})


def _mha_macs(ins: list[Shape]) -> int:
    """``nn.MultiheadAttention``'s fused call: input projections of query, key and
    value, both attention products (over every head, summing to the embedding size),
    and the output projection. Query ``(L, N, E)`` or unbatched ``(L, E)``."""
    q, k = ins[0], ins[1]
    e = q[-1]
    rows_q = _numel(q) // max(e, 1)  # L * N
    rows_kv = _numel(k) // max(k[-1], 1)  # S * N
    s = k[0]
    return rows_q * e * e + 2 * rows_kv * k[-1] * e + 2 * rows_q * s * e + rows_q * e * e


def _einsum_macs(op: Op, ins: list[Shape]) -> int:
    equation = next((a for a in op.args if isinstance(a, str)), None)
    if equation is None:
        return 0
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for letters, shape in zip(lhs, ins, strict=False):
        for letter, size in zip(letters.replace("...", ""), shape[-len(letters):], strict=False):
            sizes[letter] = size
    return _numel(sizes.values())


def op_cost(op: Op) -> tuple[int, int]:
    """``(flops, macs)`` of one op, by the convention in this module's docstring."""
    name = op.type
    if op.kind != "op" or _ZERO.match(name):
        return 0, 0
    ins = list(_shapes(op))
    out = tuple(op.shape)
    found = _contraction(name, ins, out, op)
    if found is not None:
        if op.out_index and op.out_index[0] != 0:  # one call's later outputs (attention
            return 0, 0  # weights, h_n/c_n): the work is counted at its first output
        macs, extra = found
        return 2 * macs + extra, macs
    largest = max([_numel(out), *(_numel(s) for s in ins)])
    if _NORMS.match(name):
        return 5 * largest, 0
    if _SOFTMAX.match(name):
        return 3 * largest, 0
    return largest, 0


def total_cost(ops: Iterable[Op]) -> tuple[int, int]:
    """Summed ``(flops, macs)`` of ``ops``."""
    flops = macs = 0
    for op in ops:
        f, m = op_cost(op)
        flops += f
        macs += m
    return flops, macs


def human(n: float) -> str:
    """``1.4 G``-style figure for FLOP counts."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} "
