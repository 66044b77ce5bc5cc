"""``Trace``: the recorded forward pass users hold, index, summarize and tabulate."""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ..capture.records import (
    BUFFER,
    INPUT,
    OUTPUT,
    ModuleCallRecord,
    OpRecord,
    RecordTable,
)
from ..capture.stash import Stash
from ..errors import LookupKeyError, close_matches
from . import fmt
from .grads import log_backward
from .graph import GraphFacts
from .layer import Layer, LayerInfo, OpGroup, OpList
from .modules import ModuleRecord, Modules, ParamRecord, Params
from .op import Op
from .options import TraceOptions

if TYPE_CHECKING:
    import pandas as pd

    from ..facets import Facets, ResidualStream
    from ..interventions import Fork

_V = TypeVar("_V")
# A full label: ``{type}_{type_num}_{total_num}``, optionally ``:{pass}``.
_FULL_LABEL = re.compile(r"^([a-z0-9]+_\d+_(\d+))(?::(\d+))?$")


class Trace:
    """Every op of one forward pass, with labels, modules and (saved) payloads.

    Index it with a label (``'conv2d_3_7'``, ``'conv2d_3'``, ``'linear_1_1:2'``), a module
    address (``'features.6'``, ``'fc:2'``) or an ordinal (``7``, ``-1``).
    """

    def __init__(self, *, ops: list[OpRecord], records: RecordTable,
                 layers: list[LayerInfo], model_name: str,
                 module_calls: list[ModuleCallRecord],
                 module_info: dict[str, tuple[str, tuple[str, ...]]],
                 param_meta: dict[str, tuple[tuple[int, ...], int, torch.dtype, bool]],
                 param_values: dict[str, torch.Tensor], output: Any, save_spec: Any,
                 halted: bool, elapsed: float, options: TraceOptions) -> None:
        self.record_table = records  # every record by call index (None: not kept on load)
        self.kept = ops  # the records of the kept ops, in execution order
        self.layer_table = layers
        self.model_name = model_name
        self.module_calls = module_calls
        self.module_info = module_info  # address -> (class name, direct param names)
        self.param_meta = param_meta  # name -> (shape, numel, dtype, requires_grad)
        self.param_values = param_values
        self.output = output
        self.save_spec = save_spec
        self.halted = halted
        self.elapsed = elapsed
        self.options = options
        self.stash = Stash()  # what other rooms derive from this trace (lens.capture.stash)
        self._by_call = {rec.call_index: rec for rec in ops}
        self._views: dict[str, weakref.ref[Any]] = {}

    @property
    def ops(self) -> OpList:
        """The kept ops in execution order (a sequence of :class:`Op` views)."""
        return OpList(self, self.kept)

    def _view(self, name: str, make: Callable[[Trace], _V]) -> _V:
        """A view object over this trace (modules, params), shared while anyone holds it.

        Cached weakly: a view refers to the trace, so a strong cache would be a cycle."""
        ref = self._views.get(name)
        found = ref() if ref is not None else None
        if found is None:
            found = make(self)
            self._views[name] = weakref.ref(found)
        return found

    # ------------------------------------------------------------------ lookup
    @cached_property
    def _lookup(self) -> dict[str, OpRecord | LayerInfo | tuple[OpRecord, ...]]:
        """Key -> what it finds, as records (views are made on each lookup)."""
        table: dict[str, OpRecord | LayerInfo | tuple[OpRecord, ...]] = {}
        for info in self.layer_table:
            if len(info.passes) > 1:
                table[info.label] = info
                table[info.short_label] = info
        for op in self.ops:
            for key in op.labels:
                table.setdefault(key, op.record)
        for address, outs in self._outputs_by_address.items():
            table[address] = outs[0] if len(outs) == 1 else outs
        return table

    @cached_property
    def _outputs_by_address(self) -> dict[str, tuple[OpRecord, ...]]:
        """Module address -> the kept ops its calls returned (each once, in order)."""
        by_address: dict[str, list[OpRecord]] = {}
        for call in self.module_calls:
            for i in call.output_ops:
                found = self._by_call.get(i)
                if found is not None:
                    by_address.setdefault(call.address, []).append(found)
        return {a: tuple(dict.fromkeys(outs)) for a, outs in by_address.items()}

    @cached_property
    def _sole_outputs(self) -> dict[int, tuple[str, ...]]:
        """Call index -> the module addresses whose only output that op is: a bare
        address finds such an op, so it is one of the op's labels."""
        found: dict[int, tuple[str, ...]] = {}
        for address, outs in self._outputs_by_address.items():
            if len(outs) == 1:
                ci = outs[0].call_index
                found[ci] = (*found.get(ci, ()), address)
        return found

    def _label_hit(self, key: str) -> OpRecord | LayerInfo | None:
        """A full label (``linear_1_3``, ``linear_1_3:2``), found by its layer number
        without building the whole lookup table; the same entry the table holds."""
        found = _FULL_LABEL.match(key)
        if found is None or key in self.module_info or "_lookup" in self.__dict__:
            return None
        base, total, k = found.group(1), int(found.group(2)), found.group(3)
        if total >= len(self.layer_table) or self.layer_table[total].label != base:
            return None
        info = self.layer_table[total]
        if k is None:
            return info if len(info.passes) > 1 else self._by_call.get(info.passes[0])
        k_int = int(k)
        if not 1 <= k_int <= len(info.passes):
            return None
        return self._by_call.get(info.passes[k_int - 1])

    def _module_hit(self, key: str) -> OpRecord | tuple[OpRecord, ...] | None:
        """A bare module address, answered from the module calls without building the
        whole lookup table (the common first lookup after a capture); the same entry
        the table holds."""
        if key not in self.module_info or "_lookup" in self.__dict__:
            return None
        outs = tuple(dict.fromkeys(
            self._by_call[i] for call in self.module_calls if call.address == key
            for i in call.output_ops if i in self._by_call))
        if not outs:
            return None
        return outs[0] if len(outs) == 1 else outs

    def _wrap(self, key: str, hit: OpRecord | LayerInfo | tuple[OpRecord, ...]) -> Any:
        if isinstance(hit, LayerInfo):
            return Layer(self, hit)
        if isinstance(hit, tuple):
            return OpGroup(key, [Op(self, r) for r in hit])
        return Op(self, hit)

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise LookupKeyError(
                f"Index a trace with a label (str), module address (str) or ordinal (int); "
                f"got {type(key).__name__}.")
        if isinstance(key, int):
            try:
                return self.ops[key]
            except IndexError:
                raise LookupKeyError(
                    f"Ordinal {key} is out of range: this trace has {len(self.ops)} ops "
                    f"(valid: {-len(self.ops)} .. {len(self.ops) - 1}).") from None
        hit: OpRecord | LayerInfo | tuple[OpRecord, ...] | None = (
            self._module_hit(key) or self._label_hit(key))
        if hit is None:
            hit = self._lookup.get(key)
        if hit is not None:
            return self._wrap(key, hit)
        if self.options.aliases:  # other libraries' names (lens.facets.aliases)
            hit = self._alias(key)
            if hit is not None:
                return hit
        raise LookupKeyError(self._miss_message(key))

    def _miss_message(self, key: str) -> str:
        keys = list(self._lookup)
        if self.options.aliases:
            keys += self._alias_keys()
        near = close_matches(key, keys)
        hint = f" Closest keys: {', '.join(near)}." if near else ""
        if key in self.module_info:
            return (f"Module {key!r} exists but produced no recorded output in this pass "
                    f"(never called, or halted before it).{hint}")
        if key.startswith("div_"):
            hint += (" True division (x / y, torch.true_divide, torch.div without "
                     "rounding_mode) is labelled 'truediv_...'.")
        return (f"{key!r} names no op of this trace.{hint} Keys are labels such as "
                f"{self.ops[min(1, len(self.ops) - 1)].label!r}, module addresses, or ordinals; "
                "see trace.layer_labels.")

    def __contains__(self, key: object) -> bool:
        if isinstance(key, int) and not isinstance(key, bool):
            return -len(self.ops) <= key < len(self.ops)
        return isinstance(key, str) and key in self._lookup

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def keys(self) -> list[str]:
        """Every label and module address this trace can be indexed by."""
        return list(self._lookup)

    @property
    def records(self) -> OpList:
        """Every recorded op by call index, orphans included (``ops`` holds the kept ones)."""
        return OpList(self, self.record_table)

    def op_at_call(self, call_index: int) -> Op | None:
        """The kept op recorded at ``call_index`` (its place in the recording), or None
        if that op was trimmed as an orphan."""
        rec = self._by_call.get(call_index)
        return None if rec is None else Op(self, rec)

    # ------------------------------------------------------------------ views
    @property
    def labels(self) -> list[str]:
        """Op labels in execution order (with ``:k`` for passes of multi-pass layers)."""
        return [op.label for op in self.ops]

    @property
    def layer_labels(self) -> list[str]:
        """Labels of the ops that hold a saved payload, in execution order."""
        return [op.label for op in self.ops if op.has_payload]

    @property
    def layers(self) -> list[Layer]:
        return [Layer(self, info) for info in self.layer_table]

    @property
    def input_layers(self) -> list[str]:
        return [op.label for op in self.ops if op.kind == INPUT]

    @property
    def output_layers(self) -> list[str]:
        return [op.label for op in self.ops if op.kind == OUTPUT]

    @property
    def buffer_layers(self) -> list[str]:
        return [op.label for op in self.ops if op.kind == BUFFER]

    @property
    def is_recurrent(self) -> bool:
        return any(len(info.passes) > 1 for info in self.layer_table)

    @property
    def max_passes(self) -> int:
        return max((len(info.passes) for info in self.layer_table), default=0)

    @property
    def modules(self) -> Modules:
        return self._view("modules", Modules)

    @property
    def params(self) -> Params:
        return self._view("params", Params)

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    @property
    def total_nbytes(self) -> int:
        return sum(op.nbytes for op in self.ops)

    @property
    def saved_nbytes(self) -> int:
        seen: set[int] = set()
        total = 0
        for op in self.ops:
            handle = op.record.payload_handle
            if handle is not None:  # streamed: counted without reading it
                total += handle.nbytes
                continue
            p = op.payload
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
        return total

    @property
    def num_params(self) -> int:
        return sum(m[1] for m in self.param_meta.values())

    # ------------------------------------------------------- graph facts (lens.tracing.graph)
    @cached_property
    def _graph(self) -> GraphFacts:
        return GraphFacts(self.kept)

    @property
    def has_conditional_branching(self) -> bool:
        """Whether some op looks like the test of a Python ``if`` on a tensor."""
        return any(self._graph.cond_branch)

    @property
    def terminal_bool_layers(self) -> list[str]:
        """Labels of single-element bool tensors that feed nothing (``if`` tests)."""
        flags = self._graph.terminal_bool
        return [op.label for op in self.ops if flags[op.index]]

    @property
    def internally_generated_layers(self) -> list[str]:
        """Labels of tensors made inside the model from nothing (zeros, randn, arange)."""
        return [op.label for op in self.ops if op.is_internally_generated]

    @property
    def orphans_trimmed(self) -> int:
        """How many recorded ops were dropped as orphans (neither from an input nor
        feeding an output); 0 with ``keep_orphans=True``."""
        return len(self.record_table) - len(self.kept)
    # ------------------------------------------------------- end graph facts

    # ------------------------------------------------------------------ output
    def summary(self, depth: int = 1) -> str:
        """Module table (output shape, params, ops) and totals, as text."""
        return fmt.summary(self, depth)

    def __str__(self) -> str:
        return fmt.trace_report(self)

    def __repr__(self) -> str:
        return (f"<Trace of {self.model_name}: {len(self.ops)} ops, "
                f"{fmt.nbytes(self.saved_nbytes)} saved>")

    def to_pandas(self) -> pd.DataFrame:
        """One row per op."""
        from .tables import ops_frame

        return ops_frame(self)

    def module_record(self, address: str) -> ModuleRecord:
        return self.modules[address]

    def param_record(self, name: str) -> ParamRecord:
        return self.params[name]

    # ------------------------------------------------------------------ other rooms
    # Conveniences for public functions of rooms to the right of ``trace``: each method
    # only imports the function when called and hands ``self`` to it, so imports still
    # point one way and mypy sees the real types (tests/test_structure.py checks the shape).
    def draw(self, path: str | None = None, **options: Any) -> str:
        """Render the graph with graphviz; returns the path written (see ``lens.draw``)."""
        from ..draw import draw

        return draw(self, path, **options)

    def _repr_svg_(self) -> str | None:
        from ..draw import repr_svg

        return repr_svg(self)

    def _repr_html_(self) -> str:
        """Jupyter's view: the summary table, and the graph as inline SVG when it is small
        enough and Graphviz is installed (otherwise the table alone)."""
        from .html import trace_html

        return trace_html(self, self._repr_svg_())

    def log_backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Run ``loss.backward()`` and store per-op gradients (``op.grad``)."""
        log_backward(self, loss, retain_graph)

    def fork(self) -> Fork:
        """A copy that shares every payload, for editing and replay (see interventions)."""
        from ..interventions import fork

        return fork(self)

    @property
    def facets(self) -> Facets:
        """Facets of the model's own forward, outside every submodule (see lens.facets);
        a submodule's are ``trace.modules[address].facets``."""
        from ..facets import facets_for

        return facets_for(self)

    @property
    def residual(self) -> ResidualStream:
        """Residual-stream analysis: accumulated, decompose, logit_lens and
        direct_logit_attribution (see lens.facets.resid_analysis)."""
        from ..facets import ResidualStream

        return ResidualStream(self)

    def with_aliases(self, scheme: str | None = "transformer_lens") -> Trace:
        """Also find ops and facets by another library's names, e.g.
        ``trace['blocks.0.attn.hook_pattern']`` (see lens.facets.aliases); returns self."""
        from ..facets import with_aliases

        return with_aliases(self, scheme)

    def find_sites(self, selector: Any) -> list[str]:
        """Labels of the ops a selector matches."""
        from ..interventions import find_sites

        return find_sites(self, selector)

    def _alias(self, key: str) -> Any:
        from ..facets import resolve_alias

        return resolve_alias(self, key)

    def _alias_keys(self) -> list[str]:
        from ..facets import alias_keys

        return alias_keys(self)
