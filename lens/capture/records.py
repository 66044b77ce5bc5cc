"""The hot-path records: one small object per executed op and per module call.

Everything here is written while the model runs, so it stays minimal: references to
parent ops, the argument template (tensors replaced by :class:`Ref`), the payload if the
save policy wants it, and the module context as an interned tuple. Every other fact is
derived later, in ``lens.trace``.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .modes import Mode
from .rng import RngState
from .stash import Stash

# The kind of a record. 'op' is an executed torch call; the others are graph sources
# or sinks that lens adds itself.
OP, INPUT, OUTPUT, BUFFER, CONSTANT, IDENTITY = (
    "op",
    "input",
    "output",
    "buffer",
    "constant",
    "identity",
)


class Ref(NamedTuple):
    """Placeholder for a tensor argument: the op that produced it."""

    op: int


class ParamRef(NamedTuple):
    """Placeholder for a parameter argument, by its qualified name in the model."""

    name: str


class RecordTable(list[Any]):
    """The records of one capture by call index (a list its records can refer to weakly;
    a loaded trace has None where an orphan was not saved)."""

    __slots__ = ("__weakref__",)


class LazyPayload:
    """A payload kept outside memory (``tl.to_disk``): a record holds this small handle
    and :attr:`OpRecord.payload` reads the tensor through :meth:`load` on each access."""

    __slots__ = ()

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.dtype.itemsize

    def load(self) -> torch.Tensor:
        raise NotImplementedError


class ModuleCallRecord:
    """One call of one module: where it sits and which ops it spans."""

    __slots__ = ("address", "call_num", "class_name", "parent", "first_op", "last_op",
                 "input_ops", "output_ops", "depth")

    def __init__(self, address: str, call_num: int, class_name: str,
                 parent: ModuleCallRecord | None, first_op: int, depth: int) -> None:
        self.address = address
        self.call_num = call_num
        self.class_name = class_name
        self.parent = parent
        self.first_op = first_op
        self.last_op = first_op - 1
        self.input_ops: tuple[int, ...] = ()
        self.output_ops: list[int] = []
        self.depth = depth

    @property
    def key(self) -> str:
        return f"{self.address}:{self.call_num}"

    def __repr__(self) -> str:
        return f"<module call {self.key} ({self.class_name})>"


class OpRecord:
    """One executed op (one tensor): written by the capture engine, read by ``lens.trace``.

    A record reaches the others of its recording (selectors ask for parents and children
    as ops run) through a weak reference to the :class:`RecordTable` list that holds them:
    records refer to each other, to their layer and to module calls by index only, so
    nothing a recording or trace holds forms a reference cycle, and payloads are freed by
    reference counting alone. Users see records through ``lens.trace.Op``, a light view
    that pairs a record with its trace.
    """

    __slots__ = (
        "call_index", "kind", "func", "func_name", "type", "args", "kwargs", "parent_idx",
        "child_idx", "_payload", "shape", "dtype", "device", "requires_grad", "module_ctx",
        "output_of", "params", "elapsed", "out_index", "call_id", "mutates",
        "address", "code", "bool_used", "step", "_ops", "_saved", "__weakref__",
        # how the op ran: generator state before a random op, non-default grad/autocast
        "rng", "mode",
        # set once the trace is built (lens.tracing.postprocess): position among the kept
        # ops, layer (an index into the trace's layer table) and pass; then what other
        # rooms attach (gradient, stash, cached lookup keys), each made on first use
        "pos", "layer_idx", "pass_num", "grad", "_stash", "keys",
    )
    pos: int
    layer_idx: int
    pass_num: int
    grad: torch.Tensor | None
    _stash: Stash
    keys: frozenset[str]

    def __init__(self, ops: weakref.ref[RecordTable], call_index: int, kind: str, func: Any,
                 func_name: str, type_: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], parent_idx: tuple[int, ...],
                 out: torch.Tensor | LazyPayload | None, tensor: torch.Tensor | None,
                 module_ctx: tuple[ModuleCallRecord, ...], params: tuple[str, ...],
                 elapsed: float, out_index: tuple[int | str, ...], call_id: int,
                 mutates: int | None, address: str | None = None) -> None:
        self._ops = ops
        self.call_index = call_index
        self.kind = kind
        self.func = func
        self.func_name = func_name
        self.type = type_
        self.args = args
        self.kwargs = kwargs
        self.parent_idx = parent_idx
        self.child_idx: list[int] = []
        self._payload: torch.Tensor | LazyPayload | None = out
        self._saved = out is not None
        if tensor is not None:
            self.shape: tuple[int, ...] = tuple(tensor.shape)
            self.dtype: torch.dtype | None = tensor.dtype
            self.device: torch.device | None = tensor.device
            self.requires_grad = tensor.requires_grad
        else:
            self.shape, self.dtype, self.device, self.requires_grad = (), None, None, False
        self.module_ctx = module_ctx
        # a list once some module returns this op's tensor (most never: shared ())
        self.output_of: list[ModuleCallRecord] | tuple[()] = ()
        self.params = params
        self.elapsed = elapsed
        self.out_index = out_index
        self.call_id = call_id
        self.mutates = mutates
        self.address = address
        self.code: Any = None
        self.bool_used = False
        self.rng: RngState | None = None
        self.mode: Mode | None = None
        self.step = 0  # which call of the top module it ran in (set by the recorder)

    @property
    def payload(self) -> torch.Tensor | None:
        """The kept tensor (None: not kept); a payload streamed to disk is read back
        from its shard on each access (see :class:`LazyPayload`)."""
        p = self._payload
        return p.load() if isinstance(p, LazyPayload) else p

    @payload.setter
    def payload(self, value: torch.Tensor | LazyPayload | None) -> None:
        self._payload = value

    @property
    def has_payload(self) -> bool:
        """Whether a payload is kept, without reading a streamed one."""
        return self._payload is not None

    @property
    def payload_handle(self) -> LazyPayload | None:
        """The handle of a payload kept outside memory (None: in memory, or not kept)."""
        p = self._payload
        return p if isinstance(p, LazyPayload) else None

    @property
    def recording(self) -> RecordTable:
        """Every record of the recording this one belongs to, by call index (orphans
        included)."""
        ops = self._ops()
        if ops is None:
            raise AttributeError(
                f"op #{self.call_index}'s recording no longer exists (nothing holds its "
                "trace or recording): keep the trace while you use its records")
        return ops

    @property
    def stash(self) -> Stash:
        """What other rooms attach to this op (facet values an edit produced, ...), by
        typed key; made on first use, so ops that carry nothing pay nothing."""
        try:
            return self._stash
        except AttributeError:
            self._stash = Stash()
            return self._stash

    # What selectors ask of a live record (lens.selectors.OpLike); ``lens.trace.Op``
    # answers the same on a finished trace.
    @property
    def index(self) -> int:
        return self.call_index

    @property
    def parents(self) -> list[OpRecord]:
        ops = self.recording
        return [ops[i] for i in self.parent_idx]

    @property
    def children(self) -> list[OpRecord]:
        ops = self.recording
        return [ops[i] for i in self.child_idx]

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
        return output_keys(self.output_of)


def output_keys(calls: Sequence[ModuleCallRecord]) -> tuple[str, ...]:
    """The keys module outputs are found by: each call's address and ``address:k``."""
    keys: list[str] = []
    for c in calls:
        keys.extend((c.address, c.key))
    return tuple(dict.fromkeys(keys))
