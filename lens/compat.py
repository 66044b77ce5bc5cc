"""``tl.compat.report(model, x)``: what lens can and cannot see in this model, checked.

One row per concern (wrapper, compiled parts, module kinds, fused fast paths, parameter
sharing, devices, the trace itself), each ``pass``, ``unsupported`` (with the workaround)
or ``not_tested``. Statuses come from inspecting the model and from one ``tl.trace`` of it
on the given inputs, not from a list of known model names.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .tracing import Trace, trace

Status = Literal["pass", "unsupported", "not_tested"]

# Module kinds whose whole computation is one torch call, so lens records one op per call.
_ONE_OP_KINDS = (nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase)
# Module kinds with an eval-mode fused fast path that torch turns off under tracing.
_FAST_PATH_KINDS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)
_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@dataclass(frozen=True)
class CompatRow:
    """One concern: its status, what was seen, and what to do when it is unsupported."""

    concern: str
    status: Status
    detail: str
    workaround: str = ""


@dataclass(frozen=True)
class CompatReport:
    """The rows of ``tl.compat.report``; ``.ok`` when nothing is unsupported."""

    model_name: str
    rows: tuple[CompatRow, ...]

    @property
    def ok(self) -> bool:
        return all(r.status != "unsupported" for r in self.rows)

    def __getitem__(self, concern: str) -> CompatRow:
        for row in self.rows:
            if row.concern == concern:
                return row
        names = ", ".join(r.concern for r in self.rows)
        raise KeyError(f"No compat row {concern!r}; the rows are: {names}.")

    def __iter__(self) -> Iterator[CompatRow]:
        return iter(self.rows)

    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table (paste it into a bug report)."""
        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")
        lines = [f"Compatibility of {self.model_name} with lens", "",
                 "| concern | status | detail | workaround |", "|---|---|---|---|"]
        lines += [f"| {r.concern} | {r.status} | {cell(r.detail)} | {cell(r.workaround)} |"
                  for r in self.rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        width = max(len(r.concern) for r in self.rows)
        lines = [f"Compatibility of {self.model_name} with lens: "
                 f"{'ok' if self.ok else 'some parts unsupported'}"]
        for r in self.rows:
            lines.append(f"  {r.concern:<{width}}  {r.status:<11}  {r.detail}")
            if r.workaround:
                lines.append(f"  {'':<{width}}  {'':<11}  workaround: {r.workaround}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("concern", "status", "detail", "workaround"))
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in
                             (r.concern, r.status, r.detail, r.workaround)) + "</tr>"
            for r in self.rows)
        title = html.escape(f"Compatibility of {self.model_name} with lens")
        return f"<table><caption>{title}</caption><tr>{head}</tr>{body}</table>"


def report(model: Any, *args: Any, input_kwargs: dict[str, Any] | None = None) -> CompatReport:
    """Check ``model`` on these inputs (as ``tl.trace(model, *args)`` takes them).

    Runs the model at most twice: one ``tl.trace`` without saving payloads, and one plain
    no-grad forward when a module with a fused eval fast path needs comparing.
    """
    kwargs = dict(input_kwargs or {})
    wrapper, eager = _wrapper_row(model)
    traced, error = _try_trace(eager, args, kwargs)
    rows = [wrapper, _compiled_row(eager if eager is not None else model),
            _module_kinds_row(eager, traced), _fast_path_row(eager, traced, args, kwargs),
            _sharing_row(eager, traced), _devices_row(eager, traced, args, kwargs),
            _trace_row(eager, traced, error)]
    return CompatReport(type(model).__name__, tuple(rows))


def _try_trace(model: nn.Module | None, args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> tuple[Trace | None, BaseException | None]:
    if model is None:
        return None, None
    try:
        return trace(model, *args, input_kwargs=kwargs, save=False), None
    except Exception as e:  # the report says what failed instead of raising
        return None, e


def _class_names(module: nn.Module) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


def _is_compiled(module: nn.Module) -> bool:
    """torch.compile's wrapper, known without importing torch._dynamo: its class is named
    ``OptimizedModule`` and holds the eager module as ``_orig_mod``."""
    return ("OptimizedModule" in _class_names(module)
            and isinstance(getattr(module, "_orig_mod", None), nn.Module))


def _is_fsdp(module: nn.Module) -> bool:
    return bool(_class_names(module) & {"FullyShardedDataParallel", "FSDPModule"})


def _wrapper_row(model: Any) -> tuple[CompatRow, nn.Module | None]:
    """The wrapper row, and the eager module the other checks trace (None: nothing to)."""
    name = type(model).__name__
    if isinstance(model, torch.jit.ScriptModule):
        return CompatRow("wrapper", "unsupported", f"{name} is TorchScript: its ops run in "
                         "the TorchScript interpreter, which lens cannot see into.",
                         "Trace the eager nn.Module you scripted."), None
    if _is_compiled(model):
        return CompatRow("wrapper", "unsupported", f"{name} is a torch.compile wrapper: "
                         "compiled graphs hide their ops. The other rows check "
                         "model._orig_mod.", "tl.trace(model._orig_mod, ...)"), model._orig_mod
    if _is_fsdp(model):
        return CompatRow("wrapper", "unsupported", f"{name} is FSDP: parameters are "
                         "sharded and gathered inside hooks, so ops see flat shards.",
                         "Trace the unwrapped model on one device (or inside "
                         "FSDP.summon_full_params)."), None
    if isinstance(model, nn.DataParallel):
        if len(model.device_ids) > 1:
            return CompatRow("wrapper", "unsupported", f"DataParallel over devices "
                             f"{model.device_ids}: replicas run in worker threads, where "
                             "lens's function mode is not active. The other rows check "
                             "model.module.", "tl.trace(model.module, ...)"), model.module
        return CompatRow("wrapper", "pass", "DataParallel on at most one device runs "
                         "model.module in this thread; module addresses start with "
                         "'module.'."), model
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return CompatRow("wrapper", "not_tested", "DistributedDataParallel: lens's tests do "
                         "not cover it; addresses start with 'module.'.",
                         "tl.trace(model.module, ...)"), model
    if not isinstance(model, nn.Module):
        return CompatRow("wrapper", "not_tested", f"{name} is not an nn.Module; lens traces "
                         "the torch calls it makes but it has no modules to inspect."), None
    return CompatRow("wrapper", "pass", f"{name} is a plain nn.Module."), model


def _compiled_row(model: Any) -> CompatRow:
    if not isinstance(model, nn.Module):
        return CompatRow("compiled parts", "not_tested", "No nn.Module to inspect.")
    hidden = [(a, type(m).__name__) for a, m in model.named_modules()
              if a and (isinstance(m, torch.jit.ScriptModule) or _is_compiled(m))]
    kinds = dict(hidden)
    outer = [(a, kinds[a]) for a in _outermost(list(kinds))]
    if not outer:
        return CompatRow("compiled parts", "pass", "No TorchScript or torch.compile "
                         "submodule (scripted functions called from forward are not "
                         "detected).")
    names = ", ".join(f"{a!r} ({c})" for a, c in outer)
    return CompatRow("compiled parts", "unsupported", f"Compiled or scripted submodules: "
                     f"{names}; their ops are invisible to lens.",
                     "Put the eager module back before tracing, e.g. "
                     f"model.{outer[0][0]} = <the module before torch.jit.script/compile>.")


def _outermost(addresses: list[str]) -> list[str]:
    """The addresses not inside another one of them, shown quoted ('(root)' for '')."""
    if "" in addresses:
        return ["(root)"]
    return [a for a in addresses if not any(a.startswith(b + ".") for b in addresses)]


def _module_kinds_row(model: nn.Module | None, traced: Trace | None) -> CompatRow:
    if model is None:
        return CompatRow("module kinds", "not_tested", "No eager module to inspect.")
    found = [(a, m) for a, m in model.named_modules() if isinstance(m, _ONE_OP_KINDS)]
    if not found:
        return CompatRow("module kinds", "pass", "No module kind that lens records as one "
                         "fused op (MultiheadAttention, RNN/LSTM/GRU and their cells).")
    if traced is None:
        return CompatRow("module kinds", "not_tested", "Fused module kinds present ("
                         + ", ".join(a for a, _ in found) + ") but the trace did not run.")
    parts = []
    for address, module in found:
        rec = traced.modules.get(address)
        calls = rec.calls if rec is not None else []
        if not calls:
            parts.append(f"{address!r} ({type(module).__name__}) did not run")
            continue
        types = sorted({op.type for op in calls[0].ops if op.kind not in ("input", "output")})
        parts.append(f"{address!r} ({type(module).__name__}): {' + '.join(types) or 'no'} "
                     "ops per call")
    return CompatRow("module kinds", "pass", "Recorded as whole ops, not their internal "
                     "steps: " + "; ".join(parts) + ". Read heads and states through "
                     "trace.facets.")


def _fast_path_row(model: nn.Module | None, traced: Trace | None, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> CompatRow:
    if model is None:
        return CompatRow("fast paths", "not_tested", "No eager module to inspect.")
    found = _outermost([a for a, m in model.named_modules() if isinstance(m, _FAST_PATH_KINDS)])
    if not found:
        return CompatRow("fast paths", "pass", "No module with a fused eval fast path.")
    if model.training:
        return CompatRow("fast paths", "pass", "The model is in training mode: the fused "
                         "fast path of " + ", ".join(found) + " is off with or without lens.")
    if traced is None:
        return CompatRow("fast paths", "not_tested", "The trace did not run.")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        plain = model(*args, **kwargs)
    worst = _max_difference(plain, traced.output)
    scale = max((float(t.detach().abs().max()) for t in _leaves(plain) if t.numel()),
                default=0.0)
    where = ", ".join(found)
    if worst is not None and worst <= _TOLERANCE["atol"] + _TOLERANCE["rtol"] * scale:
        return CompatRow("fast paths", "pass", f"Under tracing torch takes the unfused path "
                         f"of {where}; its output equals the no-grad fast path's "
                         f"(max difference {worst:.2g}).")
    seen = "different output structure" if worst is None else f"max difference {worst:.3g}"
    return CompatRow("fast paths", "unsupported", f"Tracing turns off the fused fast path "
                     f"of {where}, and the traced output differs from the untraced no-grad "
                     f"forward ({seen}).", "Compare against the unfused path: "
                     "torch.backends.mha.set_fastpath_enabled(False), or model.train() with "
                     "dropout 0, when running without lens.")


def _max_difference(a: Any, b: Any) -> float | None:
    """Largest |a - b| over matching tensor leaves (NaN-equal), None if they do not match."""
    la, lb = _leaves(a), _leaves(b)
    if len(la) != len(lb) or any(x.shape != y.shape for x, y in zip(la, lb, strict=True)):
        return None
    worst = 0.0
    for x, y in zip(la, lb, strict=True):
        x, y = x.detach().to_dense().double(), y.detach().to_dense().double()
        same = (x == y) | (x.isnan() & y.isnan())
        diff = torch.where(same, torch.zeros_like(x), (x - y).abs())
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    return worst


def _leaves(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj.to_padded_tensor(0.0) if obj.is_nested else obj]
    if isinstance(obj, (tuple, list)):
        return [t for x in obj for t in _leaves(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in _leaves(x)]
    return []


def _sharing_row(model: nn.Module | None, traced: Trace | None) -> CompatRow:
    if model is None:
        return CompatRow("parameter sharing", "not_tested", "No eager module to inspect.")
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    tied = [names for names in groups.values() if len(names) > 1]
    if not tied:
        return CompatRow("parameter sharing", "pass", "No parameter is shared.")
    shown = "; ".join(" = ".join(names) for names in tied)
    if traced is None:
        return CompatRow("parameter sharing", "not_tested", f"Tied: {shown}; the trace did "
                         "not run.")
    unique = sum(p.numel() for p in model.parameters())
    listed = [[n for n in names if n in traced.params] for names in tied]
    if traced.num_params == unique and all(len(names) == 1 for names in listed):
        keys = ", ".join(repr(names[0]) for names in listed)
        return CompatRow("parameter sharing", "pass", f"Tied: {shown}. lens lists each "
                         f"once ({keys}) and counts {unique:,} unique parameters.")
    return CompatRow("parameter sharing", "unsupported", f"Tied: {shown}, but the trace "
                     f"lists {traced.num_params:,} parameters (unique: {unique:,}).",
                     "Read tied parameters from the model, not from trace.params.")


def _devices_row(model: nn.Module | None, traced: Trace | None, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> CompatRow:
    tensors = _leaves(list(args) + list(kwargs.values()))
    if model is not None:
        tensors += list(model.parameters()) + list(model.buffers())
    devices = sorted({str(t.device) for t in tensors})
    cuda = "CUDA available" if torch.cuda.is_available() else "no CUDA"
    shown = ", ".join(devices) or "none"
    if traced is None:
        return CompatRow("devices", "not_tested", f"Devices: {shown} ({cuda}); the trace "
                         "did not run.")
    note = ""
    if "meta" in devices:
        note = " Meta tensors carry shapes only: payloads hold no values."
    if len(devices) > 1:
        note += " Ops on several devices were recorded."
    return CompatRow("devices", "pass", f"Devices: {shown} ({cuda}).{note}")


def _trace_row(model: nn.Module | None, traced: Trace | None,
               error: BaseException | None) -> CompatRow:
    if traced is not None:
        return CompatRow("trace", "pass", f"tl.trace ran: {traced.num_ops} ops, "
                         f"{len(traced.module_calls)} module call(s).")
    if error is None:
        return CompatRow("trace", "not_tested", "Nothing eager to trace (see the wrapper "
                         "row).")
    first = str(error).splitlines()[0] if str(error) else ""
    return CompatRow("trace", "unsupported", f"tl.trace raised {type(error).__name__}: "
                     f"{first}", "Fix what the rows above name; if none explains it, file a "
                     "bug with this report and the traceback.")
