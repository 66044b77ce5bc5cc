"""``tl.record(..., sparse=True)``: module outputs kept by forward hooks alone.

A sparse recording records no op, so it has no call indices and no labels: its payloads
are addressed by module call (``'a.b:2'``) or module address (``'a.b'``: every call, in
order). Asking it for what only a full recording has raises and says what to call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from ..capture import PayloadOptions
from ..capture.args import check_input_kwargs, check_options
from ..capture.policy import halt_predicate
from ..capture.run import bind_inputs, check_model
from ..capture.sparse import HookRun, module_map, run_hooked
from ..errors import CaptureError, LookupKeyError
from ..selectors import Selector, coerce
from ..selectors._scope import Scope, scope_of, union

_FULL = ("Record without sparse=True (tl.record(model, x, save=...)) to get ops, call "
         "indices and .to_trace().")


class SparseRecording:
    """Module outputs kept by hooks (see the module doc). ``recording['a.b:2']`` is the
    list of tensors that call returned; ``recording['a.b']`` one such list per call."""

    def __init__(self, model: Any, output: Any, hooks: HookRun, save: Selector,
                 scope: Scope) -> None:
        self.model = model
        self.output = output
        self.payloads: dict[str, list[Tensor]] = hooks.in_call_order()
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
            calls = [v for k, v in self.payloads.items() if k.rpartition(":")[0] == key]
            if calls:
                return calls
        have = ", ".join(map(repr, list(self.payloads)[:8])) or "none"
        raise LookupKeyError(
            f"{key!r} is not a module call this sparse recording kept (kept: {have}). A "
            f"sparse recording is addressed by module call ('a.b:2') or address. {_FULL}")

    @property
    def ops(self) -> Any:
        raise CaptureError("A sparse recording records no op (it used module hooks only). "
                           + _FULL)

    def to_trace(self, **_: Any) -> Any:
        raise CaptureError("A sparse recording cannot become a Trace: no op was recorded. "
                           + _FULL)

    def __repr__(self) -> str:
        state = "halted, " if self.halted else ""
        return (f"<SparseRecording of {type(self.model).__name__}: {state}"
                f"{len(self.payloads)} module calls kept>")


def record_sparse(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                  save: Any, halt: Any, detach: bool, device: Any, dtype: Any
                  ) -> SparseRecording:
    """The hook-only run behind ``tl.record(..., sparse=True)``."""
    check_model(model)
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
    scopes = [scope_of(sel)]
    if halt is not None:
        scopes.append(scope_of(coerce(halt, module_addresses=addresses)))
        halt_predicate(halt, addresses)  # same checks (and errors) as the full path
    for s in scopes:
        if s.kind != "boundary":
            raise CaptureError(
                f"tl.record(..., sparse=True) keeps module outputs only (tl.module(...), "
                f"'a.b:2'); save={save!r}, halt={halt!r} need recorded ops "
                f"({s.reason or s.kind}). " + _FULL)
    bind_inputs(model, args, kwargs)
    hooks = HookRun(modules, save=scopes[0], halt=scopes[1] if halt is not None else None,
                    payload=PayloadOptions(detach, device, dtype))
    output = run_hooked(model, hooks, union(*scopes).modules, args, kwargs)
    return SparseRecording(model, output, hooks, sel, scopes[0])
