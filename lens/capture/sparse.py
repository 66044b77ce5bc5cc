"""Hook-only runs: forward hooks on the few modules a boundary selector names, and no
function mode at all (DESIGN decision 10).

A :class:`HookRun` is what the capture engine becomes when every selector of a run can be
decided at module boundaries (``tl.selectors.scope_of`` says ``'boundary'``): it counts
the calls of the named modules, and at each exit hands the returned tensors to the
run's edits, keeps the ones the save scope asks for and halts where the halt scope says.
No op is recorded, so results are addressed by module call (``'a.b:2'``), not by op.

Saved tensors are copies taken when the module returns: without the function mode no
later in-place op can be seen, so copy-on-write (what full capture does) is impossible.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..selectors._scope import Scope
from .engine import Halt, PayloadOptions
from .model_index import ModelIndex
from .template import rebuild as _rebuild
from .template import tensor_leaves as _tensor_leaves

Path = tuple[int | str, ...]
ExitEdit = Callable[[str, int, Tensor], Tensor]
"""``edit(address, call_number, value) -> value`` at a module exit."""


def module_map(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule by address; a module reachable under two names keeps its first
    (as the full capture names it)."""
    return ModelIndex(model).modules


class ModuleCalls:
    """The calls of hooked modules in the thread running the forward, as a pre- and a
    post-hook see them: numbered per address as they start (``a:1``, ``a:2``), unwound as
    they return. Hooks sit on shared modules, so a call from another thread is not ours
    (:meth:`ours`); an inner call whose exit never ran (it raised) is unwound with the
    call around it."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.names: dict[int, str] = {}  # hooked modules by id
        self.counts: dict[str, int] = {}
        self.running: list[tuple[str, int]] = []  # (address, call number), outermost first

    def ours(self) -> bool:
        return threading.get_ident() == self.thread

    def enter(self, module: nn.Module) -> tuple[str, int]:
        address = self.names[id(module)]
        n = self.counts.get(address, 0) + 1
        self.counts[address] = n
        self.running.append((address, n))
        return address, n

    def leave(self, module: nn.Module) -> tuple[str, int] | None:
        """The call of ``module`` that returned (None: none is running)."""
        address = self.names[id(module)]
        while self.running:
            a, n = self.running.pop()
            if a == address:
                return a, n
        return None


def hits(scope: Scope | None, address: str, n: int) -> bool:
    """Whether a boundary ``scope`` asks for call ``n`` of module ``address``."""
    if scope is None or address not in scope.calls:
        return False
    nums = scope.calls[address]
    return nums is None or n in nums


class HookRun:
    """Forward hooks on ``modules`` for one forward pass (see the module doc).

    ``edits`` are ``(scope, edit)`` pairs; each edits an output at most once, also when an
    enclosing module returns the tensor it produced (as a live rule fires once per op).
    ``saved`` maps a module call key (``'a.b:2'``) to its returned tensors, in output
    order (:meth:`in_call_order` orders the calls as they started, like a full trace's
    module calls); ``fired`` counts the edits made by each rule, by position.
    """

    def __init__(self, modules: Mapping[str, nn.Module], *, save: Scope | None = None,
                 halt: Scope | None = None,
                 edits: tuple[tuple[Scope, ExitEdit], ...] = (),
                 payload: PayloadOptions | None = None) -> None:
        self.modules = dict(modules)
        self.save, self.halt, self.edits = save, halt, edits
        self.payload = payload or PayloadOptions()
        self.saved: dict[str, list[Tensor]] = {}
        self.fired = [0] * len(edits)
        self.halted = False
        self.calls = ModuleCalls()
        self._started: dict[str, int] = {}  # call key -> order in which calls started
        # one token per op: a tensor and the edits made of it (id -> token; kept alive)
        self._token: dict[int, int] = {}
        self._alive: list[Tensor] = []
        self._done: list[set[int]] = [set() for _ in edits]

    def _pre(self, module: nn.Module, args: Any) -> None:
        if not self.calls.ours():
            return
        address, n = self.calls.enter(module)
        self._started[f"{address}:{n}"] = len(self._started)

    def in_call_order(self) -> dict[str, list[Tensor]]:
        """``saved`` with calls in the order they started (a module before its
        submodules), not the order they returned."""
        return dict(sorted(self.saved.items(), key=lambda kv: self._started[kv[0]]))

    def _post(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not self.calls.ours():
            return None
        returned = self.calls.leave(module)
        if returned is None:
            return None
        address, n = returned
        replaced: dict[Path, Tensor] = {}
        if self.edits:
            self._edit(address, n, output, replaced)
        if hits(self.save, address, n):
            self._keep(address, n, output, replaced)
        if hits(self.halt, address, n):
            self.halted = True
            raise Halt()
        return _rebuild(output, (), replaced) if replaced else None

    def _edit(self, address: str, n: int, output: Any, replaced: dict[Path, Tensor]) -> None:
        seen: dict[int, Tensor] = {}  # the same tensor returned twice: one edit
        for path, t in _tensor_leaves(output, ()):
            if id(t) in seen:
                if seen[id(t)] is not t:
                    replaced[path] = seen[id(t)]
                continue
            token = self._token.get(id(t), id(t))
            new = t
            for i, (scope, edit) in enumerate(self.edits):
                if token in self._done[i] or not hits(scope, address, n):
                    continue
                new = edit(address, n, new)
                self._done[i].add(token)
                self.fired[i] += 1
            if new is not t:
                self._alive.extend((t, new))
                self._token[id(t)] = token
                self._token[id(new)] = token
                replaced[path] = new
            seen[id(t)] = new

    def _keep(self, address: str, n: int, output: Any, replaced: dict[Path, Tensor]) -> None:
        kept: dict[int, Tensor] = {}
        with torch._C.DisableTorchFunction():  # a scoped run's mode may be active here
            for path, t in _tensor_leaves(output, ()):
                t = replaced.get(path, t)
                if id(t) not in kept:
                    kept[id(t)] = copy_payload(t, self.payload)
        self.saved[f"{address}:{n}"] = list(kept.values())

    @contextmanager
    def attached(self, targets: frozenset[str]) -> Iterator[HookRun]:
        """Hooks on the modules at ``targets``, removed on exit (also on error)."""
        self.calls.thread = threading.get_ident()
        handles = []
        self.calls.names = {id(self.modules[a]): a for a in targets}
        try:
            for address in sorted(targets):
                m = self.modules[address]
                handles.append(m.register_forward_pre_hook(self._pre))
                handles.append(m.register_forward_hook(self._post))
            yield self
        finally:
            for h in handles:
                h.remove()
            self.calls.running.clear()


def copy_payload(t: Tensor, options: PayloadOptions) -> Tensor:
    """``t`` as a payload (detached, moved, cast as asked), never sharing its memory."""
    p = options.apply(t)
    try:
        shared = p.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        shared = True
    return p.clone() if shared else p


def run_hooked(model: Any, hooks: HookRun, targets: frozenset[str], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:
    """``model(*args, **kwargs)`` under ``hooks``; the output, or None if it halted."""
    with hooks.attached(targets):
        try:
            return model(*args, **kwargs)
        except Halt:
            return None
