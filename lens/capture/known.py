"""Names a selector may use that can exist at all: op types torch can produce, and labels
that could name an op of a given model. Checked before a run so that a typo
(``tl.func('gleu')``, ``save='relu_1_1x'``) is an error with close matches, not a run
that silently saves or edits nothing.

Selectors are pure (no torch), so ``tl.func('no_such_func')`` builds fine; the check runs
when a selector meets a model: in ``tl.trace``, ``tl.record``, ``tl.run`` and
``tl.pluck`` (``save=``, ``halt=``, ``intervene=``, ``save_grads=``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection

import torch
import torch.nn.functional

from ..errors import SelectorError, close_matches
from ..selectors import Func, Label, Selector, normalize_op_type, split_call
from .records import BUFFER, CONSTANT, IDENTITY, INPUT, OUTPUT

# Sources, sinks and storage refreshes lens adds itself (see capture.storage), and the
# fallback type of a nameless callable.
_LENS_TYPES = frozenset({INPUT, OUTPUT, BUFFER, CONSTANT, IDENTITY, "refresh", "op"})

_LABEL = re.compile(r"^(?P<type>[a-z0-9]+)_\d+(_\d+)?(:\d+)?$")


@functools.cache
def op_types() -> frozenset[str]:
    """Every op type the capture engine can record: the normalized names (the rule of
    :func:`lens.capture.funcs.op_type`) of everything in torch's function namespaces and
    every ``Tensor`` method, operator and property. Names only: nothing is looked up, so
    no lazily imported torch module gets imported."""
    spaces = [torch, torch.Tensor, torch._C.TensorBase, torch.nn.functional, torch.linalg,
              torch.fft, torch.special, torch._C._VariableFunctions, torch._C._nn]
    spaces += [getattr(torch._C, n, None) for n in ("_linalg", "_fft", "_special")]
    names = {normalize_op_type(name) for space in spaces if space is not None
             for name in dir(space)}
    names.discard("")
    return frozenset(names) | _LENS_TYPES


def check_names(sel: Selector, module_addresses: Collection[str] | None = None) -> None:
    """Refuse function names torch cannot produce and labels no op of this model can
    carry; each error lists the closest valid names."""
    for node in sel.walk():
        if isinstance(node, Func):
            for name in node.types:
                _check_type(sel, name, f"tl.func({name!r})")
        elif isinstance(node, Label):
            for name in node.labels:
                _check_label(sel, name, module_addresses)


def _check_type(sel: Selector, name: str, what: str) -> None:
    known = op_types()
    if name in known:
        return
    hits = close_matches(name, known)
    hint = f" Did you mean {', '.join(map(repr, hits))}?" if hits else ""
    lead = what if repr(sel) == what else f"{sel!r}: {what}"
    raise SelectorError(
        f"{lead} names no op type torch can produce.{hint} Op types are function "
        "names lowercased without underscores ('max_pool2d' -> 'maxpool2d', '__add__' -> "
        "'add'); trace.ops[i].type shows them. For a custom op, select it with "
        "tl.where(lambda op: op.func_name == '...').")


def _check_label(sel: Selector, name: str, module_addresses: Collection[str] | None) -> None:
    """Refuse a label only when no op of any run of this model could carry it."""
    found = _LABEL.match(name)
    if found is not None:
        _check_type(sel, found.group("type"), f"the label {name!r}")
        return
    if name.startswith("input.") or module_addresses is None:
        return
    try:
        base, _ = split_call(name)
    except SelectorError:
        base = name
    if base in module_addresses:
        return
    hits = close_matches(base, module_addresses)
    hint = f" Module addresses close to it: {', '.join(map(repr, hits))}." if hits else ""
    raise SelectorError(
        f"{sel!r}: {name!r} is neither a label ('{{type}}_{{n}}_{{total}}', e.g. "
        f"'linear_1_2', 'relu_2:3') nor a module address of this model.{hint}")
