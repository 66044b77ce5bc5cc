"""Recording a module that is not part of the model while an interceptor runs it.

A spliced module (``tl.splice_module(sae)``) runs inside an edit, where the recorder is
paused. :func:`recording_module` records its ops for the length of that call, under an
address of its own (``splice.transformer.h.0``, ``splice.transformer.h.0.encoder``): the
module's calls get module-call records, its parameters parameter names, and the trace's
module table an entry, exactly as for the model's own modules. Nothing stays on the
module: its hooks are removed and its names forgotten when the call returns (also when
it raises); only the trace keeps the addresses and parameter names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import _get_current_function_mode_stack

from ..errors import InterventionError
from .records import ParamRef

ForwardHook = Callable[[nn.Module, Any, Any], Any]


@contextmanager
def recording_module(rec: Any, module: Any, address: str,
                     first_hook: ForwardHook | None = None) -> Iterator[None]:
    """Record ``module``'s calls under ``address`` while the block runs (see module doc).

    ``module`` may be any callable; only an ``nn.Module`` gets addresses. ``first_hook``
    is a forward hook put on ``module`` before lens's own, so the ops it runs belong to
    the module's call and its return value is the call's output.
    """
    names: list[int] = []
    params: list[int] = []
    handles: list[Any] = []
    try:
        if isinstance(module, nn.Module):
            if first_hook is not None:
                handles.append(module.register_forward_hook(first_hook))
            for sub, m in module.named_modules(remove_duplicate=True):
                if id(m) in rec.module_names:
                    raise InterventionError(
                        f"Cannot splice {type(module).__name__} at {address!r}: its module "
                        f"{sub or '(root)'} ({type(m).__name__}) is already recorded as "
                        f"{rec.module_names[id(m)]!r}: it is part of the model (splice a "
                        "copy, copy.deepcopy(module)), or the rule's selector also matches "
                        "ops inside the spliced module, which would splice it into itself "
                        "(narrow the selector, e.g. with tl.module(...) or ~tl.in_module("
                        "'splice...')).")
                where = f"{address}.{sub}" if sub else address
                rec.module_names[id(m)] = where
                names.append(id(m))
                _name_params(rec, m, where, params)
                handles.append(m.register_forward_pre_hook(rec._pre_hook, with_kwargs=True))
                handles.append(m.register_forward_hook(rec._post_hook, with_kwargs=True))
        with ExitStack() as stack:
            stack.enter_context(torch._C._EnableTorchFunction())
            if not any(mode is rec for mode in _mode_stack()):
                stack.enter_context(rec)  # inside the mode's own handler: it is popped
            yield
    finally:
        for h in handles:
            h.remove()
        for key in names:
            del rec.module_names[key]
        for key in params:
            del rec.params[key]
            del rec.param_refs[key]


def _mode_stack() -> list[Any]:
    return list(_get_current_function_mode_stack())  # type: ignore[no-untyped-call]


def _name_params(rec: Any, m: nn.Module, where: str, added: list[int]) -> None:
    """Give ``m``'s direct parameters names under ``where`` (the trace keeps the names and
    values, so replay reads them as it reads the model's)."""
    index = rec.index
    direct = []
    for pname, p in m._parameters.items():
        if p is None:
            continue
        name = f"{where}.{pname}"
        direct.append(name)
        if id(p) in rec.params:  # shared with the model, or with another of its modules
            continue
        rec.params[id(p)] = name
        rec.param_refs[id(p)] = ParamRef(name)
        index.param_meta[name] = (tuple(p.shape), p.numel(), p.dtype, p.requires_grad)
        index.param_values[name] = p
        added.append(id(p))
    index.module_info.setdefault(where, (type(m).__name__, tuple(direct)))
