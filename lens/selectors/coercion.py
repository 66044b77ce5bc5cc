"""Turning what users pass (``layers_to_save=['conv2d_3_7', 'features', -5, 'linear']``)
into one selector.

========================  ================================================================
given                     becomes
========================  ================================================================
a selector                itself
``True`` / ``'all'``      ``everything()``
``False``, ``None``,      ``nothing()``
``'none'``, ``[]``
a module address          ``module(address)``: the op(s) the module returns (``'fc:2'``
                          for one call); needs ``module_addresses``
a final label             ``label(s)``: ``'conv2d_3_7'``, ``'conv2d_3'``, ``'relu_1_2:2'``
an int                    ``ordinal(i)``: position in the finished trace, ``-1`` the last
any other string          ``label_contains(s)``: ops with a lookup key containing it
a list or tuple           the ``|`` of its items
========================  ================================================================
"""

from __future__ import annotations

import re
from collections.abc import Collection

from lens.errors import SelectorError
from lens.selectors._base import ALL, NONE, Selector, any_of
from lens.selectors._ops import ordinal
from lens.selectors._places import ADDRESS, label, label_contains, module

LABEL_PATTERN = re.compile(r"^[a-z0-9]+_\d+(_\d+)?(:\d+)?$")
"""What a final label looks like: ``{type}_{type_num}[_{total_num}][:{pass}]``."""

_ACCEPTED = (
    "a selector (tl.func('relu'), ...), True/False/None, 'all'/'none', a label such as "
    "'conv2d_3_7', a module address such as 'features.6', an int position such as -5, "
    "a substring of labels such as 'linear', or a list or tuple of these"
)

_AMBIGUOUS = (
    "{spec!r} could be a module address or a substring of labels, and no module "
    "addresses were given to tell them apart. Pass module_addresses=..., or say which "
    "you mean: tl.module({spec!r}) or tl.label_contains({spec!r})."
)


def coerce(
    spec: object,
    *,
    module_addresses: Collection[str] | None = None,
) -> Selector:
    """The selector that ``spec`` denotes (see the module docstring for the rules).

    ``module_addresses`` (the model's ``named_modules()`` names) lets a string be
    recognised as a module address; without it, a string that is neither a label nor
    ``'all'``/``'none'`` is ambiguous and raises :class:`SelectorError`.
    """
    addresses = None if module_addresses is None else frozenset(module_addresses)
    return _coerce(spec, addresses)


def _coerce(spec: object, addresses: frozenset[str] | None) -> Selector:
    if isinstance(spec, Selector):
        return spec
    if spec is True:
        return ALL
    if spec is False or spec is None:
        return NONE
    if isinstance(spec, int):
        return ordinal(spec)
    if isinstance(spec, str):
        return _coerce_str(spec, addresses)
    if isinstance(spec, (list, tuple)):
        return any_of(*(_coerce(item, addresses) for item in spec))
    hint = " Wrap a function with tl.where(fn)." if callable(spec) else ""
    raise SelectorError(
        f"Cannot select ops with {spec!r} ({type(spec).__name__}). Accepted: {_ACCEPTED}.{hint}"
    )


def _coerce_str(spec: str, addresses: frozenset[str] | None) -> Selector:
    if not spec.strip():
        raise SelectorError(f"An empty string selects nothing by name. Accepted: {_ACCEPTED}.")
    if spec.lower() == "all":
        return ALL
    if spec.lower() == "none":
        return NONE
    found = ADDRESS.match(spec)
    if addresses is not None and found is not None and found.group("address") in addresses:
        return module(spec)
    if LABEL_PATTERN.match(spec):
        return label(spec)
    if addresses is None:
        raise SelectorError(_AMBIGUOUS.format(spec=spec))
    return label_contains(spec)
