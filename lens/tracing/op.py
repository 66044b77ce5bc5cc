"""``Op`` (one pass of one layer) and ``Layer`` (all passes): what users index.

Both are light views over what the trace owns (an :class:`OpRecord` the capture engine
wrote, a :class:`LayerInfo`), paired with the trace. Facts that can be computed from the
graph (labels, sizes, module containment, neighbours) are computed on access rather than
stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..capture.fired import fired_on
from ..capture.frames import Frame, frames
from ..capture.modes import Mode
from ..capture.records import BUFFER, INPUT, OP, OUTPUT, ModuleCallRecord, OpRecord
from ..capture.rng import RngState
from ..capture.stash import Stash
from ..errors import PayloadError
from . import flops, fmt

if TYPE_CHECKING:
    from .layer import Layer, LayerInfo, OpList
    from .traces import Trace


class Op:
    """One executed op: one tensor produced by one call (one pass of one layer).

    A light view: the record the capture engine wrote (``op.record``) paired with the
    trace that owns it (``op.trace``). Every lookup makes a fresh view, so compare ops with
    ``==`` (views of one record are equal and hash alike), not ``is``. Holding an op keeps
    its trace alive; the trace never refers back to its views, so dropping the last
    reference frees the trace and its payloads at once (no cycle collector needed).
    """

    record: OpRecord
    trace: Trace

    if not TYPE_CHECKING:
        __slots__ = ("record", "trace")
    else:  # the record's fields, read and written through (see _forward)
        call_index: int
        kind: str
        func: Any
        func_name: str
        type: str
        args: tuple[Any, ...]
        kwargs: dict[str, Any]
        parent_idx: tuple[int, ...]
        child_idx: list[int]
        payload: torch.Tensor | None
        shape: tuple[int, ...]
        dtype: torch.dtype | None
        device: torch.device | None
        requires_grad: bool
        module_ctx: tuple[ModuleCallRecord, ...]
        output_of: list[ModuleCallRecord]
        params: tuple[str, ...]
        elapsed: float
        out_index: tuple[int | str, ...]
        call_id: int
        mutates: int | None
        address: str | None
        code: Any
        bool_used: bool
        step: int
        rng: RngState | None
        mode: Mode | None
        pass_num: int
        _saved: bool
        module_addresses: tuple[str, ...]
        module: str | None
        module_outputs: tuple[str, ...]
        module_call: str | None

    def __init__(self, trace: Trace, record: OpRecord) -> None:
        self.trace = trace
        self.record = record

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Op) and other.record is self.record

    def __hash__(self) -> int:
        return id(self.record)

    @property
    def stash(self) -> Stash:
        """What other rooms attach to this op (facet values an edit produced, ...), by
        typed key; made on first use, so ops that carry nothing pay nothing."""
        return self.record.stash

    @property
    def grad(self) -> torch.Tensor | None:
        """Gradient flowing through this op (``save_grads=`` and ``log_backward``), or None."""
        return getattr(self.record, "grad", None)

    @grad.setter
    def grad(self, value: torch.Tensor | None) -> None:
        self.record.grad = value

    @property
    def index(self) -> int:
        """Position in the trace (execution order among the kept ops)."""
        return self.record.pos

    @property
    def layer(self) -> Layer:
        from .layer import Layer

        return Layer(self.trace, self.trace.layer_table[self.record.layer_idx])

    @property
    def recording(self) -> OpList:
        """Every record of the trace by call index (orphans included), as ops."""
        return self.trace.records

    # --------------------------------------------------------------- identity
    @property
    def _info(self) -> LayerInfo:
        return self.trace.layer_table[self.record.layer_idx]

    @property
    def num_passes(self) -> int:
        return len(self._info.passes)

    @property
    def layer_label(self) -> str:
        """The label without pass suffix, e.g. ``linear_1_1``."""
        return self._info.label

    @property
    def label(self) -> str:
        """Full label; multi-pass layers carry the pass, e.g. ``linear_1_1:2``."""
        info = self._info
        if len(info.passes) > 1:
            return f"{info.label}:{self.record.pass_num}"
        return info.label

    @property
    def short_label(self) -> str:
        """``{type}_{type_num}`` (with ``:k`` for multi-pass layers)."""
        info = self._info
        base = info.short_label
        return f"{base}:{self.record.pass_num}" if len(info.passes) > 1 else base

    @property
    def labels(self) -> frozenset[str]:
        """Every string key that finds this op in ``trace[...]``."""
        rec = self.record
        try:
            return rec.keys
        except AttributeError:
            from .postprocess import op_keys

            rec.keys = op_keys(self)
            return rec.keys

    @property
    def lookup_keys(self) -> list[Any]:
        """Labels plus the ordinals (positive and negative) that find this op."""
        n = len(self.trace.ops)
        return [self.index - n, self.index, *sorted(self.labels)]

    # --------------------------------------------------------------- graph
    @property
    def parents(self) -> list[Op]:
        t, recs = self.trace, self.trace.record_table
        return [Op(t, recs[i]) for i in self.record.parent_idx]

    @property
    def children(self) -> list[Op]:
        t, recs = self.trace, self.trace.record_table
        return [Op(t, recs[i]) for i in self.record.child_idx]

    @property
    def parent_labels(self) -> list[str]:
        return [p.label for p in self.parents]

    @property
    def child_labels(self) -> list[str]:
        return [c.label for c in self.children]

    @property
    def siblings(self) -> list[Op]:
        """Other ops sharing a parent with this one."""
        seen = {self.call_index}
        out = []
        for p in self.parents:
            for c in p.children:
                if c.call_index not in seen:
                    seen.add(c.call_index)
                    out.append(c)
        return out

    @property
    def is_input(self) -> bool:
        return self.kind == INPUT

    @property
    def is_output(self) -> bool:
        return self.kind == OUTPUT

    @property
    def is_buffer(self) -> bool:
        return self.kind == BUFFER

    # --------------------------------------------------------------- modules
    @property
    def is_module_output(self) -> bool:
        return bool(self.output_of)

    @property
    def is_bottom_level_module_output(self) -> bool:
        """Output of a module that ran no submodule (a leaf such as ``nn.Linear``)."""
        mods = self.trace.modules
        return any(not mods[c.address].children for c in self.output_of if c.address in mods)

    # --------------------------------------------------------------- payload
    @property
    def out(self) -> torch.Tensor:
        """The saved tensor (activation) of this op."""
        p = self.payload
        if p is None:
            raise PayloadError(
                f"The output of {self.label} was not saved (the trace was captured with "
                f"save={self.trace.save_spec!r}). Re-capture with save=True, or "
                f"save=tl.label({self.label!r}) to keep just this op, or read it in one "
                f"call with tl.pluck(model, x, {self.label!r}).")
        return p

    @property
    def has_payload(self) -> bool:
        return self.record.has_payload

    @property
    def code_context(self) -> list[Frame]:
        """The user's frames that ran this op, innermost first (``.file``,
        ``.line_number``, ``.func_name``, ``.code``). Recorded under ``code_context=True``."""
        if self.code is None and self.kind == "op":
            raise PayloadError(
                f"{self.label} has no recorded call stack: the trace was captured without "
                "code_context=True. Re-capture with tl.trace(model, x, code_context=True).")
        return frames(self.code)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        """Size of the output tensor in bytes."""
        if self.dtype is None:
            return 0
        return self.numel * _itemsize(self.dtype)

    @property
    def flops(self) -> int:
        """Forward FLOPs, counted from shapes (convention in :mod:`lens.tracing.flops`)."""
        return flops.op_cost(self)[0]

    @property
    def macs(self) -> int:
        """Forward multiply-accumulates of a contraction (0 for other ops)."""
        return flops.op_cost(self)[1]

    # --------------------------------------------------------------- function
    @property
    def params_used(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of each parameter this op used."""
        meta = self.trace.param_meta
        return [(n, meta[n][0]) for n in self.params if n in meta]

    @property
    def num_params(self) -> int:
        meta = self.trace.param_meta
        return sum(meta[n][1] for n in dict.fromkeys(self.params) if n in meta)

    @property
    def func_config(self) -> dict[str, Any]:
        from .config import func_config

        return func_config(self)

    @property
    def grad_fn_name(self) -> str | None:
        gf = getattr(self.payload, "grad_fn", None)
        return type(gf).__name__ if gf is not None else None

    @property
    def non_tensor_args(self) -> dict[str, Any]:
        from .config import non_tensor_args

        return non_tensor_args(self)

    @property
    def fired(self) -> list[Any]:
        """The intervention rules that edited this op, in the order they fired (reprs of
        them in a trace loaded from disk); empty if none did."""
        return fired_on(self.record)

    @property
    def intervention_names(self) -> list[str]:
        return [repr(f) for f in self.fired]

    # ------------------------------------------------ graph facts (lens.tracing.graph)
    # Computed once per trace on first access (``Trace._graph``); None = unreachable.
    @property
    def min_distance_from_input(self) -> int | None:
        """Fewest edges from an input op (0 for an input)."""
        return self.trace._graph.min_from_input[self.index]

    @property
    def max_distance_from_input(self) -> int | None:
        """Most edges from an input op (0 for an input)."""
        return self.trace._graph.max_from_input[self.index]

    @property
    def min_distance_to_output(self) -> int | None:
        """Fewest edges to an output op (0 for an output)."""
        return self.trace._graph.min_to_output[self.index]

    @property
    def max_distance_to_output(self) -> int | None:
        """Most edges to an output op (0 for an output)."""
        return self.trace._graph.max_to_output[self.index]

    @property
    def has_input_ancestor(self) -> bool:
        """Computed (at any depth) from a model input; True for inputs themselves."""
        return self.trace._graph.min_from_input[self.index] is not None

    @property
    def is_output_ancestor(self) -> bool:
        """Feeds (at any depth) a model output; True for outputs themselves."""
        return self.trace._graph.min_to_output[self.index] is not None

    @property
    def is_branching(self) -> bool:
        """Feeds more than one op."""
        return len(self.child_idx) > 1

    @property
    def is_internally_generated(self) -> bool:
        """A tensor made inside the model from nothing (``torch.zeros``, ``randn``,
        ``arange``...): an executed op with no tensor parents and no parameters."""
        return self.kind == OP and not self.parent_idx and not self.params

    @property
    def is_terminal_bool(self) -> bool:
        """A single-element bool tensor that feeds nothing: the test of an ``if``."""
        return self.trace._graph.terminal_bool[self.index]

    @property
    def in_cond_branch(self) -> bool:
        """Part of the computation of an ``if`` test (a terminal bool, or a tensor Python
        took ``bool()`` of, and its ancestors back to the main computation)."""
        return self.trace._graph.cond_branch[self.index]
    # --------------------------------------------------------------- end graph facts

    def __repr__(self) -> str:
        return f"<Op {self.label} {fmt.shape(self.shape)} {self.type}>"

    def __str__(self) -> str:
        return fmt.op_report(self)


def _forward(name: str) -> property:
    def get(self: Op) -> Any:
        return getattr(self.record, name)

    def put(self: Op, value: Any) -> None:
        setattr(self.record, name, value)

    return property(get, put, doc=f"The record's ``{name}`` (see lens.capture.records).")


_FORWARDED = (
    "call_index", "kind", "func", "func_name", "type", "args", "kwargs", "parent_idx",
    "child_idx", "payload", "shape", "dtype", "device", "requires_grad", "module_ctx",
    "output_of", "params", "elapsed", "out_index", "call_id", "mutates", "address", "code",
    "bool_used", "step", "rng", "mode", "pass_num", "_saved")
for _name in _FORWARDED:
    setattr(Op, _name, _forward(_name))
for _name in ("module_addresses", "module", "module_outputs", "module_call"):
    setattr(Op, _name, property(getattr(OpRecord, _name).fget))


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size() if dtype not in _SIZES else _SIZES[dtype]


_SIZES = {torch.float32: 4, torch.float64: 8, torch.float16: 2, torch.bfloat16: 2,
          torch.int64: 8, torch.int32: 4, torch.int16: 2, torch.int8: 1, torch.uint8: 1,
          torch.bool: 1, torch.complex64: 8, torch.complex128: 16}
