"""The capture engine: a TorchFunctionMode plus module hooks, entered for one forward pass.

Per intercepted call the hot path does: look up cached facts about the function, clone
saved payloads that an in-place call is about to overwrite, run the call, and — only if
it produced tensors — write one :class:`OpRecord` per output tensor. Nothing in torch is
changed outside the ``with`` block; hooks are removed in ``finally``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import funcs, modes, rng
from .frames import user_stack
from .model_index import ModelIndex
from .records import (
    BUFFER,
    CONSTANT,
    IDENTITY,
    INPUT,
    OP,
    OUTPUT,
    ModuleCallRecord,
    OpRecord,
    ParamRef,
    Ref,
)


class Interceptor(Protocol):
    """The extension point: sees each op's output tensor and returns it or a replacement.

    Live interventions plug in here. ``op`` is the record just written (its ``payload`` is
    not yet set when the policy has not saved it). A replacement of an in-place op's
    output is written into the mutated tensor (the model keeps using that object).

    Optional, looked up once per recorder (duck-typed, so plain callables qualify):

    - ``attach(recorder)``: called when the recorder is created; ``recorder.current_inputs``
      then holds the ``(args, kwargs)`` of the call being intercepted (the op's call, or
      the module call at its exit).
    - ``on_module_output(op, value) -> value``: called at each module exit for every
      tensor the module returns (``op.output_of[-1]`` is the exiting call); a replacement
      becomes the module's output, as a forward hook's return value would.
    """

    def __call__(self, op: OpRecord, value: Tensor) -> Tensor: ...


class SavePolicy(Protocol):
    """Decides which payloads to keep. ``stage`` is 'live', 'module_exit', 'lookahead'
    (``lookback`` ops later) or 'final'; ``None`` means "not decidable yet, ask again at a
    later stage". A policy with ``detach_pending`` holds undecided payloads detached."""

    lookback: int

    def decide(self, op: OpRecord, stage: str) -> bool | None: ...


class SaveAll:
    lookback = 0

    def decide(self, op: OpRecord, stage: str) -> bool | None:
        return True


class SaveNone:
    lookback = 0

    def decide(self, op: OpRecord, stage: str) -> bool | None:
        return False


class Halt(Exception):
    """Raised inside the forward to stop it right after a halting op."""


class PayloadOptions:
    """How kept payloads are stored: detached, moved to a device, cast to a dtype."""

    __slots__ = ("detach", "device", "dtype")

    def __init__(self, detach: bool = False, device: Any = None, dtype: Any = None) -> None:
        self.detach = detach
        self.device = None if device is None else torch.device(device)
        self.dtype = dtype

    @property
    def identity(self) -> bool:
        return not self.detach and self.device is None and self.dtype is None

    def apply(self, t: Tensor) -> Tensor:
        if self.detach:
            t = t.detach()
        if self.dtype is not None and (t.is_floating_point() or t.is_complex()):
            # Only floating payloads are cast: casting indices or masks would lose values.
            t = t.to(device=self.device, dtype=self.dtype)
        elif self.device is not None:
            t = t.to(device=self.device)
        return t


_TENSOR = Tensor
_PARAM = nn.Parameter


class Recorder(TorchFunctionMode):
    """Records one forward pass. Create, ``with recorder.attached(model):`` run, read ``ops``."""

    def __init__(self, model: nn.Module | None, record_cls: type[OpRecord] = OpRecord,
                 policy: SavePolicy | None = None,
                 interceptors: tuple[Interceptor, ...] = (),
                 halt: Callable[[OpRecord], bool] | None = None,
                 payload: PayloadOptions | None = None,
                 code_context: bool = False, index: ModelIndex | None = None) -> None:
        super().__init__()
        self.model = model
        self.cls = record_cls
        self.ops: list[OpRecord] = []
        self.policy: SavePolicy = policy if policy is not None else SaveAll()
        self._save_all = isinstance(self.policy, SaveAll)
        self._save_none = isinstance(self.policy, SaveNone)
        self.interceptors = interceptors
        # --- interception extras (see Interceptor): module-exit hooks, live call inputs
        self._exit_hooks = tuple(h.on_module_output for h in interceptors
                                 if hasattr(h, "on_module_output"))
        self.current_inputs: tuple[Any, dict[str, Any]] | None = None
        for h in interceptors:
            attach = getattr(h, "attach", None)
            if attach is not None:
                attach(self)
        # --- end interception extras
        self.halt = halt
        self.payload = payload or PayloadOptions()
        self._plain_payload = self.payload.identity
        self.code_context = code_context
        self.pending: dict[int, Tensor] = {}  # undecided payloads, by op index
        # Module outputs a module-exit decision left open: the enclosing call (by id) may
        # return the same tensor (a Sequential returns its last child's output).
        self._exit_wait: dict[int, list[int]] = {}
        # id(tensor) -> (producing op, weak reference to check the id was not reused, the
        # op's Ref placeholder, shared by all its consumers' argument templates)
        self.tensor_map: dict[int, tuple[int, weakref.ref[Tensor], Ref]] = {}
        self.index = index if index is not None else ModelIndex(model)
        self.params = self.index.params
        self.param_refs = {k: ParamRef(name) for k, name in self.params.items()}
        self.buffers = self.index.buffers
        self.module_names = self.index.module_names
        self.module_calls: list[ModuleCallRecord] = []
        self.call_counts: dict[str, int] = {}
        self.ctx: tuple[ModuleCallRecord, ...] = ()
        self.next_call_id = 0
        self.halted = False
        self.thread = threading.get_ident()  # the thread running the forward (see attached)
        # how the call being recorded runs: generator state if it draws, its mode
        self._draw: rng.RngState | None = None
        self._mode: modes.Mode | None = None

    # ------------------------------------------------------------------ recording
    def _new(self, kind: str, func: Any, name: str, type_: str, args: tuple[Any, ...],
             kwargs: dict[str, Any], parents: tuple[int, ...], tensor: Tensor,
             params: tuple[str, ...] = (), elapsed: float = 0.0,
             out_index: tuple[int | str, ...] = (), call_id: int = -1,
             mutates: int | None = None, address: str | None = None,
             force_save: bool = False) -> OpRecord:
        ops = self.ops
        idx = len(ops)
        op = self.cls(ops, idx, kind, func, name, type_, args, kwargs, parents, None, tensor,
                      self.ctx, params, elapsed, out_index, call_id, mutates, address)
        ops.append(op)
        for p in parents:
            ops[p].child_idx.append(idx)
        if force_save or self._save_all:
            self._keep(op, tensor)
        elif not self._save_none:
            decision = self.policy.decide(op, "live")
            if decision:
                self._keep(op, tensor)
            elif decision is None:
                self._hold(idx, tensor)
        self.tensor_map[id(tensor)] = (idx, weakref.ref(tensor), Ref(idx))
        if self.pending and self.policy.lookback:
            self._drain_window(idx)
        return op

    def _keep(self, op: OpRecord, tensor: Tensor) -> None:
        if self._plain_payload:
            op.payload = tensor
        else:  # module hooks run with the mode active: these calls are not the model's ops
            with torch._C.DisableTorchFunction():
                op.payload = self.payload.apply(tensor)
        op._saved = True

    def _hold(self, idx: int, tensor: Tensor) -> None:
        """Keep an undecided payload until its op is decided (detached if the policy says)."""
        if getattr(self.policy, "detach_pending", False):
            with torch._C.DisableTorchFunction():
                tensor = tensor.detach()
        self.pending[idx] = tensor

    def _drain_window(self, idx: int) -> None:
        edge = idx - self.policy.lookback
        for j in [j for j in self.pending if j <= edge]:
            decision = self.policy.decide(self.ops[j], "lookahead")
            if decision is not None:
                t = self.pending.pop(j)
                if decision:
                    self._keep(self.ops[j], t)

    def _arg(self, a: Any, parents: list[int], params: list[str]) -> Any:
        """Template of one argument: tensors become Ref/ParamRef; containers recurse."""
        if isinstance(a, _TENSOR):
            key = id(a)
            hit = self.tensor_map.get(key)
            if hit is not None and hit[1]() is a:
                parents.append(hit[0])
                return hit[2]
            pref = self.param_refs.get(key)
            if pref is not None:
                params.append(pref.name)
                return pref
            buf = self.buffers.get(key)
            if buf is not None and buf[1] is a:
                op = self._new(BUFFER, None, "buffer", "buffer", (), {}, (), a,
                               address=buf[0], force_save=True)
            else:  # a tensor lens never saw being made: keep its value as a constant
                op = self._new(CONSTANT, None, "constant", "constant", (), {}, (), a,
                               force_save=True)
            parents.append(op.call_index)
            return Ref(op.call_index)
        t = type(a)
        if t is tuple or t is list:
            if not a:
                return a
            items = [self._arg(x, parents, params) for x in a]
            return tuple(items) if t is tuple else items
        return a

    def _before_inplace(self, target: Any) -> None:
        """Copy on write: clone every saved payload that shares storage with ``target``."""
        if not isinstance(target, _TENSOR):
            return
        try:
            ptr = target.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            return
        for op in self.ops:
            out = op.payload
            if out is None or out.device != target.device:
                continue
            try:
                same = out.untyped_storage().data_ptr() == ptr
            except (RuntimeError, NotImplementedError):
                continue
            if same:
                op.payload = out.clone()
        for j, t in list(self.pending.items()):
            if t.untyped_storage().data_ptr() == ptr:
                self.pending[j] = t.clone()

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        fi = funcs.info(func)
        if fi.query:
            return func(*args, **kwargs) if kwargs else func(*args)
        if kwargs is None:
            kwargs = {}
        mutated = None
        if fi.inplace_arg is not None or fi.inplace_flag is not None:
            mutated = funcs.mutated_arg(fi, args, kwargs)
            if mutated is not None:
                self._before_inplace(args[mutated])
        if "out" in kwargs:
            self._before_inplace(kwargs["out"])
        self._draw = (rng.snapshot(kwargs) if fi.random and rng.draws(fi.name, args, kwargs)
                      else None)
        self._mode = modes.current()
        t0 = perf_counter()
        out = func(*args, **kwargs)
        elapsed = perf_counter() - t0
        if isinstance(out, _TENSOR):
            return self._record(func, fi, args, kwargs, out, elapsed, mutated)
        if out is None and mutated is not None and isinstance(args[mutated], _TENSOR):
            self._record(func, fi, args, kwargs, args[mutated], elapsed, mutated)
            return None
        if type(out) is bool and fi.name == "__bool__":
            hit = self.tensor_map.get(id(args[0])) if args else None
            if hit is not None:
                self.ops[hit[0]].bool_used = True
        elif isinstance(out, (tuple, list)) and out and any(
                isinstance(o, (_TENSOR, tuple, list)) for o in out):
            return self._record_multi(func, fi, args, kwargs, out, elapsed)
        return out

    def _template(self, args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> tuple[tuple[Any, ...], dict[str, Any], tuple[int, ...], tuple[str, ...]]:
        parents: list[int] = []
        params: list[str] = []
        targs = tuple([self._arg(a, parents, params) for a in args])
        tkwargs = {k: self._arg(v, parents, params) for k, v in kwargs.items()} if kwargs else {}
        if len(parents) > 1:
            parents = list(dict.fromkeys(parents))
        return targs, tkwargs, tuple(parents), tuple(params)

    def _record(self, func: Any, fi: funcs.FuncInfo, args: tuple[Any, ...],
                kwargs: dict[str, Any], out: Tensor, elapsed: float,
                mutated: int | None) -> Tensor:
        targs, tkwargs, parents, params = self._template(args, kwargs)
        self.next_call_id += 1
        type_ = fi.type if not fi.divides else funcs.call_type(fi, kwargs)
        op = self._new(OP, func, fi.name, type_, targs, tkwargs, parents, out, params,
                       elapsed, (), self.next_call_id, mutated)
        op.rng, op.mode = self._draw, self._mode
        if self.code_context:
            op.code = user_stack()
        if self.interceptors:
            self.current_inputs = (args, kwargs)
        return self._after(op, out)

    def _after(self, op: OpRecord, out: Tensor) -> Tensor:
        for hook in self.interceptors:
            new = hook(op, out)
            if new is not out:
                if op.mutates is not None:
                    # In place: the model goes on using the tensor it mutated, so the
                    # replacement is written into it (copy on write for saved payloads).
                    self._before_inplace(out)
                    out.copy_(new)
                else:
                    out = new
                    self.tensor_map[id(out)] = (op.call_index, weakref.ref(out),
                                                Ref(op.call_index))
                if op._saved:
                    self._keep(op, out)
                elif op.call_index in self.pending:
                    self._hold(op.call_index, out)
        if self.halt is not None and self.halt(op):
            self.halted = True
            raise Halt()
        return out

    def _record_multi(self, func: Any, fi: funcs.FuncInfo, args: tuple[Any, ...],
                      kwargs: dict[str, Any], out: Any, elapsed: float) -> Any:
        targs, tkwargs, parents, params = self._template(args, kwargs)
        self.next_call_id += 1
        call_id = self.next_call_id
        leaves = list(_tensor_leaves(out, ()))
        replaced: dict[tuple[int | str, ...], Tensor] = {}
        halting = False
        if self.interceptors:
            self.current_inputs = (args, kwargs)
        for path, t in leaves:
            op = self._new(OP, func, fi.name, fi.type, targs, tkwargs, parents, t, params,
                           elapsed, path, call_id, None)
            op.rng, op.mode = self._draw, self._mode
            if self.code_context:
                op.code = user_stack()
            try:
                new = self._after(op, t)
            except Halt:
                halting, new = True, t
            if new is not t:
                replaced[path] = new
        if replaced:
            out = _rebuild(out, (), replaced)
        if halting:
            raise Halt()
        return out

    # ------------------------------------------------------------------ sources and sinks
    def add_input(self, tensor: Tensor, address: str) -> OpRecord:
        return self._new(INPUT, None, "input", "input", (), {}, (), tensor, address=address,
                         force_save=True)

    def add_output(self, tensor: Tensor, address: str) -> OpRecord:
        parents: list[int] = []
        self._arg(tensor, parents, [])
        return self._new(OUTPUT, None, "output", "output", (Ref(parents[0]),), {},
                         tuple(parents), tensor, address=address)

    # ------------------------------------------------------------------ module hooks
    def _pre_hook(self, module: nn.Module, args: Any, kwargs: Any = None) -> None:
        # Hooks sit on shared modules: another thread's forward is not ours. (Such a call
        # may even come without kwargs: torch reads a hook's with_kwargs flag separately
        # from the hook, so a forward racing our registration sees one without the other.)
        if threading.get_ident() != self.thread:
            return
        address = self.module_names.get(id(module), "?")
        n = self.call_counts.get(address, 0) + 1
        self.call_counts[address] = n
        parent = self.ctx[-1] if self.ctx else None
        call = ModuleCallRecord(address, n, type(module).__name__, parent, len(self.ops),
                                len(self.ctx))
        ins: list[int] = []
        for _, t in _tensor_leaves((args, kwargs), ()):
            hit = self.tensor_map.get(id(t))
            if hit is not None and hit[1]() is t:
                ins.append(hit[0])
        call.input_ops = tuple(dict.fromkeys(ins))
        self.module_calls.append(call)
        self.ctx = (*self.ctx, call)

    def _post_hook(self, module: nn.Module, args: Any, *rest: Any) -> Any:
        if threading.get_ident() != self.thread:
            return None  # another thread's call (see _pre_hook); rest may lack kwargs
        kwargs, output = rest
        call = None
        for i in range(len(self.ctx) - 1, -1, -1):  # robust to calls that raised inside
            if self.module_names.get(id(module)) == self.ctx[i].address:
                call = self.ctx[i]
                self.ctx = self.ctx[:i]
                break
        if call is None:
            return None
        replaced: dict[tuple[int | str, ...], Tensor] = {}
        for path, t in _tensor_leaves(output, ()):
            hit = self.tensor_map.get(id(t))
            idx = hit[0] if hit is not None and hit[1]() is t else None
            if idx is None or idx < call.first_op:
                # The module returned a tensor it did not compute (nn.Identity): give the
                # module an explicit identity op so it has an output of its own.
                self.ctx = (*self.ctx, call)
                parents: list[int] = []
                targ = self._arg(t, parents, [])
                op = self._new(IDENTITY, None, "identity", "identity", (targ,), {},
                               tuple(parents), t)
                self.ctx = self.ctx[:-1]
                if self.interceptors:
                    self.current_inputs = ((t,), {})
                with torch._C.DisableTorchFunction():  # hooks run with the mode active
                    new = self._after(op, t)
                if new is not t:
                    replaced[path] = new
                idx = op.call_index
            rec = self.ops[idx]
            rec.output_of.append(call)
            call.output_ops.append(idx)
            if self._exit_hooks:
                self._exit_edit(rec, path, replaced.get(path, t), replaced, args, kwargs)
            if idx in self.pending:
                decision = self.policy.decide(rec, "module_exit")
                if decision is not None:
                    if decision or call.parent is None:
                        t2 = self.pending.pop(idx)
                        if decision:
                            self._keep(rec, t2)
                    else:  # the enclosing call may return it too: decide at its exit
                        self._exit_wait.setdefault(id(call.parent), []).append(idx)
        waiting = self._exit_wait.pop(id(call), None)
        if waiting:  # waited on this call, which does not return them: decide now
            outs = set(call.output_ops)
            for j in waiting:
                if j not in outs and j in self.pending:
                    decision = self.policy.decide(self.ops[j], "module_exit")
                    if decision is not None:
                        t2 = self.pending.pop(j)
                        if decision:
                            self._keep(self.ops[j], t2)
        call.last_op = len(self.ops) - 1
        if self.halt is not None and any(self.halt(self.ops[i]) for i in call.output_ops):
            self.halted = True
            raise Halt()
        if replaced:
            return _rebuild(output, (), replaced)
        return None

    def _exit_edit(self, rec: OpRecord, path: Path, value: Tensor,
                   replaced: dict[Path, Tensor], args: Any, kwargs: Any) -> None:
        """Module exit: let ``on_module_output`` hooks replace one returned tensor."""
        self.current_inputs = (args, kwargs)
        new = value
        with torch._C.DisableTorchFunction():  # forward hooks run with the mode active
            for hook in self._exit_hooks:
                new = hook(rec, new)
        if new is value:
            return
        replaced[path] = new
        self.tensor_map[id(new)] = (rec.call_index, weakref.ref(new), Ref(rec.call_index))
        if rec._saved:
            self._keep(rec, new)
        elif rec.call_index in self.pending:
            self._hold(rec.call_index, new)

    @contextmanager
    def attached(self) -> Iterator[Recorder]:
        """Hooks on every module and the function mode, removed on exit (also on error)."""
        handles = []
        # Module hooks are global to the module object; the function mode is per thread
        # (torch keeps the mode stack thread-local). Only this thread's calls are ours.
        self.thread = threading.get_ident()
        try:
            if self.model is not None:
                for m in self.model.modules():
                    if m is self.model:
                        continue  # the root's ops are "top level", not inside a module
                    handles.append(m.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
                    handles.append(m.register_forward_hook(self._post_hook, with_kwargs=True,
                                                           always_call=False))
            with self:
                yield self
        finally:
            for h in handles:
                h.remove()
            self.ctx = ()

    def finish(self) -> None:
        """Decide every payload still pending, now that the whole pass is known."""
        for j, t in list(self.pending.items()):
            decision = self.policy.decide(self.ops[j], "final")
            if decision:
                self._keep(self.ops[j], t)
        self.pending.clear()
        self.tensor_map.clear()


Path = tuple[int | str, ...]


def _tensor_leaves(obj: Any, path: Path) -> Iterator[tuple[Path, Tensor]]:
    """(path, tensor) for every tensor inside nested tuples/lists/dicts."""
    if isinstance(obj, _TENSOR):
        yield path, obj
    elif isinstance(obj, (tuple, list)):
        for i, x in enumerate(obj):
            yield from _tensor_leaves(x, (*path, i))
    elif isinstance(obj, dict):
        for k, x in obj.items():
            yield from _tensor_leaves(x, (*path, k))


def _rebuild(obj: Any, path: Path, replaced: dict[Path, Tensor]) -> Any:
    """``obj`` with the tensors at ``replaced``'s paths swapped in (same container types)."""
    if path in replaced:
        return replaced[path]
    if isinstance(obj, (tuple, list)):
        items = [_rebuild(x, (*path, i), replaced) for i, x in enumerate(obj)]
        if isinstance(obj, list):
            return type(obj)(items) if type(obj) is not list else items
        if hasattr(obj, "_fields"):  # namedtuple (e.g. torch.return_types.max)
            return type(obj)(*items)
        try:
            return type(obj)(items)
        except TypeError:
            return tuple(items)
    if isinstance(obj, dict):
        new = dict(obj) if type(obj) is dict else obj.__class__(**obj)
        for k in list(new.keys()):
            new[k] = _rebuild(obj[k], (*path, k), replaced)
        return new
    return obj


