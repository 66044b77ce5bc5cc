"""Text rendering of ops, traces and summaries."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import flops

if TYPE_CHECKING:
    from .op import Op
    from .traces import Trace


def nbytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def shape(s: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in s) if s else "scalar"


def count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def op_report(op: Op) -> str:
    trace = op.trace
    n = len(trace.ops)
    passes = f" (pass {op.pass_num}/{op.num_passes})" if op.num_passes > 1 else ""
    lines = [f"Layer {op.layer_label}{passes}, operation {op.index + 1}/{n}:"]
    dtype = str(op.dtype) if op.dtype is not None else "-"
    lines.append(f"\tOutput tensor: shape={tuple(op.shape)}, dtype={dtype}, "
                 f"size={nbytes(op.nbytes)}")
    if op.payload is not None:
        body = repr(op.payload.detach()[tuple(slice(0, 5) for _ in op.shape[-2:])]
                    if op.shape else op.payload.detach())
        lines.append("\t\t" + body.replace("\n", "\n\t\t") + ("..." if op.numel > 25 else ""))
    else:
        lines.append("\t\t(payload not saved)")
    if op.params:
        shapes = ", ".join(str(tuple(s)) for _, s in op.params_used)
        lines.append(f"\tParams: computed from params with shape {shapes}; "
                     f"{op.num_params} params total")
    else:
        lines.append("\tParams: no params used")
    lines.append(f"\tParent layers: {', '.join(op.parent_labels) or '-'}")
    lines.append(f"\tChild layers: {', '.join(op.child_labels) or '-'}")
    lines.append(f"\tFunction: {op.func_name}" +
                 (f" (grad_fn: {op.grad_fn_name})" if op.grad_fn_name else ""))
    cfg = op.func_config
    if cfg:
        lines.append("\tConfig: " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    lines.append(f"\tComputed inside module: {op.module_call or '-'}")
    if op.output_of:
        lines.append(f"\tOutput of modules: {', '.join(c.key for c in op.output_of)}")
    lines.append(f"\tTime elapsed: {op.elapsed:.3E}s")
    if op.fired:
        lines.append(f"\tInterventions: {', '.join(op.intervention_names)}")
    lines.append(f"\tLookup keys: {', '.join(str(k) for k in op.lookup_keys)}")
    return "\n".join(lines)


def trace_report(trace: Trace) -> str:
    structure = (f"recurrent (at most {trace.max_passes} passes)" if trace.is_recurrent
                 else "purely feedforward")
    saved = [op for op in trace.ops if op.has_payload]
    param_ops = sum(1 for op in trace.ops if op.params)
    lines = [
        f"Trace of {trace.model_name} forward pass:",
        f"\tModel structure: {structure}; {len(trace.modules)} total modules."
        + (" HALTED early." if trace.halted else ""),
        f"\t{len(trace.ops)} tensors ({nbytes(trace.total_nbytes)}) computed in forward pass; "
        f"{len(saved)} tensors ({nbytes(trace.saved_nbytes)}) saved.",
        f"\t{param_ops} parameter operations ({trace.num_params} params total).",
        f"\tTime elapsed: {trace.elapsed:.3f}s",
        "\tModule hierarchy:",
    ]
    for address in trace.modules:
        if address:
            depth = address.count(".")
            lines.append("\t\t" + "    " * depth + address)
    lines.append("\tLayers:")
    for op in trace.ops:
        passes = f" ({op.pass_num}/{op.num_passes} passes)" if op.num_passes > 1 else ""
        lines.append(f"\t\t{op.index}: {op.label}{passes}")
    return "\n".join(lines)


def summary_rows(trace: Trace, depth: int = 1) -> tuple[list[tuple[str, ...]], list[str]]:
    """The summary's table (header first) and its total lines (model name first)."""
    rows: list[tuple[str, ...]] = [("Layer", "Output shape", "Params", "Ops", "FLOPs")]
    inputs = [op for op in trace.ops if op.is_input]
    for op in inputs:
        rows.append((op.label, shape_list(op.shape), "0", "-", "-"))
    for address, mod in trace.modules.items():
        if not address or address.count(".") >= depth or not mod.calls:
            continue
        outs = [o for call in mod.calls for o in call.outputs]
        out_shape = shape_list(outs[-1].shape) if outs else "-"
        calls = f" x{len(mod.calls)}" if len(mod.calls) > 1 else ""
        rows.append((f"{address} ({mod.class_name}){calls}", out_shape,
                     count(mod.num_params), str(len(mod.ops)),
                     flops.human(flops.total_cost(mod.ops)[0]).strip()))
    for op in trace.ops:
        if op.is_output:
            rows.append((op.label, shape_list(op.shape), "-", "-", "-"))
    edges = sum(len(op.parent_idx) for op in trace.ops)
    # As the reference system counts: tensor operations, not the input/output/buffer nodes.
    computed = sum(not (op.is_input or op.is_output or op.is_buffer) for op in trace.ops)
    trainable = sum(m[1] for m in trace.param_meta.values() if m[3])
    total_flops, total_macs = flops.total_cost(trace.ops)
    tail = [
        f"Model: {trace.model_name}" + (" (halted early)" if trace.halted else ""),
        f"Params: {trace.num_params:,} unique; trainable: {trainable:,}",
        f"Ops: {computed} total",
        f"Edges: {edges} total",
        f"Forward FLOPs: {flops.human(total_flops)}FLOPs MACs: {flops.human(total_macs)}FLOPs",
        f"Saved: {sum(op.has_payload for op in trace.ops)} payloads, "
        f"{nbytes(trace.saved_nbytes)}",
    ]
    return rows, tail


def summary(trace: Trace, depth: int = 1) -> str:
    rows, tail = summary_rows(trace, depth)
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(r: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    body = [sep, line(rows[0]), sep, *(line(r) for r in rows[1:]), sep]
    return "\n".join([tail[0], *body, *tail[1:]])


def shape_list(s: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in s) + "]"
