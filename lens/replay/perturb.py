"""Perturbations for ``tl.validate``: values that provably change a parent, and the
reasons an op's output may legitimately ignore one.

A perturbed parent is ``p + offset`` with ``|offset|`` between ``scale`` and ``2 * scale``
at every element, pointing towards zero, ``scale`` at least the largest finite magnitude
in ``p`` (and, on the second try, in everything the op sees). So every finite element
changes by at least its own magnitude, constant tensors included (a permutation would
leave them unchanged), and ``1e20``-sized operands elsewhere cannot absorb the change.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..capture.records import Ref
from ..tracing import Op, Trace


def scale_of(tensors: Iterable[Tensor]) -> float:
    """The largest finite magnitude among the floating ``tensors`` (at least 1)."""
    scale = 1.0
    for t in tensors:
        if isinstance(t, Tensor) and t.is_floating_point() and t.numel():
            finite = t.detach().abs().nan_to_num(0.0, posinf=0.0, neginf=0.0)
            scale = max(scale, float(finite.amax()))
    return scale


def perturbed(p: Tensor, scale: float, gen: torch.Generator) -> Tensor:
    """``p`` moved towards (and past) zero by an offset of magnitude in
    ``[scale, 2 * scale]`` (random sign where ``p`` is 0): every finite element changes
    and none overflows."""
    limit = float(torch.finfo(p.dtype).max) / 4
    scale = min(scale, limit)
    size = (torch.rand(p.shape, generator=gen, dtype=torch.float64) + 1.0) * scale
    coin = torch.where(torch.rand(p.shape, generator=gen) < 0.5, -1.0, 1.0).double()
    base = p.detach().double().cpu()
    sign = torch.where(base == 0, coin, -torch.sign(base))
    return (base + sign * size).to(device=p.device, dtype=p.dtype)


def exemption(tr: Trace, op: Op, parent_call: int) -> str | None:
    """Why ``op``'s output may not change when parent ``parent_call`` is perturbed, or
    None when it must change."""
    out = op.out
    positions = [i for i, a in enumerate(op.args) if isinstance(a, Ref) and a.op == parent_call]
    if op.func_name == "batch_norm" and _batch_stats(op, positions):
        return "train-mode batch_norm normalises with batch statistics; running ones ignored"
    if out.numel() == 0 or not out.is_floating_point():
        return "output is empty or not floating-point"
    if bool(out.isnan().all()):
        return "output is NaN whatever this input is (another operand is NaN)"
    others = [t for c, t in _operand_items(tr, op) if c != parent_call]
    if any(t.is_floating_point() and t.numel() and not bool(t.any()) for t in others):
        return "another operand is all zero (zero-weighted)"
    flat = out.reshape(-1)
    if bool((flat == flat[0]).all()):
        return "output is constant"
    return None


def _batch_stats(op: Op, positions: list[int]) -> bool:
    """Whether a batch_norm call ran in training mode and ``positions`` hold its
    running statistics."""
    if op.func is F.batch_norm:
        running, at = {1, 2}, 5
    else:  # torch.batch_norm(input, weight, bias, running_mean, running_var, training, ...)
        running, at = {3, 4}, 5
    training = op.kwargs.get("training", op.args[at] if len(op.args) > at else False)
    return bool(training) and bool(running & set(positions))


def _operand_items(tr: Trace, op: Op) -> list[tuple[int | str, Tensor]]:
    items: list[tuple[int | str, Tensor]] = []
    for c in op.parent_idx:
        rec = tr.op_at_call(c)
        if rec is not None and isinstance(rec.out, Tensor):
            items.append((c, rec.out))
    items += [(n, tr.param_values[n]) for n in op.params if n in tr.param_values]
    return items


def operands(tr: Trace, op: Op) -> list[Tensor]:
    """Every tensor ``op`` read: its parents' saved values and its parameters."""
    return [t for _, t in _operand_items(tr, op)]
