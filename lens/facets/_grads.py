"""Gradients of facets: ``facets.grad('z')`` after ``trace.log_backward(loss)``.

A facet's gradient is the gradient of the loss with respect to the facet's value, in the
facet's layout. It is found from the gradients ``log_backward`` stored on the facet's
carrier ops (the ops its edits apply at, :class:`~lens.facets._registry.Carrier`):

- a facet that *is* an op's value, up to a permutation (``q``, ``k``, ``v``, ``z``,
  eager ``scores``/``pattern``, the residual facets, ``output``/``h_n``/``c_n``): the
  op's gradient, permuted the same way. Exact: the very tensor autograd computed.
- a facet rebuilt inside a fused op or split out of one (``scores``/``pattern``/
  ``k_expanded``/``v_expanded`` of fused attention, per-head ``result``, per-step recurrent
  states and gates): the facet is rebuilt from the op's saved inputs as a leaf that
  requires grad, the op's output is recomputed from it (the same rewrite an edit uses) and
  the op's stored gradient is backpropagated through that recomputation. Equal to the
  true gradient up to float rounding (the recomputation is eager, not the fused kernel).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..capture.stash import StashKey
from ..capture.template import template_refs
from ..errors import FacetError, PayloadError
from ._graph import payload, records
from ._registry import Carrier, FacetGroup

if TYPE_CHECKING:
    from ..tracing import Trace

_BACKWARD_RAN = StashKey[set[int]]("grads.hooked")  # set by trace.log_backward


def facet_grad(trace: Trace, group: FacetGroup, name: str,
               grad_of: Callable[[int], Tensor | None] | None = None) -> Tensor:
    """The gradient of the loss with respect to facet ``name`` of ``group``, from the
    gradients of its carrier ops: ``op.grad`` (``log_backward``), or ``grad_of(call
    index)`` (gradients taken another way; None: no gradient reached that op)."""
    what = f"facet {name!r} of {group.owner.name()}"
    if grad_of is None and trace.options.save_grads in (False, None):
        raise PayloadError(
            f"The gradient of {what} is read from the gradients of the ops it comes from, "
            "and this trace was captured without gradient capture. Capture with "
            "tl.trace(model, x, save_grads=True), then call trace.log_backward(loss).")
    carriers = group.carriers(trace, name)
    if not carriers:
        raise FacetError(
            f"{what} has no gradient: lens cannot rebuild it as a function of an op's "
            "output (it cannot be edited either, e.g. a fused attention call with dropout "
            "in training mode).")
    stored = grad_of is None
    read = functools.partial(_stored, trace) if grad_of is None else grad_of
    grads = [read(c.op) for c in carriers]
    if all(g is None for g in grads):
        if stored:
            return _no_grad(trace, group, name, carriers[0].op, what)
        return torch.zeros_like(group.value(trace, name))
    if getattr(carriers[0].rewrite, "stepwise", False):
        return _through_recurrence(trace, group, name, carriers, grads)
    total: Tensor | None = None
    for c, g in zip(carriers, grads, strict=True):
        if g is None:
            continue
        part = _direct(g, c) if c.rewrite is None else _through_rewrite(trace, c, name, g)
        total = part if total is None else total + part
    assert total is not None
    return total


def _stored(trace: Trace, ci: int) -> Tensor | None:
    return getattr(records(trace)[ci], "grad", None)


def _no_grad(trace: Trace, group: FacetGroup, name: str, ci: int, what: str) -> Tensor:
    """No gradient reached the carrier op: zeros if every op was watched during a
    backward pass (the loss does not depend on the facet), else say what to do."""
    if trace.options.save_grads is True and trace.stash.get(_BACKWARD_RAN) is not None:
        return torch.zeros_like(group.value(trace, name))
    raise PayloadError(
        f"No gradient is stored for op #{ci} ({records(trace)[ci].func_name}), which "
        f"{what} is read from. Call trace.log_backward(loss) first, and capture with "
        "save_grads=True (a save_grads= selector must include that op).")


def _direct(g: Tensor, c: Carrier) -> Tensor:
    return g.permute(c.perm) if c.perm else g


def op_inputs(trace: Trace, ci: int) -> list[Tensor]:
    """The saved values of op ``ci``'s activation arguments, in ``site.inputs()`` order."""
    rec = records(trace)[ci]
    refs = [r for t in (*rec.args, *rec.kwargs.values()) for r in template_refs(t)]
    return [payload(trace, int(r.op), f"input of op #{ci}") for r in refs]


def _through_rewrite(trace: Trace, c: Carrier, name: str, g: Tensor) -> Tensor:
    """Backpropagate op ``c.op``'s gradient through its recomputation from the facet."""
    value = payload(trace, c.op, f"{name!r}")
    inputs = op_inputs(trace, c.op)
    leaves: list[Tensor] = []

    def as_leaf(old: Tensor, *_: Any) -> Tensor:
        leaf = old.detach().clone().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    with torch.enable_grad():
        full = getattr(c.rewrite, "recompute", None)
        out = full(value, inputs, name, as_leaf) if full is not None \
            else c.rewrite.apply(value, inputs, name, as_leaf)[0]
        (got,) = torch.autograd.grad(out, leaves, g.reshape(out.shape).to(out.dtype),
                                     allow_unused=True)
    return got if got is not None else torch.zeros_like(leaves[0])


def _through_recurrence(trace: Trace, group: FacetGroup, name: str,
                        carriers: tuple[Carrier, ...], grads: list[Tensor | None]) -> Tensor:
    """Rerun the recurrence with a zero added to ``name`` at every step, and
    backpropagate the fused outputs' gradients to those zeros."""
    from ._rnn_math import unroll

    spec = carriers[0].rewrite.spec  # the RnnSpec of a StepRewrite
    what = f"{name!r} of {group.owner.name()}"
    x = payload(trace, spec.x, what)
    hx = [payload(trace, ci, what) for ci in spec.hx]
    weights = [trace.param_values[n].detach() for n in spec.params]
    zeros: dict[tuple[int, int, int], Tensor] = {}

    def hook(facet: str, value: Tensor, layer: int, direction: int, t: int) -> Tensor:
        if facet != name:
            return value
        z = zeros[(layer, direction, t)] = torch.zeros_like(value, requires_grad=True)
        return value + z

    with torch.enable_grad():
        found = unroll(spec, x, hx, weights, hook)
        outs, back = [], []
        for part, g in zip(("output", "h_n", "c_n"), grads, strict=False):
            if g is not None:
                outs.append(found[part])
                back.append(g.to(found[part].dtype))
        keys = list(zeros)
        got = torch.autograd.grad(outs, [zeros[k] for k in keys], back, allow_unused=True)
    out = torch.zeros_like(found[name].detach())
    for (layer, direction, t), gt in zip(keys, got, strict=True):
        if gt is not None:
            out[layer, direction, :, t] = gt
    return out
