"""Call-order matching: sites named in a finished trace, found again in a new run.

Final labels (``'linear_1_1:2'``) only exist after postprocessing, so a live run cannot
decide them; instead they are resolved to call indices in an earlier trace of the same
graph, and the new run is checked op by op against that trace until the last site has
run. The first op that differs is named in the error (DESIGN decision 6).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import InterventionError
from ._sites import describe

_HOW = ("Sites named by final labels (or selectors that need the finished trace) are "
        "matched by call order against a trace of the same graph, so this run must execute "
        "the same ops in the same order up to the last site. Use a reference traced from "
        "inputs of the same structure, or select the site with a selector decided while the "
        "model runs (tl.func(...), tl.module(...), tl.in_module(...)).")


def _signature(rec: Any) -> tuple[Any, ...]:
    return (rec.kind, rec.func_name, tuple(rec.parent_idx), tuple(rec.out_index))


class CallOrderMatcher:
    """Checks a live run against ``reference`` (records by call index) up to ``upto``."""

    __slots__ = ("reference", "upto", "checked", "what")

    def __init__(self, reference: Sequence[Any], upto: int, what: str) -> None:
        self.reference = reference
        self.upto = upto
        self.checked = -1
        self.what = what

    def check(self, op: Any) -> None:
        ci = op.call_index
        if ci <= self.checked or self.checked >= self.upto:
            return
        live = op.recording
        ref = self.reference
        for j in range(self.checked + 1, min(ci, self.upto) + 1):
            if j >= len(ref):
                raise InterventionError(
                    f"{self.what}: this run has more ops than the reference trace, which "
                    f"ends at op #{len(ref) - 1}; this run goes on with {describe(live[j])}. "
                    + _HOW)
            if _signature(live[j]) != _signature(ref[j]):
                a, b = ref[j], live[j]
                raise InterventionError(
                    f"{self.what}: this run's graph differs from the reference trace at op "
                    f"#{j}: the reference ran {describe(a)} with parents "
                    f"{list(a.parent_idx)}, this run {describe(b)} with parents "
                    f"{list(b.parent_idx)}. " + _HOW)
        self.checked = ci


def records(trace: Any) -> list[Any]:
    """Every op record of a trace by call index, orphans included."""
    return list(trace.record_table)


def resolve(trace: Any, selector: Any) -> list[Any]:
    """The ops of a finished ``trace`` that ``selector`` matches (ordinals bound)."""
    bound = selector.bind_ordinals(trace.ops)
    return [op for op in trace.ops if bound(op)]


def adapt(trace: Any, spec: Any, found: list[Any], action: Any) -> Any:
    """The action to apply at ``found``: selectors that name part of an op's value
    (lens.facets: one head's ``z``, the pattern inside a fused attention call) define
    ``adapt_action(trace, selector, found, action)``; anything else keeps the action."""
    sel = spec
    if isinstance(spec, str):  # an alias may name a facet (trace.with_aliases)
        try:
            sel = getattr(trace[spec], "selector", None)
        except (KeyError, ValueError):
            return action
    walk = getattr(sel, "walk", None)
    for node in walk() if walk is not None else ():
        hook = getattr(node, "adapt_action", None)
        if hook is not None:
            return hook(trace, sel, found, action)
    return action


def _cuda_devices() -> list[int]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        return list(range(torch.cuda.device_count()))
    return []


@contextmanager
def preserved_rng(state: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Run with the default generators set to ``state`` (if given) and put them back
    afterwards, so helper passes do not shift the caller's random stream."""
    with torch.random.fork_rng(devices=_cuda_devices()):
        if state is not None:
            set_rng(state)
        yield


def set_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def get_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if _cuda_devices():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def reference_pass(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A metadata-only trace of the plain model (no payloads), RNG left as it was."""
    from ..tracing.api import trace

    with preserved_rng():  # same grad mode as the run: some modules branch on it
        return trace(model, *args, input_kwargs=kwargs, save=False)
