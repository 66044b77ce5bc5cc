"""``tl.validate``: check, by re-execution, that every saved payload is the true value.

Following the reference system's procedure: each op's recorded function is re-run on its
parents' saved payloads and must reproduce the op's own payload; then each parent is
replaced by random values, and the op's output must change (with exemptions for ops whose
output legitimately ignores an input: shape-only ops, selections, multiplication by zero).
The traced model's output must also equal an untraced run from the same RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .capture import check_model
from .capture.args import check_input_kwargs, check_options
from .capture.records import OP
from .errors import expect
from .replay.interpreter import Interpreter, is_stochastic, tensors_equal
from .trace import Op, Trace
from .trace import trace as _trace

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
    rng = torch.get_rng_state()
    with torch.no_grad():
        expected = model(*args, **kwargs)
        torch.set_rng_state(rng)
        tr = _trace(model, *args, input_kwargs=kwargs, save=True, keep_orphans=True)
    report = ValidationReport(tr.model_name, trace=tr)
    _check_outputs(tr, expected, report)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for op in tr.ops:
            if op.kind == OP:
                _check_op(tr, op, report, perturb, gen)
    return report


def _check_outputs(tr: Trace, expected: Any, report: ValidationReport) -> None:
    from .capture.engine import _tensor_leaves

    leaves = [t for _, t in _tensor_leaves(expected, ())]
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
    if is_stochastic(op):
        report.exempt.append((op.label, "stochastic op"))
        return
    interp = Interpreter(tr)
    try:
        again = interp.call_function(op)
    except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal
        report.failures.append((op.label, f"re-execution raised {type(e).__name__}: {e}"))
        return
    report.checked += 1
    if not tensors_equal(again, op.out):
        report.failures.append((op.label, "re-executing the recorded function on the "
                                          "parents' saved outputs does not reproduce it"))
        return
    if not perturb:
        return
    for parent_call in op.parent_idx:
        parent = tr._by_call[parent_call]
        p = parent.out
        if not isinstance(p, Tensor) or not p.is_floating_point() or p.numel() == 0:
            continue
        spread = p.detach().float().std().nan_to_num(1.0).item() if p.numel() > 1 else 1.0
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) * (
            max(spread, 1e-3) + 1.0) + 0.5
        perturbed = Interpreter(tr, values={parent_call: noise})
        try:
            changed = perturbed.call_function(op)
        except Exception:  # noqa: BLE001 - the perturbed value was not a legal input
            report.exempt.append((op.label, f"perturbing {parent.label} makes it invalid"))
            continue
        report.perturbed += 1
        if tensors_equal(changed, op.out):
            if _may_ignore(op, parent_call):
                report.exempt.append((op.label, f"output ignores values of {parent.label}"))
            else:
                report.failures.append((op.label, f"output did not change when parent "
                                                  f"{parent.label} was perturbed"))


def _may_ignore(op: Op, parent_call: int) -> bool:
    if op.func_name in _MAY_IGNORE or op.type in _MAY_IGNORE:
        return True
    out = op.out
    if out.numel() == 0 or not out.is_floating_point():
        return True
    flat = out.reshape(-1)
    return bool((flat == flat[0]).all())  # constant output (e.g. multiplied by zero)
