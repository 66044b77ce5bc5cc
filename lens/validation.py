"""``tl.validate``: check, by re-execution, that every saved payload is the true value.

Following the reference system's procedure: each op's recorded function is re-run on its
parents' saved payloads (through the one replay :class:`Interpreter`, so random ops redraw
from their recorded generator state and every op runs under its recorded mode) and must
reproduce the op's own payload; then each parent is perturbed and the op's output must
change. The perturbation provably changes the parent (an offset at least as large as
every value the op sees, so ``1e20`` operands do not absorb it), and ops whose output
legitimately ignores an input are exempt with the reason in the report. The traced
model's output must also equal an untraced run from the same RNG state.

Each run gets a deep copy of the inputs and the model's state as it was (parameters,
buffers, attributes the forward reassigns); the model and the caller's generators are left
bit-identical.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .capture import check_model
from .capture.args import check_input_kwargs, check_options
from .capture.records import OP
from .errors import expect
from .replay.interpreter import Interpreter, tensors_equal
from .replay.perturb import exemption, operands, perturbed, scale_of
from .replay.state import ModelState
from .tracing import Op, Trace
from .tracing import trace as _trace

# Ops whose output depends only on the shape/dtype/device of (some) inputs, or that can
# legitimately ignore a perturbed input (selection, masking, saturation).
_MAY_IGNORE = frozenset({
    "zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones",
    "new_empty", "new_full", "new_tensor", "expand_as", "view_as", "reshape_as", "type_as",
    "to", "size", "max", "min", "amax", "amin", "argmax", "argmin", "topk", "sort",
    "argsort", "median", "mode", "kthvalue", "clamp", "clip", "relu", "relu6", "hardtanh",
    "where", "masked_fill", "masked_fill_", "maximum", "minimum", "__setitem__", "sign",
    "floor", "ceil", "round", "trunc", "eq", "ne", "lt", "le", "gt", "ge", "__eq__",
    "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "isnan", "isinf", "isfinite",
    "logical_not", "logical_and", "logical_or", "all", "any", "bool", "copy_", "zero_",
    "fill_", "detach", "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool2d",
    "embedding", "index_select", "gather", "__getitem__", "cross_entropy", "nll_loss",
    "threshold", "hardsigmoid", "hardswish", "_max_pool2d", "scaled_dot_product_attention",
    "triu", "tril", "__and__", "__or__", "bitwise_and",
    # a storage refresh ignores an earlier value that a write through a view overwrote
    "refresh",
})


@dataclass
class ValidationReport:
    """Truthy when every check passed; ``failures`` names each failing op and why."""

    model_name: str
    checked: int = 0
    perturbed: int = 0
    exempt: list[tuple[str, str]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trace: Trace | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        head = (f"Validation of {self.model_name}: {'PASSED' if self.ok else 'FAILED'} "
                f"({self.checked} ops recomputed, {self.perturbed} perturbation checks, "
                f"{len(self.exempt)} exempt).")
        lines = [head] + [f"  FAIL {label}: {why}" for label, why in self.failures]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__


def validate(model: Any, *args: Any, input_kwargs: dict[str, Any] | None = None,
             perturb: bool = True, seed: int = 0) -> ValidationReport:
    """Trace ``model`` and check every saved payload by re-executing the graph."""
    check_model(model)
    check_input_kwargs("tl.validate", input_kwargs)
    check_options("tl.validate", perturb=perturb)
    expect(seed, int, "tl.validate(..., seed=)", "an int")
    kwargs = dict(input_kwargs or {})
    state = ModelState(model)
    devices = _cuda_devices()
    with torch.random.fork_rng(devices=devices):
        try:
            expected, tr, note = _runs(model, args, kwargs, state)
            report = ValidationReport(tr.model_name, trace=tr)
            if note:
                report.notes.append(note)
            _check_outputs(tr, expected, report)
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for op in tr.ops:
                    if op.kind == OP:
                        _check_op(tr, op, report, perturb, gen)
        finally:
            state.restore()
    return report


def _runs(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
          state: ModelState) -> tuple[Any, Trace, str]:
    """An untraced and a traced run from the same RNG state and model state, each on
    its own copy of the inputs; with grad enabled if the forward needs it."""
    start = torch.get_rng_state()

    def both() -> tuple[Any, Trace]:
        torch.set_rng_state(start)
        expected = model(*copy.deepcopy(args), **copy.deepcopy(kwargs))
        state.restore()
        torch.set_rng_state(start)
        a, kw = copy.deepcopy(args), copy.deepcopy(kwargs)
        tr = _trace(model, *a, input_kwargs=kw, save=True, keep_orphans=True)
        _own_payloads(tr, state.storages())
        state.restore()
        return expected, tr

    try:
        with torch.no_grad():
            return (*both(), "")
    except RuntimeError as e:  # e.g. a forward that calls torch.autograd.grad
        state.restore()
        with torch.enable_grad():
            expected, tr = both()
        return expected, tr, (f"ran with grad enabled: under torch.no_grad() the forward "
                              f"raised {type(e).__name__}: {str(e)[:120]}")


def _own_payloads(tr: Trace, written: set[int]) -> None:
    """Payloads that share storage with the model's tensors (buffers, written in place
    by the forward or not) are copied, so putting the model back leaves them alone."""
    if not written:
        return
    for op in tr.records:
        p = op.payload
        if isinstance(p, Tensor) and p.untyped_storage().data_ptr() in written:
            op.payload = p.clone()


def _cuda_devices() -> list[int]:
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        return [torch.cuda.current_device()]
    return []
def _check_outputs(tr: Trace, expected: Any, report: ValidationReport) -> None:
    from .capture.template import tensor_leaves

    leaves = [t for _, t in tensor_leaves(expected, ())]
    outs = [op for op in tr.ops if op.is_output]
    if len(leaves) != len(outs):
        report.failures.append(("output", f"model returned {len(leaves)} tensors, trace "
                                          f"recorded {len(outs)} outputs"))
        return
    for t, op in zip(leaves, outs, strict=True):
        if tensors_equal(t, op.out):
            continue
        got = op.out
        if (t.is_floating_point() and t.shape == got.shape
                and torch.allclose(t, got, rtol=1e-5, atol=1e-6, equal_nan=True)):
            # Some modules pick a fused kernel only when no torch function mode is active
            # (nn.MultiheadAttention's fast path); the results agree to rounding.
            diff = (t - got).abs().max().item()
            report.notes.append(f"{op.label}: traced output equals an untraced run up to "
                                f"{diff:.2e} (a fused fast path is skipped while tracing)")
        else:
            report.failures.append((op.label, "traced output differs from an untraced run"))


def _check_op(tr: Trace, op: Op, report: ValidationReport, perturb: bool,
              gen: torch.Generator) -> None:
    if op.func is torch.autograd.grad:
        report.exempt.append((op.label, "torch.autograd.grad runs the autograd engine over "
                                        "the capture's graph; it is not re-executable"))
        return
    interp = Interpreter(tr)
    try:
        again = interp.call_function(op)
    except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal
        report.failures.append((op.label, f"re-execution raised {type(e).__name__}: {e}"))
        return
    report.checked += 1
    if op.func_name in _UNINITIALISED:
        same = again.shape == op.out.shape and again.dtype == op.out.dtype
        if not same:
            report.failures.append((op.label, "re-execution gives another shape or dtype"))
        report.exempt.append((op.label, "uninitialised memory: metadata compared only"))
        return
    if not tensors_equal(again, op.out):
        report.failures.append((op.label, "re-executing the recorded function on the "
                                          "parents' saved outputs does not reproduce it"))
        return
    if perturb:
        for parent_call in op.parent_idx:
            _perturb_one(tr, op, parent_call, report, gen)


def _perturb_one(tr: Trace, op: Op, parent_call: int, report: ValidationReport,
                 gen: torch.Generator) -> None:
    parent = tr.records[parent_call]
    p = parent.out
    if not isinstance(p, Tensor) or not p.is_floating_point() or p.numel() == 0:
        return
    # first an offset at the parent's own scale, then at the scale of everything the op sees
    for scale in (scale_of([p]), scale_of([p, op.out, *operands(tr, op)])):
        try:
            changed = Interpreter(tr, values={parent_call: perturbed(p, scale, gen)}
                                  ).call_function(op)
        except Exception:  # noqa: BLE001 - the perturbed value was not a legal input
            report.exempt.append((op.label, f"perturbing {parent.label} makes it invalid"))
            return
        if not tensors_equal(changed, op.out):
            report.perturbed += 1
            return
    report.perturbed += 1
    why = exemption(tr, op, parent_call)
    if why is None and (op.func_name in _MAY_IGNORE or op.type in _MAY_IGNORE):
        why = "the op can ignore an input's values (shape-only, selection or saturation)"
    if why is not None:
        report.exempt.append((op.label, f"output ignores values of {parent.label}: {why}"))
    else:
        report.failures.append((op.label, f"output did not change when parent "
                                          f"{parent.label} was perturbed"))


_UNINITIALISED = frozenset({"empty", "empty_like", "new_empty", "empty_strided"})
