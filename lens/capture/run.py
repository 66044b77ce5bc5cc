"""Running a model under the recorder: argument checks, inputs, outputs, error notes."""

from __future__ import annotations

import functools
import inspect
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CaptureError, ModelTypeError
from .engine import Halt, Recorder
from .model_index import scripted_submodule
from .template import tensor_leaves as _tensor_leaves

_HOW_TO_CALL = (
    "Call it as tl.trace(model, *args, input_kwargs={...}) with the arguments model.forward "
    "takes."
)


def check_model(model: Any, submodules: bool = True) -> None:
    """Refuse what lens cannot trace, saying what to pass instead. ``submodules=False``
    skips the walk for TorchScript submodules (a :class:`ModelIndex` of the model, built
    next, refuses them itself)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelTypeError(
            f"{type(model).__name__} is a TorchScript module: its ops run inside the "
            "TorchScript interpreter, where lens cannot see them. Trace the eager "
            "nn.Module you scripted instead (before torch.jit.script/trace).")
    optimized = _compiled_module_type()
    if optimized is not None and isinstance(model, optimized):
        raise ModelTypeError(
            "This model was wrapped by torch.compile; compiled graphs hide their ops from "
            "lens. Trace the original module instead: tl.trace(model._orig_mod, ...).")
    if submodules and isinstance(model, nn.Module):
        _check_submodules(model)
    if getattr(model, "_torchdynamo_orig_callable", None) is not None:
        raise ModelTypeError(
            "This function was wrapped by torch.compile; trace the original function "
            "instead (compiled graphs hide their ops from lens).")
    if not isinstance(model, nn.Module) and not callable(model):
        raise ModelTypeError(
            f"tl.trace needs an nn.Module (or a callable running torch code); got "
            f"{type(model).__name__}. Pass the model object itself, e.g. tl.trace(model, x).")


def _check_submodules(model: nn.Module) -> None:
    """A TorchScript submodule cannot be traced: say so, by address (see
    :func:`scripted_submodule`)."""
    for address, module in model.named_modules():
        if address and isinstance(module, torch.jit.ScriptModule):
            raise ModelTypeError(scripted_submodule(address, module))


def _compiled_module_type() -> type | None:
    """torch.compile's wrapper class, if dynamo is loaded. Read from ``sys.modules`` only:
    ``torch._dynamo`` is imported lazily, and importing it (about a second) replaces
    torch attributes such as ``torch.manual_seed``. If it was never imported, nothing
    can have been compiled."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    found = getattr(eval_frame, "OptimizedModule", None)
    return found if isinstance(found, type) else None


def output_address(path: tuple[int | str, ...]) -> str:
    """The address of the output op for the tensor at ``path`` in the model's return
    value: ``output`` for a bare tensor, ``output.0``, ``output.logits``, ..."""
    return ".".join(["output", *map(str, path)])


def hooked_module(model: Any) -> nn.Module | None:
    """The module whose submodules are hooked: ``model`` itself, or the module a bound
    method belongs to (``model.generate``: each decoding step is one call of the module,
    so its submodules' call numbers count steps). None for a plain function."""
    if isinstance(model, nn.Module):
        return model
    owner = getattr(model, "__self__", None)
    if inspect.ismethod(model) and isinstance(owner, nn.Module):
        return owner
    return None


def bind_inputs(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> list[tuple[str, Tensor]]:
    """Check the inputs against ``forward``'s signature (a bound method's own signature);
    return (address, tensor) leaves."""
    fn = model.forward if isinstance(model, nn.Module) else model
    sig = _signature(fn)
    named: list[tuple[str, Any]]
    if sig is not None:
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            name = type(model).__name__
            raise CaptureError(
                f"The inputs do not fit {name}.forward{sig}: {e}. {_HOW_TO_CALL}") from None
        named = list(bound.arguments.items())
    else:
        named = [(str(i), a) for i, a in enumerate(args)] + list(kwargs.items())
    leaves = []
    for name, value in named:
        for path, t in _tensor_leaves(value, ()):
            leaves.append((".".join([name, *map(str, path)]), t))
    return leaves


def _signature(fn: Any) -> inspect.Signature | None:
    """``inspect.signature(fn)`` (None when it has none), made once per function: a
    bound method's comes from its function's, less ``self``."""
    func, bound = getattr(fn, "__func__", None), getattr(fn, "__self__", None)
    try:
        if func is not None and bound is not None:
            sig = _function_signature(func)
            params = list(sig.parameters.values()) if sig is not None else []
            if not params or params[0].kind not in _SELF_KINDS:  # (f(*args): keeps it)
                return _uncached_signature(fn)
            return sig.replace(parameters=params[1:])  # type: ignore[union-attr]
        return _function_signature(fn)
    except TypeError:  # unhashable callable: not cached
        return _uncached_signature(fn)


_SELF_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@functools.lru_cache(maxsize=256)
def _function_signature(fn: Any) -> inspect.Signature | None:
    return _uncached_signature(fn)


def _uncached_signature(fn: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def run_forward(model: Any, rec: Recorder, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
    """Run ``model(*args, **kwargs)`` under ``rec``; returns the output (None if halted)."""
    for address, t in bind_inputs(model, args, kwargs):
        rec.add_input(t, address)
    output = None
    with rec.attached(), _counting_steps(rec):
        try:
            output = model(*args, **kwargs)
        except Halt:
            return None
        except Exception as e:  # the user's error: add where in the graph it happened
            _add_note(e, rec)
            raise
    for path, t in _tensor_leaves(output, ()):
        rec.add_output(t, output_address(path))
    return output


@contextmanager
def _counting_steps(rec: Recorder) -> Iterator[None]:
    """Number the calls of the top module (``rec.step`` while one runs, 0 between), so
    ``tl.step(k)`` can select the k-th decoding step of a traced ``model.generate``. A
    call nested in another call of the same module belongs to the outer one."""
    root = rec.model
    if root is None:
        yield
        return
    thread = threading.get_ident()
    depth = [0]

    def enter(module: nn.Module, args: Any) -> None:
        if threading.get_ident() == thread:
            depth[0] += 1
            if depth[0] == 1:
                rec.steps += 1
                rec.step = rec.steps

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        if threading.get_ident() == thread:
            depth[0] -= 1
            if depth[0] == 0:
                rec.step = 0

    handles = [root.register_forward_pre_hook(enter),
               root.register_forward_hook(leave, always_call=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        rec.step = 0


def _add_note(e: BaseException, rec: Recorder) -> None:
    note = "lens: the forward pass raised before any op was recorded."
    ops = [op for op in rec.ops if op.kind == "op"]
    if ops:
        last = ops[-1]
        where = (f"inside module {last.module_ctx[-1].key}" if last.module_ctx
                 else "at the top level of forward")
        note = (f"lens: raised after op #{last.call_index} ({last.func_name}, "
                f"{len(ops)} ops recorded), {where}.")
    if hasattr(e, "add_note"):
        e.add_note(note)

