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
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import funcs, modes, rng, storage
from .frames import user_stack
from .hooks import ModuleHooks
from .interceptors import Interceptor, SaveAll, SaveNone, SavePolicy
from .model_index import ModelIndex
from .records import (
    BUFFER,
    CONSTANT,
    IDENTITY,
    INPUT,
    OP,
    OUTPUT,
    LazyPayload,
    ModuleCallRecord,
    OpRecord,
    ParamRef,
    RecordTable,
    Ref,
)
from .template import rebuild as _rebuild
from .template import tensor_leaves as _tensor_leaves
from .template import tensors_in as _tensors_in


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

    def store(self, t: Tensor) -> Tensor | LazyPayload:
        """What the record keeps for ``t``: the tensor :meth:`apply` makes, or a handle
        to it where the options stream payloads elsewhere (``tl.to_disk``)."""
        return self.apply(t)


_TENSOR = Tensor
_PARAM = nn.Parameter


class Recorder(TorchFunctionMode):
    """Records one forward pass. Create, ``with recorder.attached(model):`` run, read ``ops``."""

    def __init__(self, model: nn.Module | None,
                 policy: SavePolicy | None = None,
                 interceptors: tuple[Interceptor, ...] = (),
                 halt: Callable[[OpRecord], bool] | None = None,
                 payload: PayloadOptions | None = None,
                 code_context: bool = False, index: ModelIndex | None = None) -> None:
        super().__init__()
        self.model = model
        self.ops = RecordTable()
        self._ops_ref = weakref.ref(self.ops)
        self.policy: SavePolicy = policy if policy is not None else SaveAll()
        self._save_all = isinstance(self.policy, SaveAll)
        self._save_none = isinstance(self.policy, SaveNone)
        self.interceptors = interceptors
        # --- interception extras (see Interceptor): module-exit hooks, live call inputs
        self._exit_hooks = tuple(h.on_module_output for h in interceptors if h.exits_modules)
        self.current_inputs: tuple[Any, dict[str, Any]] | None = None
        for h in interceptors:
            h.attach(self)
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
        # op's Ref placeholder, shared by all its consumers' argument templates, the
        # tensor's _version when mapped: a later write through any view bumps it)
        self.tensor_map: dict[int, tuple[int, weakref.ref[Tensor], Ref, int]] = {}
        self.store = storage.StorageLog()  # writes and kept payloads, by storage
        self._kept_log = self.store.kept_fast  # per op: the list append itself
        self._sources: list[Tensor] = []  # inputs, buffers, constants: outlive the pass
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
        # Calls of the top module so far, and the one running now (0: none; run.py keeps
        # both, so each decoding step of a traced model.generate is addressable).
        self.steps = 0
        self.step = 0
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
        op = OpRecord(self._ops_ref, len(self.ops), kind, func, name, type_, args, kwargs,
                      parents, None, tensor, self.ctx, params, elapsed, out_index, call_id,
                      mutates, address)
        self._enter(op, tensor, force_save)
        if kind is not OP and kind is not OUTPUT and kind is not IDENTITY:
            self._sources.append(tensor)
        return op

    def _enter(self, op: OpRecord, tensor: Tensor, force_save: bool = False) -> None:
        """Add a new record (made for ``tensor``) to the recording: link it to its
        parents, decide or hold its payload, and map the tensor to it."""
        ops = self.ops
        idx = op.call_index
        if self.step:
            op.step = self.step
        ops.append(op)
        for p in op.parent_idx:
            ops[p].child_idx.append(idx)
        if force_save or self._save_all:
            if self._plain_payload:
                op._payload = tensor
                op._saved = True
            else:
                self._keep(op, tensor)
            self._kept_log(idx)
        elif not self._save_none:  # (an op holding no payload is not logged: no copy
            decision = self.policy.decide(op, "live")  # on write can concern it)
            if decision:
                self._keep(op, tensor)
                self._kept_log(idx)
            elif decision is None:
                self._hold(idx, tensor)
                self._kept_log(idx)
        try:
            v = tensor._version
        except RuntimeError:  # inference tensors have no version counter
            v = -1
        self.tensor_map[id(tensor)] = (idx, weakref.ref(tensor), _ref(Ref, (idx,)), v)
        if self.pending and self.policy.lookback:
            self._drain_lookback(idx)

    def _keep(self, op: OpRecord, tensor: Tensor) -> None:
        if self._plain_payload:
            op._payload = tensor
        else:  # module hooks run with the mode active: these calls are not the model's ops
            with torch._C.DisableTorchFunction():
                op._payload = self.payload.store(tensor)
        op._saved = True

    def _hold(self, idx: int, tensor: Tensor) -> None:
        """Keep an undecided payload until its op is decided (detached if the policy says)."""
        if self.policy.detach_pending:
            with torch._C.DisableTorchFunction():
                tensor = tensor.detach()
        self.pending[idx] = tensor

    def _drain_lookback(self, idx: int) -> None:
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
                try:
                    v = a._version
                except RuntimeError:  # inference tensors have no version counter
                    v = -1
                if v != hit[3] or (v < 0 and self.store.active):
                    hit = self._refreshed(a, hit)
                if hit is not None:
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

    # ------------------------------------------------------------------ storage versions
    def _held(self, idx: int) -> Tensor | None:
        op = self.ops[idx]
        if not op._saved:
            return self.pending.get(idx)
        p = op._payload  # a payload streamed elsewhere aliases no storage of the run
        return p if isinstance(p, Tensor) else None

    def _replace_held(self, idx: int, t: Tensor) -> None:
        if self.ops[idx]._saved:
            self.ops[idx].payload = t
        else:
            self.pending[idx] = t

    def _before_inplace(self, target: Any) -> None:
        """Copy on write: clone every kept payload that shares storage with ``target``."""
        if isinstance(target, _TENSOR):
            self.store.before_write(target, self._held, self._replace_held)

    def _lookup(self, t: Tensor) -> int | None:
        """The op whose output ``t`` is now (a refresh when written since), or None."""
        hit = self.tensor_map.get(id(t))
        if hit is None or hit[1]() is not t:
            return None
        with torch._C.DisableTorchFunction():  # module hooks run with the mode active
            v = storage.version(t)
            if v != hit[3] or (v < 0 and self.store.active):
                fresh = self._refreshed(t, hit)
                return None if fresh is None else fresh[0]
        return hit[0]

    def _refreshed(self, t: Tensor, hit: tuple[int, Any, Ref, int]
                   ) -> tuple[int, Any, Ref, int] | None:
        """``t`` was written (through some view) after op ``hit[0]``: map it to a ``refresh``
        op of that op and the writes. None when a write cannot be replayed (a side effect,
        or a write lens did not see): ``t`` then enters the graph as a new source."""
        writes = self.store.since(t, hit[0])
        if writes is None or any(w.opaque for w in writes):
            del self.tensor_map[id(t)]
            return None
        if not writes:  # the writes missed t's elements: it still reads as before
            hit = (*hit[:3], storage.version(t))
            self.tensor_map[id(t)] = hit
            return hit
        with torch._C.DisableTorchFunction():  # also called from module hooks
            kwargs = storage.refresh_layout(t, writes)
        chain = self._view_chain(hit[0])
        for w in writes:
            chain += self._view_chain(self._written_arg(w.op))
        kwargs["views"] = tuple(sorted(set(chain)))
        args = (hit[2], *[Ref(w.op) for w in writes])
        parents = tuple(dict.fromkeys((hit[0], *[w.op for w in writes])))
        # Not offered to interceptors: it records the model's tensor after a write, not a
        # call the model made (edit the write, or an op reading the tensor, instead).
        self.next_call_id += 1
        op = self._new(OP, storage.refresh, "refresh", "refresh", args, kwargs, parents, t,
                       call_id=self.next_call_id)
        if self.halt is not None and self.halt(op):
            self.halted = True
            raise Halt()
        return self.tensor_map[id(t)]

    def _written_arg(self, idx: int) -> int:
        """The op that produced the tensor op ``idx`` wrote into."""
        rec = self.ops[idx]
        target = rec.args[rec.mutates] if rec.mutates is not None else rec.kwargs.get("out")
        return target.op if isinstance(target, Ref) else idx

    def _view_chain(self, idx: int) -> list[int]:
        """Ops between ``idx`` and the op that made its storage, walking up through views,
        in-place ops and refreshes (the view ops and refreshes are returned)."""
        chain: list[int] = []
        rec = self.ops[idx]
        while rec.kind == OP:
            if rec.mutates is not None:
                nxt = self._written_arg(rec.call_index)
            elif (rec.func is storage.refresh or rec.func_name in storage.VIEW_NAMES) \
                    and rec.args and isinstance(rec.args[0], Ref):
                chain.append(rec.call_index)
                nxt = rec.args[0].op
            else:
                break
            if nxt == rec.call_index:
                break
            rec = self.ops[nxt]
        return chain

    def _written(self, func: Any, fi: funcs.FuncInfo, args: tuple[Any, ...], kwargs: dict[str, Any],
                 mutated: int | None) -> list[tuple[Tensor, bool]]:
        """Tensors this call writes into: (tensor, written as a side effect)."""
        found: list[tuple[Tensor, bool]] = []
        if mutated is not None and isinstance(args[mutated], _TENSOR):
            found.append((args[mutated], False))
        if "out" in kwargs:
            found += [(t, False) for _, t in _tensor_leaves(kwargs["out"], ())]
        slots = storage.side_writes(func, args, kwargs) if fi.name in _SIDE else ()
        for slot in slots:
            found.append((storage.at(args, kwargs, slot), True))
        return found

    def _log_writes(self, written: list[tuple[Tensor, bool]], first: int) -> None:
        """After the call: each written tensor is a new version of its storage."""
        for t, opaque in written:
            hit = self.tensor_map.get(id(t))
            if not opaque and hit is not None and hit[1]() is t and hit[0] >= first:
                self.store.wrote(t, hit[0])
            else:  # a side effect, or an output lens did not record: seen as a new source
                self.store.wrote(t, len(self.ops) - 1, opaque=True)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        try:
            fi = _INFO[func]
        except (KeyError, TypeError):  # first call of func, or an unhashable callable
            fi = funcs.info(func)
        if fi.plain and not (kwargs and "out" in kwargs):
            # The common case: no write, no draw. Record it without the checks below.
            mode = _current_mode()
            t0 = perf_counter()
            out = func(*args, **kwargs) if kwargs else func(*args)
            elapsed = perf_counter() - t0
            if isinstance(out, _TENSOR):
                return self._record_plain(func, fi, args, kwargs, out, elapsed, mode)
            self._draw, self._mode = None, mode
            return self._dispatch(func, fi, args, kwargs or {}, out, elapsed, None, None)
        if fi.query:
            return func(*args, **kwargs) if kwargs else func(*args)
        if kwargs is None:
            kwargs = {}
        mutated = None
        if fi.inplace_arg is not None or fi.inplace_flag is not None:
            mutated = funcs.mutated_arg(fi, args, kwargs)
        pre = None
        written = (self._written(func, fi, args, kwargs, mutated)
                   if mutated is not None or fi.name in _SIDE or "out" in kwargs else None)
        if written:  # read the arguments before the call overwrites them, then copy on write
            pre = self._template(args, kwargs)
            for t, _ in written:
                self._before_inplace(t)
        first = len(self.ops)
        self._draw = (rng.snapshot(kwargs) if fi.random and rng.draws(fi.name, args, kwargs)
                      else None)
        self._mode = _current_mode()
        t0 = perf_counter()
        out = func(*args, **kwargs)
        elapsed = perf_counter() - t0
        if written:
            try:
                return self._dispatch(func, fi, args, kwargs, out, elapsed, mutated, pre)
            finally:
                self._log_writes(written, first)
        return self._dispatch(func, fi, args, kwargs, out, elapsed, mutated, pre)

    def _dispatch(self, func: Any, fi: funcs.FuncInfo, args: tuple[Any, ...],
                  kwargs: dict[str, Any], out: Any, elapsed: float, mutated: int | None,
                  pre: Template | None) -> Any:
        if isinstance(out, _TENSOR):
            return self._record(func, fi, args, kwargs, out, elapsed, mutated, pre)
        if out is None and mutated is not None and isinstance(args[mutated], _TENSOR):
            self._record(func, fi, args, kwargs, args[mutated], elapsed, mutated, pre)
            return None
        if type(out) is bool and fi.name == "__bool__":
            hit = self.tensor_map.get(id(args[0])) if args else None
            if hit is not None:
                self.ops[hit[0]].bool_used = True
        elif isinstance(out, (tuple, list)) and out and any(
                isinstance(o, (_TENSOR, tuple, list)) for o in out):
            return self._record_multi(func, fi, args, kwargs, out, elapsed, pre)
        return out

    def _template(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Template:
        parents: list[int] = []
        params: list[str] = []
        targs = tuple([self._arg(a, parents, params) for a in args])
        tkwargs = {k: self._arg(v, parents, params) for k, v in kwargs.items()} if kwargs else {}
        if len(parents) > 1:
            parents = list(dict.fromkeys(parents))
        return targs, tkwargs, tuple(parents), tuple(params)

    def _record_plain(self, func: Any, fi: funcs.FuncInfo, args: tuple[Any, ...],
                      kwargs: dict[str, Any] | None, out: Tensor, elapsed: float,
                      mode: modes.Mode | None) -> Tensor:
        """:meth:`_record` for a plain call (see ``FuncInfo.plain``), with the template of
        already-recorded tensor and constant arguments made inline."""
        parents: list[int] = []
        params: list[str] = []
        tmap = self.tensor_map
        targs: list[Any] = []
        for a in args:
            if type(a) in _ATOMS:
                targs.append(a)
                continue
            if isinstance(a, _TENSOR):
                hit = tmap.get(id(a))
                if hit is not None and hit[1]() is a:
                    try:
                        v = a._version
                    except RuntimeError:
                        v = -1
                    if v == hit[3] and v >= 0:  # unchanged since it was recorded
                        parents.append(hit[0])
                        targs.append(hit[2])
                        continue
            targs.append(self._arg(a, parents, params))
        tkwargs = {k: self._arg(v, parents, params) for k, v in kwargs.items()} if kwargs else {}
        if len(parents) > 1:
            parents = list(dict.fromkeys(parents))
        self.next_call_id += 1
        op = OpRecord(self._ops_ref, len(self.ops), OP, func, fi.name, fi.type, tuple(targs),
                      tkwargs, tuple(parents), None, out, self.ctx, tuple(params), elapsed, (),
                      self.next_call_id, None)
        op.mode = mode
        self._enter(op, out)
        if self.code_context:
            op.code = user_stack()
        if self.interceptors:
            self.current_inputs = (args, kwargs or {})
        elif self.halt is None:
            return out
        return self._after(op, out)

    def _record(self, func: Any, fi: funcs.FuncInfo, args: tuple[Any, ...],
                kwargs: dict[str, Any], out: Tensor, elapsed: float,
                mutated: int | None, pre: Template | None = None) -> Tensor:
        targs, tkwargs, parents, params = pre or self._template(args, kwargs)
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
                    hit = self.tensor_map[id(out)]
                    self.tensor_map[id(out)] = (*hit[:3], storage.version(out))
                elif self.recorded_after(new, op.call_index):
                    out = new  # a spliced module's output: consumers read its own op
                    continue
                else:
                    out = new
                    self.tensor_map[id(out)] = (op.call_index, weakref.ref(out),
                                                Ref(op.call_index), storage.version(out))
                if op._saved:
                    self._keep(op, out)
                elif op.call_index in self.pending:
                    self._hold(op.call_index, out)
                self.store.kept(op.call_index)
        if self.halt is not None and self.halt(op):
            self.halted = True
            raise Halt()
        return out

    def _record_multi(self, func: Any, fi: funcs.FuncInfo, args: tuple[Any, ...],
                      kwargs: dict[str, Any], out: Any, elapsed: float,
                      pre: Template | None = None) -> Any:
        targs, tkwargs, parents, params = pre or self._template(args, kwargs)
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
        for t in _tensors_in(args, kwargs):
            i = self._lookup(t)
            if i is not None:
                ins.append(i)
        if ins:
            call.input_ops = tuple(dict.fromkeys(ins)) if len(ins) > 1 else (ins[0],)
        self.module_calls.append(call)
        self.ctx = (*self.ctx, call)

    def _post_hook(self, module: nn.Module, args: Any, *rest: Any) -> Any:
        if threading.get_ident() != self.thread:
            return None  # another thread's call (see _pre_hook); rest may lack kwargs
        kwargs, output = rest
        call = None
        address = self.module_names.get(id(module))
        ctx = self.ctx
        for i in range(len(ctx) - 1, -1, -1):  # robust to calls that raised inside
            if ctx[i].address == address:
                call = ctx[i]
                self.ctx = ctx[:i]
                break
        if call is None:
            return None
        outer, inner = self.ctx, (*self.ctx, call)
        replaced: dict[tuple[int | str, ...], Tensor] = {}
        leaves = [((), output)] if isinstance(output, _TENSOR) else _tensor_leaves(output, ())
        for path, t in leaves:
            self.ctx = inner  # a refresh or identity made here belongs to the module
            idx = self._lookup(t)
            if idx is None or idx < call.first_op:
                # The module returned a tensor it did not compute (nn.Identity): give the
                # module an explicit identity op so it has an output of its own.
                parents: list[int] = []
                targ = self._arg(t, parents, [])
                op = self._new(IDENTITY, None, "identity", "identity", (targ,), {},
                               tuple(parents), t)
                self.ctx = outer
                if self.interceptors:
                    self.current_inputs = ((t,), {})
                with torch._C.DisableTorchFunction():  # hooks run with the mode active
                    new = self._after(op, t)
                if new is not t:
                    replaced[path] = new
                idx = op.call_index
            self.ctx = outer
            rec = self.ops[idx]
            if rec.output_of:
                rec.output_of.append(call)
            else:  # most ops are no module's output: they share the empty tuple
                rec.output_of = [call]
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
        if self.recorded_after(new, rec.call_index):
            return  # a spliced module's output: consumers read its own op
        self.tensor_map[id(new)] = (rec.call_index, weakref.ref(new), Ref(rec.call_index),
                                    storage.version(new))
        if rec._saved:
            self._keep(rec, new)
        elif rec.call_index in self.pending:
            self._hold(rec.call_index, new)
        self.store.kept(rec.call_index)

    def recorded_after(self, t: Tensor, idx: int) -> bool:
        """Whether ``t`` is the output of an op recorded after op ``idx``: a replacement an
        interceptor computed with recording on (a spliced module), which keeps its own
        record instead of becoming a new value of op ``idx``."""
        hit = self.tensor_map.get(id(t))
        return hit is not None and hit[0] > idx and hit[1]() is t

    @contextmanager
    def attached(self) -> Iterator[Recorder]:
        """Hooks on every module and the function mode, removed on exit (also on error)."""
        # Module hooks are global to the module object; the function mode is per thread
        # (torch keeps the mode stack thread-local). Only this thread's calls are ours.
        self.thread = threading.get_ident()
        hooks = None
        try:
            if self.model is not None:
                # the root's ops are "top level", not inside a module
                hooks = ModuleHooks(self.index.submodules, self._pre_hook, self._post_hook)
            with self:
                yield self
        finally:
            if hooks is not None:
                hooks.remove()
            self.ctx = ()

    def finish(self, final: Callable[[OpRecord], Any] | None = None) -> None:
        """Decide every payload still pending, now that the whole pass is known.

        ``final`` gives the finished trace's view of a record (None: trimmed, so not
        part of the trace and nothing to keep); the policy decides on that view."""
        for j, t in list(self.pending.items()):
            view = final(self.ops[j]) if final is not None else None
            if view is not None and self.policy.decide(view, "final"):
                self._keep(self.ops[j], t)
        self.pending.clear()
        external = [*self.index.param_values.values(), *(b for _, b in self.buffers.values()),
                    *self._sources]
        self.store.freeze(external, self._held, self._replace_held)
        self.tensor_map.clear()
        self._sources.clear()


Path = tuple[int | str, ...]
Template = tuple[tuple[Any, ...], dict[str, Any], tuple[int, ...], tuple[str, ...]]
_SIDE = funcs.SIDE_WRITES
_INFO = funcs._CACHE
_current_mode = modes.current
_ref = tuple.__new__  # Ref(i) without NamedTuple's Python-level __new__
# Argument types kept as they are in a template, found by one type() check.
_ATOMS = frozenset({int, float, bool, str, type(None), torch.dtype, torch.device,
                    torch.memory_format, torch.layout})


