"""A function mode entered only while some modules run (DESIGN decision 10, second half).

For a save selector such as ``tl.in_module('h.5') & tl.func('gelu', 'tanh')``
(``tl.selectors.scope_of`` says ``'scoped'``), a :class:`ScopedRun` puts a forward
pre-hook and an always-called forward hook on ``h.5``: the pre-hook pushes a small
:class:`~torch.overrides.TorchFunctionMode` onto this thread's mode stack when the first
call of a scope module starts, the hook pops it when the last one ends (also when the
forward raises). Inside, each torch call whose function the selector asks for has its
output tensors copied; every other call runs untouched. Nothing else is recorded: no
graph, no labels, so kept ops are addressed by the module call they ran in.

Which ops are seen, their names and types, and which tensors count as their outputs
follow the full capture engine (``lens.capture.funcs``), so the kept tensors are the
payloads ``tl.trace(model, x, save=same_selector)`` keeps, in the same order. Payloads
are copied when the op runs: later in-place writes, outside the scope, are not seen.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import CaptureError
from ..selectors import Selector, all_of, any_of
from ..selectors._base import And, Or
from ..selectors._ops import Func
from ..selectors._places import InModule
from ..selectors._scope import scope_of
from . import funcs
from .engine import PayloadOptions
from .sparse import ModuleCalls, copy_payload
from .template import tensor_leaves

# Records the full engine makes itself (graph sources, module identities, refreshes after
# in-place writes): which of them fall inside a module depends on the whole pass.
SOURCES = frozenset({"input", "output", "buffer", "constant", "identity", "refresh"})


class KeptOp(NamedTuple):
    """One kept op output: the scope module call it ran in (``'a.b:2'``), its function
    name (``'gelu'``) and op type, and the tensor (a copy, payload options applied)."""

    call: str
    name: str
    type: str
    tensor: Tensor


@dataclass(frozen=True)
class ScopedPart:
    """``tl.in_module(address) & test``: ``test`` reads nothing of an op but its function."""

    address: str
    test: Selector


def split_scoped(sel: Selector) -> tuple[Selector, tuple[ScopedPart, ...]]:
    """``sel`` as a boundary selector (module outputs; ``tl.nothing()`` if none) and the
    scoped parts a :class:`ScopedRun` decides; :class:`CaptureError` naming the part that
    can be decided only with every op recorded."""
    boundary: list[Selector] = []
    scoped: list[ScopedPart] = []
    for part in sel.parts if isinstance(sel, Or) else (sel,):
        scope = scope_of(part)
        if scope.kind == "boundary":
            boundary.append(part)
            continue
        if scope.kind != "scoped":
            raise _refused(part, scope.reason or "it is decided only with every op recorded")
        test = all_of(*(p for p in (part.parts if isinstance(part, And) else (part,))
                        if not isinstance(p, InModule)))
        types = op_types(test)
        if types is None or types & SOURCES:
            raise _refused(part, "it must name the functions to keep "
                           "(& tl.func('gelu', ...)), and may not ask for graph sources "
                           f"({', '.join(sorted(SOURCES))})")
        (address,) = scope.modules
        scoped.append(ScopedPart(address, test))
    return any_of(*boundary), tuple(scoped)


def _refused(part: Selector, why: str) -> CaptureError:
    return CaptureError(
        f"tl.record(..., sparse=True) keeps module outputs (tl.module('a.b'), 'a.b:2') and "
        f"ops inside one module picked by their function (tl.in_module('a') & "
        f"tl.func('gelu')); {part!r} is neither: {why}. Record without sparse=True "
        "(tl.record(model, x, save=...)) to use it.")


def op_types(test: Selector) -> frozenset[str] | None:
    """The op types a function-only ``test`` can match; None when unbounded (``~f``)."""
    if isinstance(test, Func):
        return test.accepts
    if isinstance(test, Or):
        found = [op_types(p) for p in test.parts]
        return None if any(f is None for f in found) else frozenset().union(*found)  # type: ignore[arg-type]
    if isinstance(test, And):
        bounded = [f for f in map(op_types, test.parts) if f is not None]
        return frozenset.intersection(*bounded) if bounded else None
    return None


class _Probe:
    """What a function-only selector reads of an op."""

    __slots__ = ("func_name", "type")

    def __init__(self, name: str, type_: str) -> None:
        self.func_name, self.type = name, type_


_TENSOR = Tensor


class ScopedRun(TorchFunctionMode):
    """Keeps the ops ``parts`` ask for, in call order, in :attr:`kept` (see the module doc).

    The mode is on this thread's stack exactly while a call of a scope module runs; an op
    belongs to the innermost running scope call whose test it passes."""

    def __init__(self, modules: Mapping[str, nn.Module], parts: tuple[ScopedPart, ...],
                 payload: PayloadOptions | None = None) -> None:
        super().__init__()
        self.modules = {p.address: modules[p.address] for p in parts}
        self.parts = parts
        self.payload = payload or PayloadOptions()
        self.kept: list[KeptOp] = []
        self.calls = ModuleCalls()  # the running scope calls
        self.calls.names = {id(m): a for a, m in self.modules.items()}
        self._entered = False
        # per function: None (never kept) or (facts, addresses whose test its type passes)
        self._funcs: dict[Any, tuple[funcs.FuncInfo, frozenset[str]] | None] = {}

    # ------------------------------------------------------------------ module hooks
    def _pre(self, module: nn.Module, args: Any) -> None:
        if not self.calls.ours():
            return
        self.calls.enter(module)
        if not self._entered:
            torch._C._push_on_torch_function_stack(self)
            self._entered = True

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self.calls.ours():
            return
        self.calls.leave(module)
        if not self.calls.running:
            self._leave()

    def _leave(self) -> None:
        if not self._entered:
            return
        n = torch._C._len_torch_function_stack()
        if n == 0 or torch._C._get_function_stack_at(n - 1) is not self:
            raise CaptureError(
                "A function mode entered inside the scope module was still active when "
                "it returned, so tl.record(..., sparse=True) cannot leave its own mode: "
                "exit every mode entered inside the model before its forward returns.")
        torch._C._pop_torch_function_stack()
        self._entered = False

    # ------------------------------------------------------------------ ops
    def _learn(self, func: Any) -> tuple[funcs.FuncInfo, frozenset[str]] | None:
        fi = funcs.info(func)
        if fi.query:
            return None
        if fi.divides:  # the type depends on the call: decided per call
            return fi, frozenset()
        hit = self._addresses(fi.name, fi.type)
        return (fi, hit) if hit else None

    def _addresses(self, name: str, type_: str) -> frozenset[str]:
        probe = _Probe(name, type_)
        return frozenset(p.address for p in self.parts if p.test.matches(probe))  # type: ignore[arg-type]

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        try:
            hit = self._funcs[func]
        except KeyError:
            hit = self._funcs[func] = self._learn(func)
        except TypeError:  # an unhashable callable
            hit = self._learn(func)
        out = func(*args, **kwargs) if kwargs else func(*args)
        if hit is not None:
            self._maybe_keep(hit[0], hit[1], args, kwargs or {}, out)
        return out

    def _maybe_keep(self, fi: funcs.FuncInfo, addresses: frozenset[str],
                    args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        type_ = fi.type
        if fi.divides:
            type_ = funcs.call_type(fi, kwargs)
            addresses = self._addresses(fi.name, type_)
        found = next(((a, n) for a, n in reversed(self.calls.running) if a in addresses), None)
        if found is None:
            return
        call = f"{found[0]}:{found[1]}"
        if isinstance(out, _TENSOR):  # which tensors are the op's outputs: as the engine
            tensors = [out]
        elif out is None:
            m = funcs.mutated_arg(fi, args, kwargs)
            tensors = [args[m]] if m is not None and isinstance(args[m], _TENSOR) else []
        elif isinstance(out, (tuple, list)) and any(
                isinstance(o, (_TENSOR, tuple, list)) for o in out):
            tensors = [t for _, t in tensor_leaves(out, ())]
        else:
            return
        with torch._C.DisableTorchFunction():
            for t in tensors:
                self.kept.append(KeptOp(call, fi.name, type_, copy_payload(t, self.payload)))

    @contextmanager
    def attached(self) -> Iterator[ScopedRun]:
        """Hooks on the scope modules, removed on exit (also on error), and this thread's
        mode stack as it was."""
        self.calls.thread = threading.get_ident()
        handles = []
        try:
            for m in self.modules.values():
                handles.append(m.register_forward_pre_hook(self._pre))
                handles.append(m.register_forward_hook(self._post, always_call=True))
            yield self
        finally:
            for h in handles:
                h.remove()
            self.calls.running.clear()
            if self._entered:  # only if a hook never ran (not reached in a plain forward)
                self._leave()
