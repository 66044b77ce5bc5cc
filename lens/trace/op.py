"""``Op`` (one pass of one layer) and ``Layer`` (all passes): the records users index.

An ``Op`` is the capture engine's record plus derived, read-only properties. Facts that
can be computed from the graph (sizes, module containment, neighbours) are computed on
access rather than stored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..capture.frames import Frame, frames
from ..capture.records import BUFFER, INPUT, OP, OUTPUT, OpRecord
from ..errors import PayloadError
from . import flops, fmt
from .stash import Stash

if TYPE_CHECKING:
    from .trace import Trace


class Op(OpRecord):
    """One executed op: one tensor produced by one call (one pass of one layer)."""

    __slots__ = ("_index", "layer", "pass_num", "trace", "_grad", "_labels", "_stash")
    _index: int
    layer: Layer
    pass_num: int
    trace: Trace
    _grad: torch.Tensor | None
    _labels: frozenset[str]
    _stash: Stash

    @property
    def stash(self) -> Stash:
        """What other rooms attach to this op (facet values an edit produced, ...), by
        typed key; made on first use, so ops that carry nothing pay nothing."""
        try:
            return self._stash
        except AttributeError:
            self._stash = Stash()
            return self._stash

    @property
    def grad(self) -> torch.Tensor | None:
        """Gradient flowing through this op (``save_grads=`` and ``log_backward``), or None.

        A property over an optional slot, so creating an op costs nothing extra."""
        try:
            return self._grad
        except AttributeError:
            return None

    @grad.setter
    def grad(self, value: torch.Tensor | None) -> None:
        self._grad = value

    @property
    def index(self) -> int:
        """Position in the trace (execution order); the call order until postprocessing."""
        try:
            return self._index
        except AttributeError:
            return self.call_index

    @index.setter
    def index(self, value: int) -> None:
        self._index = value

    # --------------------------------------------------------------- identity
    @property
    def num_passes(self) -> int:
        return len(self.layer.passes)

    @property
    def layer_label(self) -> str:
        """The label without pass suffix, e.g. ``linear_1_1``."""
        return self.layer.label

    @property
    def label(self) -> str:
        """Full label; multi-pass layers carry the pass, e.g. ``linear_1_1:2``."""
        if len(self.layer.passes) > 1:
            return f"{self.layer.label}:{self.pass_num}"
        return self.layer.label

    @property
    def short_label(self) -> str:
        """``{type}_{type_num}`` (with ``:k`` for multi-pass layers)."""
        base = self.layer.short_label
        return f"{base}:{self.pass_num}" if len(self.layer.passes) > 1 else base

    @property
    def labels(self) -> frozenset[str]:
        """Every string key that finds this op in ``trace[...]``."""
        try:
            return self._labels
        except AttributeError:
            from .postprocess import op_keys

            self._labels = op_keys(self)
            return self._labels

    @property
    def lookup_keys(self) -> list[Any]:
        """Labels plus the ordinals (positive and negative) that find this op."""
        n = len(self.trace.ops)
        self.trace._lookup  # noqa: B018 - building the table adds bare module addresses
        return [self.index - n, self.index, *sorted(self.labels)]

    # --------------------------------------------------------------- graph
    @property
    def parents(self) -> list[Op]:
        ops = self.recording
        return [ops[i] for i in self.parent_idx]

    @property
    def children(self) -> list[Op]:
        ops = self.recording
        return [ops[i] for i in self.child_idx]

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
    def module_addresses(self) -> tuple[str, ...]:
        """Containing modules, outermost first (no call numbers)."""
        return tuple(c.address for c in self.module_ctx)

    @property
    def module(self) -> str | None:
        """Address of the innermost module this op ran in (None at top level)."""
        return self.module_ctx[-1].address if self.module_ctx else None

    @property
    def module_call(self) -> str | None:
        """The innermost module call, e.g. ``fc:2``."""
        return self.module_ctx[-1].key if self.module_ctx else None

    @property
    def module_outputs(self) -> tuple[str, ...]:
        """Modules this op's tensor is the output of, bare and with call (``fc``, ``fc:2``)."""
        keys: list[str] = []
        for c in self.output_of:
            keys.extend((c.address, c.key))
        return tuple(dict.fromkeys(keys))

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
        if self.payload is None:
            raise PayloadError(
                f"The output of {self.label} was not saved (the trace was captured with "
                f"save={self.trace.save_spec!r}). Re-capture with save=True, or "
                f"save=tl.label({self.label!r}) to keep just this op, or read it in one "
                f"call with tl.pluck(model, x, {self.label!r}).")
        return self.payload

    @property
    def has_payload(self) -> bool:
        return self.payload is not None

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
        """Forward FLOPs, counted from shapes (convention in :mod:`lens.trace.flops`)."""
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
    def intervention_names(self) -> list[str]:
        return [repr(f) for f in self.fired]

    # --------------------------------------------------------------- graph facts (lens.trace.graph)
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


class Layer(Sequence[Op]):
    """All passes of one layer. Index it (``layer[0]`` is pass 1) or iterate over passes."""

    __slots__ = ("label", "short_label", "type", "passes", "total_num")

    def __init__(self, label: str, short_label: str, type_: str, total_num: int) -> None:
        self.total_num = total_num
        self.label = label
        self.short_label = short_label
        self.type = type_
        self.passes: list[Op] = []

    def __len__(self) -> int:
        return len(self.passes)

    def __getitem__(self, i: Any) -> Any:
        return self.passes[i]

    def __iter__(self) -> Iterator[Op]:
        return iter(self.passes)

    @property
    def num_passes(self) -> int:
        return len(self.passes)

    @property
    def out(self) -> torch.Tensor:
        if len(self.passes) == 1:
            return self.passes[0].out
        raise PayloadError(
            f"{self.label} is a layer with {len(self.passes)} passes, so it has no single "
            f"output. Pick a pass: trace['{self.label}:1'] ... trace['{self.label}:"
            f"{len(self.passes)}'], or iterate: [op.out for op in trace['{self.label}']].")

    def __repr__(self) -> str:
        return f"<Layer {self.label} ({len(self.passes)} passes)>"


class OpGroup(Sequence[Op]):
    """Several ops found by one key (a module called several times, or with several outputs)."""

    def __init__(self, key: str, ops: list[Op]) -> None:
        self.key = key
        self.ops = ops

    def __len__(self) -> int:
        return len(self.ops)

    def __getitem__(self, i: Any) -> Any:
        return self.ops[i]

    @property
    def out(self) -> torch.Tensor:
        if len(self.ops) == 1:
            return self.ops[0].out
        keys = ", ".join(op.label for op in self.ops)
        raise PayloadError(
            f"{self.key!r} names {len(self.ops)} ops ({keys}), so it has no single output. "
            f"Index one of them, e.g. trace[{self.ops[0].label!r}] (or '{self.key}:1' for "
            "the first call of a module).")

    def __repr__(self) -> str:
        return f"<OpGroup {self.key!r}: {[op.label for op in self.ops]}>"


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size() if dtype not in _SIZES else _SIZES[dtype]


_SIZES = {torch.float32: 4, torch.float64: 8, torch.float16: 2, torch.bfloat16: 2,
          torch.int64: 8, torch.int32: 4, torch.int16: 2, torch.int8: 1, torch.uint8: 1,
          torch.bool: 1, torch.complex64: 8, torch.complex128: 16}
