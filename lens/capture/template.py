"""Walks over nested arguments and outputs: tuples, lists and dicts of tensors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

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
