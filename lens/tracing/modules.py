"""Module and parameter views of a trace: ``trace.modules[...]``, ``trace.params[...]``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..capture.records import ModuleCallRecord
from ..errors import LookupKeyError, PayloadError, close_matches

if TYPE_CHECKING:
    import pandas as pd

    from ..facets import Facets
    from .op import Op
    from .traces import Trace


class ModuleCall:
    """One call of one module (``fc:2``): the ops it ran and the ops it returned."""

    def __init__(self, trace: Trace, rec: ModuleCallRecord) -> None:
        self.trace = trace
        self.record = rec
        self.address = rec.address
        self.call_num = rec.call_num
        self.key = rec.key

    @property
    def facets(self) -> Facets:
        """Named views of this call (attention heads, recurrent states, the residual
        stream), computed on first access by ``lens.facets``."""
        from ..facets import facets_for

        return facets_for(self)

    @property
    def ops(self) -> list[Op]:
        """Ops run inside this call (its submodules' ops included)."""
        rec = self.record
        return [op for op in self.trace.ops
                if rec.first_op <= op.call_index <= rec.last_op and rec in op.module_ctx]

    @property
    def outputs(self) -> list[Op]:
        found = (self.trace.op_at_call(i) for i in self.record.output_ops)
        return [op for op in found if op is not None]

    @property
    def inputs(self) -> list[Op]:
        found = (self.trace.op_at_call(i) for i in self.record.input_ops)
        return [op for op in found if op is not None]

    @property
    def out(self) -> torch.Tensor:
        outs = self.outputs
        if len(outs) == 1:
            return outs[0].out
        raise PayloadError(
            f"Module call {self.key} returned {len(outs)} tensors "
            f"({', '.join(o.label for o in outs)}); use .outputs[i].out.")

    def __repr__(self) -> str:
        return f"<ModuleCall {self.key} ({self.record.class_name})>"


class ModuleRecord:
    """One module of the model: its class, parameters, children and calls in this pass."""

    def __init__(self, trace: Trace, address: str, class_name: str,
                 param_names: tuple[str, ...]) -> None:
        self.trace = trace
        self.address = address
        self.class_name = class_name
        self.param_names = param_names
        self.calls: list[ModuleCall] = []
        self.children: list[str] = []

    @property
    def num_calls(self) -> int:
        return len(self.calls)

    @property
    def num_params(self) -> int:
        """Parameters of this module and its submodules."""
        prefix = self.address + "." if self.address else ""
        meta = self.trace.param_meta
        return sum(m[1] for name, m in meta.items() if name.startswith(prefix))

    @property
    def facets(self) -> Any:
        """The facets of the module's only call (for several calls: ``.calls[k].facets``)."""
        if len(self.calls) == 1:
            return self.calls[0].facets
        if not self.calls:
            raise LookupKeyError(f"Module {self.address!r} did not run in this pass, so it "
                                 "has no facets.")
        raise LookupKeyError(
            f"Module {self.address!r} was called {len(self.calls)} times; read the facets "
            f"of one call: trace.modules[{self.address!r}].calls[k].facets.")

    @property
    def ops(self) -> list[Op]:
        return [op for call in self.calls for op in call.ops]

    @property
    def out(self) -> torch.Tensor:
        if len(self.calls) == 1:
            return self.calls[0].out
        raise PayloadError(
            f"Module {self.address!r} was called {len(self.calls)} times; pick a call: "
            f"trace.modules[{self.address!r}].calls[k].out or trace['{self.address}:1'].")

    def __repr__(self) -> str:
        return f"<Module {self.address or '(root)'} ({self.class_name}), {len(self.calls)} calls>"


class Modules(Mapping[str, ModuleRecord]):
    """Every module of the model by address ('' is the root)."""

    def __init__(self, trace: Trace) -> None:
        self._trace = trace
        self._records: dict[str, ModuleRecord] = {}
        for address, (cls, params) in trace.module_info.items():
            self._records[address] = ModuleRecord(trace, address, cls, params)
        for address in self._records:
            if "." in address:
                parent = address.rsplit(".", 1)[0]
                if parent in self._records:
                    self._records[parent].children.append(address)
        for rec in trace.module_calls:
            mod = self._records.get(rec.address)
            if mod is not None:
                mod.calls.append(ModuleCall(trace, rec))

    def __getitem__(self, address: str) -> ModuleRecord:
        try:
            return self._records[address]
        except KeyError:
            near = close_matches(address, self._records)
            hint = f" Did you mean: {', '.join(near)}?" if near else ""
            raise LookupKeyError(f"No module at address {address!r}.{hint}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def to_pandas(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for m in self._records.values():
            outs = [op for call in m.calls for op in call.outputs]
            rows.append({
                "address": m.address, "class": m.class_name, "num_calls": m.num_calls,
                "num_params": m.num_params, "num_children": len(m.children),
                "output_shape": tuple(outs[0].shape) if outs else None,
                "num_ops": len(m.ops) if m.calls else 0,
            })
        return pd.DataFrame(rows)


class ParamRecord:
    def __init__(self, trace: Trace, name: str) -> None:
        self.trace = trace
        self.name = name
        shape, numel, dtype, trainable = trace.param_meta[name]
        self.shape = shape
        self.numel = numel
        self.dtype = dtype
        self.trainable = trainable
        self.module = name.rsplit(".", 1)[0] if "." in name else ""

    @property
    def ops(self) -> list[Op]:
        return [op for op in self.trace.ops if self.name in op.params]

    @property
    def value(self) -> torch.Tensor:
        return self.trace.param_values[self.name]

    def __repr__(self) -> str:
        return f"<Param {self.name} {tuple(self.shape)}>"


class Params(Mapping[str, ParamRecord]):
    def __init__(self, trace: Trace) -> None:
        self._trace = trace
        self._records = {n: ParamRecord(trace, n) for n in trace.param_meta}

    def __getitem__(self, name: str) -> ParamRecord:
        try:
            return self._records[name]
        except KeyError:
            near = close_matches(name, self._records)
            hint = f" Did you mean: {', '.join(near)}?" if near else ""
            raise LookupKeyError(f"No parameter named {name!r}.{hint}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def to_pandas(self) -> pd.DataFrame:
        import pandas as pd

        rows = [{"name": p.name, "module": p.module, "shape": tuple(p.shape),
                 "numel": p.numel, "dtype": str(p.dtype), "trainable": p.trainable,
                 "num_ops": len(p.ops)} for p in self._records.values()]
        return pd.DataFrame(rows)
