"""``tl.run``: the model's output with interventions, and nothing recorded to keep."""

from __future__ import annotations

from typing import Any

from ..capture import Recorder, SaveNone, check_model, hooked_module, run_forward
from ..capture.args import check_input_kwargs
from ..capture.model_index import ModelIndex
from ..errors import CaptureError
from ..trace import Op


def run(model: Any, *args: Any, input_kwargs: dict[str, Any] | None = None,
        intervene: Any = None) -> Any:
    """Run ``model(*args, **input_kwargs)`` with ``intervene`` rules (``tl.when``) applied
    as it runs, and return only its output: no payloads are kept and no trace is built,
    so this costs little more than the forward pass itself (plus a metadata-only
    pre-pass when a rule names sites by final label without a ``reference``)."""
    check_model(model)
    check_input_kwargs("tl.run", input_kwargs)
    kwargs = dict(input_kwargs or {})
    if intervene is None:
        return model(*args, **kwargs)
    index = ModelIndex(hooked_module(model))
    context = {"model": model, "args": args, "kwargs": kwargs,
               "module_addresses": index.addresses}
    rules = []
    for r in intervene if isinstance(intervene, (list, tuple)) else [intervene]:
        if not callable(r):
            raise CaptureError(
                f"intervene= takes tl.when(selector, action) rules; got {type(r).__name__}.")
        check = getattr(r, "validate", None)
        if check is not None:
            check(module_addresses=index.addresses)
        bind = getattr(r, "bind", None)
        rules.append(bind(context) if bind is not None else r)
    rec = Recorder(hooked_module(model), record_cls=Op,
                   policy=SaveNone(), interceptors=tuple(rules), index=index)
    output = run_forward(model, rec, args, kwargs)
    rec.finish()
    for r in rules:
        close = getattr(r, "close", None)
        if close is not None:
            close(None)
    return output
