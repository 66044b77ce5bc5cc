"""Per-op gradients: ``tl.trace(model, x, save_grads=...)`` then ``trace.log_backward(loss)``.

:class:`GradCapture` is a capture interceptor: for each op whose tensor requires grad it
registers a tensor hook (``Tensor.register_hook``) that stores the gradient flowing
through that op in ``op.grad``, and returns the tensor unchanged. Which ops: a selector
(``save_grads=tl.func('relu')``) or everything (``save_grads=True``). Selectors decidable
while the model runs are applied at once (no hook on other ops); the others (module
outputs, final labels, ordinals) are applied when the gradient arrives, on the finished
trace.

Semantics:

- ``op.grad`` is the gradient of the loss with respect to the op's output tensor *as that
  op produced it* (for a tensor later modified in place, the gradient of the value before
  the in-place op: PyTorch's rule for hooks registered before an in-place change).
- Each pass of a recurrent layer is its own op, so per-pass gradients come out as is.
- Several backward calls accumulate: ``op.grad`` is the sum over calls, as ``Tensor.grad``
  is. Set ``op.grad = None`` (or trace again) to start over.
- Inputs and outputs get their hooks in :func:`log_backward` (they are not ops the model
  runs); an input needs ``requires_grad=True`` to have a gradient.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..capture.interceptors import Interceptor
from ..capture.known import check_names
from ..capture.policy import SelectorPolicy
from ..capture.records import INPUT, OUTPUT, OpRecord
from ..capture.stash import StashKey
from ..capture.template import tensor_leaves
from ..errors import PayloadError
from ..selectors import ALL, Selector, coerce
from .op import Op

if TYPE_CHECKING:
    from .traces import Trace


class _Store:
    """The tensor hook of one op: adds the incoming gradient to the op's record.

    It holds the record weakly. The hook lives in the tensor's autograd node, which the
    op's payload (that same tensor) keeps alive from C++: a strong reference would close a
    loop the cycle collector cannot see through, and every trace would leak. A selector
    decided on the finished trace reaches the trace through ``owner`` (weakly too)."""

    __slots__ = ("op", "check", "owner")

    def __init__(self, op: OpRecord, check: SelectorPolicy | None,
                 owner: GradCapture | None = None) -> None:
        self.op = weakref.ref(op)
        self.check = check  # decided when the gradient arrives, on the finished trace
        self.owner = owner

    def __call__(self, grad: Tensor) -> None:
        rec = self.op()
        if rec is None:  # the trace is gone: nobody can read this gradient
            return
        if self.check is not None:
            ref = self.owner.trace if self.owner is not None else None
            trace = ref() if ref is not None else None
            if trace is None or not self.check.decide(Op(trace, rec), "final"):
                return
        old = getattr(rec, "grad", None)
        rec.grad = grad if old is None else old + grad


class GradCapture(Interceptor):
    """Interceptor that stores gradients of matching ops in ``op.grad`` (see module doc)."""

    def __init__(self, spec: Any = True, module_addresses: Collection[str] | None = None
                 ) -> None:
        sel = coerce(spec, module_addresses=module_addresses)
        if module_addresses is not None:
            sel.validate(module_addresses=frozenset(module_addresses))
        check_names(sel, module_addresses)
        self.selector: Selector = sel
        self._all = sel is ALL
        self._live = sel.timing == "live"
        self._deferred = None if self._live else SelectorPolicy(sel)
        self.trace: weakref.ref[Trace] | None = None  # the finished trace (see bind)

    def bind(self, trace: Trace) -> None:
        """The trace this run built: gradients decided on final labels look ops up there."""
        self.trace = weakref.ref(trace)

    def __call__(self, op: Any, value: Tensor) -> Tensor:
        if not value.requires_grad:
            return value
        if self._all or (self._live and self.selector(op)):
            value.register_hook(_Store(op, None))  # type: ignore[no-untyped-call]
        elif not self._live:
            value.register_hook(  # type: ignore[no-untyped-call]
                _Store(op, self._deferred, self))
        return value

    def __repr__(self) -> str:
        return f"GradCapture({self.selector!r})"


# Call indices of the inputs/outputs already given a hook (kept on the trace), so
# repeated backward calls do not hook them twice.
_HOOKED = StashKey[set[int]]("grads.hooked")


def log_backward(trace: Trace, loss: Tensor, retain_graph: bool = False) -> None:
    """Run ``loss.backward()`` and store each captured op's gradient in ``op.grad``.

    Needs a trace captured with ``save_grads=True`` (or a selector). Calling it again
    (with ``retain_graph=True`` on the earlier calls) adds to the stored gradients.
    """
    spec = trace.options.save_grads
    if spec is False or spec is None:
        raise PayloadError(
            "This trace was captured without gradient capture, so backward has nowhere to "
            "store gradients. Re-capture with tl.trace(model, x, save_grads=True) (or "
            "save_grads=tl.func('relu') for some ops), then call trace.log_backward(loss).")
    if not isinstance(loss, Tensor) or not loss.requires_grad:
        raise PayloadError(
            "log_backward needs a loss tensor that requires grad, computed from the traced "
            "forward's output (e.g. trace[trace.output_layers[0]].out.sum()). A trace taken "
            "with detach=True, under torch.no_grad(), or of a model with no trainable "
            "parameters and inputs without requires_grad has no graph to go back through.")
    _hook_sources(trace, spec)
    loss.backward(retain_graph=retain_graph)  # type: ignore[no-untyped-call]


def _hook_sources(trace: Trace, spec: Any) -> None:
    sel = coerce(spec, module_addresses=set(trace.module_info))
    sel = sel.bind_ordinals(trace.ops)
    outputs = [t for _, t in tensor_leaves(trace.output, ())]
    n_out = 0
    hooked = trace.stash.setdefault(_HOOKED, set)
    for op in trace.ops:
        if op.kind not in (INPUT, OUTPUT):
            continue
        value = op.payload
        if op.kind == OUTPUT:
            if value is None and n_out < len(outputs):
                value = outputs[n_out]
            n_out += 1
        if (op.call_index in hooked or not isinstance(value, Tensor) or not value.requires_grad
                or not sel(op)):
            continue
        value.register_hook(_Store(op.record, None))  # type: ignore[no-untyped-call]
        hooked.add(op.call_index)


__all__ = ["GradCapture", "log_backward"]
