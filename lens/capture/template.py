"""Walks over nested arguments and outputs: tuples, lists and dicts of tensors, and over
argument templates (what the engine records: Ref/ParamRef and values in tuples/lists)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor

from .records import Ref

Path = tuple[int | str, ...]


def tensor_leaves(obj: Any, path: Path) -> Iterator[tuple[Path, Tensor]]:
    """(path, tensor) for every tensor inside nested tuples/lists/dicts."""
    if isinstance(obj, Tensor):
        yield path, obj
    elif isinstance(obj, (tuple, list)):
        for i, x in enumerate(obj):
            yield from tensor_leaves(x, (*path, i))
    elif isinstance(obj, dict):
        for k, x in obj.items():
            yield from tensor_leaves(x, (*path, k))


def tensors_in(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> list[Tensor]:
    """Every tensor in a call's arguments (nested tuples/lists/dicts), in order: what
    :func:`tensor_leaves` yields without the paths, made without generators (module
    hooks ask this on every module call)."""
    found: list[Tensor] = []
    for a in args:
        if isinstance(a, Tensor):
            found.append(a)
        elif isinstance(a, (tuple, list, dict)):
            found.extend(t for _, t in tensor_leaves(a, ()))
    if kwargs:
        for a in kwargs.values():
            if isinstance(a, Tensor):
                found.append(a)
            elif isinstance(a, (tuple, list, dict)):
                found.extend(t for _, t in tensor_leaves(a, ()))
    return found


def rebuild(obj: Any, path: Path, replaced: dict[Path, Tensor]) -> Any:
    """``obj`` with the tensors at ``replaced``'s paths swapped in (same container types)."""
    if path in replaced:
        return replaced[path]
    if isinstance(obj, (tuple, list)):
        items = [rebuild(x, (*path, i), replaced) for i, x in enumerate(obj)]
        if isinstance(obj, list):
            return type(obj)(items) if type(obj) is not list else items
        if hasattr(obj, "_fields"):  # namedtuple (e.g. torch.return_types.max)
            return type(obj)(*items)
        try:
            return type(obj)(items)
        except TypeError:
            return tuple(items)
    if isinstance(obj, dict):
        new = dict(obj) if type(obj) is dict else obj.__class__(**obj)
        for k in list(new.keys()):
            new[k] = rebuild(obj[k], (*path, k), replaced)
        return new
    return obj


def map_arg(template: Any, fn: Callable[[Any], Any]) -> Any:
    """``template`` with ``fn`` applied to every leaf. Only plain tuples and lists are
    containers, as the engine records them (a Ref, itself a NamedTuple, is a leaf)."""
    t = type(template)
    if t is tuple:
        return tuple([map_arg(x, fn) for x in template])
    if t is list:
        return [map_arg(x, fn) for x in template]
    return fn(template)


def arg_leaves(template: Any) -> Iterator[Any]:
    """Every leaf of an argument template, in order (containers as in :func:`map_arg`)."""
    t = type(template)
    if t is tuple or t is list:
        for x in template:
            yield from arg_leaves(x)
    else:
        yield template


def template_refs(template: Any) -> Iterator[Ref]:
    """The op references (:class:`~lens.capture.records.Ref`) in an argument template, in
    order; parameters (``ParamRef``) and constants are skipped."""
    return (leaf for leaf in arg_leaves(template) if type(leaf) is Ref)
