"""``tl.run``: the model's output with interventions, and nothing recorded to keep."""

from __future__ import annotations

from typing import Any

from ..capture import check_model, hooked_module
from ..capture.args import check_input_kwargs
from ..capture.interceptors import added_modules, rules_of, validate_rules
from ..capture.model_index import ModelIndex
from ..tracing.api import CaptureOptions, capture, collector_paused
from ._sparse import hook_plan, run_on_hooks


def run(model: Any, *args: Any, input_kwargs: dict[str, Any] | None = None,
        intervene: Any = None) -> Any:
    """Run ``model(*args, **input_kwargs)`` with ``intervene`` rules (``tl.when``) applied
    as it runs, and return only its output: no payloads are kept and no trace is built,
    so this costs little more than the forward pass itself (plus a metadata-only
    pre-pass when a rule names sites by final label without a ``reference``).

    When every rule is decided at module exits (``tl.module(...)``, ``'a.b:2'``) and its
    action reads only the value it edits (zero/mean ablation, scale, steer, clamp,
    projections, constants, one-argument functions), the run uses forward hooks on just
    those modules and records no op: the same output, at the cost of plain hooks."""
    check_model(model, submodules=False)  # (the ModelIndex below checks them)
    check_input_kwargs("tl.run", input_kwargs)
    kwargs = dict(input_kwargs or {})
    if intervene is None:
        return model(*args, **kwargs)
    top = hooked_module(model)
    index = ModelIndex(top)
    modules = index.modules
    specs = rules_of(intervene)
    addresses = set(modules) | added_modules(specs, set(modules))
    validate_rules(specs, addresses)
    plan = hook_plan(specs, addresses) if top is not None and top is model else None
    if plan is not None:  # every rule decided at module exits: hooks, no function mode
        return run_on_hooks(model, plan, args, kwargs, modules)
    # Everything else: the one capture tl.trace and tl.record use, keeping no payload.
    # The records are dropped when the run returns: with the collector paused through
    # finish(), they are freed by reference counting before it could ever visit them.
    with collector_paused():
        done = capture(model, args, input_kwargs, CaptureOptions(save=False, intervene=specs),
                       "tl.run")
        done.rec.finish()
        for r in done.rec.interceptors:
            r.close(None)
        output = done.output
        del done
    return output
