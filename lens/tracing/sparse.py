"""``tl.record(..., sparse=True)``: module outputs kept by forward hooks, and ops inside
one module kept by a function mode entered only while that module runs.

A sparse recording records no graph, so it has no call indices and no labels: module
outputs are addressed by module call (``'a.b:2'``) or module address (``'a.b'``: every
call, in order), kept ops by the call of the scope module they ran in
(``rec.ops_in('a:1')``). Asking it for what only a full recording has raises and says
what to call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

from torch import Tensor, nn

from ..capture import PayloadOptions
from ..capture.args import check_input_kwargs, check_options
from ..capture.engine import Halt
from ..capture.known import check_names
from ..capture.policy import halt_predicate
from ..capture.run import bind_inputs, check_model
from ..capture.scoped import KeptOp, ScopedRun, split_scoped
from ..capture.sparse import HookRun, module_map
from ..errors import CaptureError, LookupKeyError
from ..selectors import Selector, coerce
from ..selectors._scope import Scope, scope_of, union

_FULL = ("Record without sparse=True (tl.record(model, x, save=...)) to get ops, call "
         "indices and .to_trace().")


class SparseRecording:
    """What a sparse run kept (see the module doc).

    - ``recording['a.b:2']``: the tensors that module call returned (save selectors
      ``tl.module('a.b')``, ``'a.b:2'``); ``recording['a.b']``: one such list per call.
    - ``recording.ops_in('a:1')``: ``(function name, tensor)`` for each op kept inside that
      call of ``a`` (save selectors ``tl.in_module('a') & tl.func('gelu', ...)``), in call
      order; ``recording.ops_in('a')``: those of every call of ``a``, in order.
    - ``recording.kept_ops``: every kept op as a :class:`~lens.capture.scoped.KeptOp`
      ``(call, name, type, tensor)``, in call order.

    Tensors are copies taken when the module returned or the op ran, with the payload
    options (``detach``, ``device``, ``dtype``) applied.
    """

    def __init__(self, model: Any, output: Any, hooks: HookRun, save: Selector,
                 scope: Scope, scoped: ScopedRun | None = None) -> None:
        self.model = model
        self.output = output
        self.payloads: dict[str, list[Tensor]] = hooks.in_call_order()
        self.kept_ops: list[KeptOp] = scoped.kept if scoped is not None else []
        self.halted = hooks.halted
        self.save_spec = save
        self.scope = scope

    def __len__(self) -> int:
        return len(self.payloads)

    def __iter__(self) -> Iterator[str]:
        return iter(self.payloads)

    def __getitem__(self, key: str) -> Any:
        if key in self.payloads:
            return self.payloads[key]
        if isinstance(key, str) and ":" not in key:
            calls = [v for k, v in self.payloads.items() if _in(k, key)]
            if calls:
                return calls
        have = ", ".join(map(repr, list(self.payloads)[:8])) or "none"
        hint = (f" Ops kept inside {key!r}: rec.ops_in({key!r})."
                if self._op_calls(key) else "")
        raise LookupKeyError(
            f"{key!r} is not a module call this sparse recording kept (kept: {have}). A "
            f"sparse recording is addressed by module call ('a.b:2') or address.{hint} "
            + _FULL)

    def _op_calls(self, key: Any) -> list[KeptOp]:
        if not isinstance(key, str):
            return []
        return [k for k in self.kept_ops if _in(k.call, key)]

    def ops_in(self, call: str) -> list[tuple[str, Tensor]]:
        """``(function name, tensor)`` of each op kept inside module call ``call``
        (``'a:2'``), or inside every call of module ``call`` (``'a'``), in call order."""
        found = self._op_calls(call)
        if not found:
            have = ", ".join(dict.fromkeys(repr(k.call) for k in self.kept_ops)) or "none"
            raise LookupKeyError(
                f"No op was kept inside {call!r} (calls with kept ops: {have}). Ops are "
                "kept inside the module of a save selector tl.in_module('a') & "
                "tl.func(...), addressed by its call ('a:1') or address ('a').")
        return [(k.name, k.tensor) for k in found]

    @property
    def ops(self) -> Any:
        raise CaptureError("A sparse recording records no graph (it used module hooks and "
                           "a scoped function mode only); kept ops are in .kept_ops and "
                           ".ops_in('a:1'). " + _FULL)

    def to_trace(self, **_: Any) -> Any:
        raise CaptureError("A sparse recording cannot become a Trace: no graph was "
                           "recorded. " + _FULL)

    def __repr__(self) -> str:
        state = "halted, " if self.halted else ""
        ops = (f", {len(self.kept_ops)} ops in "
               f"{len({k.call for k in self.kept_ops})} calls" if self.kept_ops else "")
        return (f"<SparseRecording of {type(self.model).__name__}: {state}"
                f"{len(self.payloads)} module calls{ops} kept>")


def _in(call: str, key: str) -> bool:
    """Whether module call ``call`` (``'a:2'``) is what ``key`` names: that call, or
    (an address, ``'a'``) any call of that module."""
    return call == key if ":" in key else call.rpartition(":")[0] == key


def record_sparse(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                  save: Any, halt: Any, detach: bool, device: Any, dtype: Any
                  ) -> SparseRecording:
    """The hook-only run behind ``tl.record(..., sparse=True)``."""
    check_model(model, submodules=False)  # (module_map below walks and checks them)
    check_input_kwargs("tl.record", kwargs)
    check_options("tl.record", device=device, dtype=dtype, detach=detach)
    if not isinstance(model, nn.Module):
        raise CaptureError("tl.record(..., sparse=True) needs an nn.Module: it places "
                           f"forward hooks; got {type(model).__name__}. " + _FULL)
    kwargs = dict(kwargs or {})
    modules = module_map(model)
    addresses = set(modules)
    sel = coerce(save, module_addresses=addresses)
    sel.validate(module_addresses=addresses)
    check_names(sel, addresses)  # as the full path: a misspelt tl.func(...) raises
    scopes = [scope_of(sel)]
    if halt is not None:
        scopes.append(scope_of(coerce(halt, module_addresses=addresses)))
        halt_predicate(halt, addresses)  # same checks (and errors) as the full path
    if halt is not None and scopes[-1].kind != "boundary":
        why = scopes[-1].reason or scopes[-1].kind
        raise CaptureError(f"tl.record(..., sparse=True) halts at module exits only "
                           f"(tl.module(...), 'a.b:2'); halt={halt!r} needs recorded ops "
                           f"({why}). " + _FULL)
    boundary, parts = split_scoped(sel) if scopes[0].kind != "boundary" else (sel, ())
    bind_inputs(model, args, kwargs)
    save_scope = scope_of(boundary)
    hooks = HookRun(modules, save=save_scope, halt=scopes[1] if halt is not None else None,
                    payload=PayloadOptions(detach, device, dtype))
    scoped = ScopedRun(modules, parts, hooks.payload) if parts else None
    targets = union(save_scope, *scopes[1:]).modules
    output = _run(model, hooks, targets, scoped, args, kwargs)
    return SparseRecording(model, output, hooks, sel, scopes[0], scoped)


def _run(model: Any, hooks: HookRun, targets: frozenset[str], scoped: ScopedRun | None,
         args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``model(*args, **kwargs)`` under both runs; the output, or None if it halted. The
    scoped run's hooks go first: its mode is off before the module-output hooks copy."""
    with ExitStack() as stack:
        if scoped is not None:
            stack.enter_context(scoped.attached())
        stack.enter_context(hooks.attached(targets))
        try:
            return model(*args, **kwargs)
        except Halt:
            return None
