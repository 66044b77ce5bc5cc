"""Selectors: composable, immutable predicates over ops.

Build them with the functions below and combine them with ``&``, ``|`` and ``~``::

    tl.func('conv2d') & tl.followed_by(tl.func('relu'))
    tl.in_module('transformer.h.0') & ~tl.func('getitem')

Each selector is a frozen dataclass: hashable, picklable, printed as the code that builds
it. ``sel(op)`` tests an op; ``sel.timing`` says when that is decidable; ``sel.validate(...)``
rejects names the model does not have. Pure Python: no torch here.
"""

from __future__ import annotations

from lens.selectors._base import (
    ALL,
    NONE,
    And,
    Everything,
    Not,
    Nothing,
    Or,
    Selector,
    all_of,
    any_of,
    everything,
    nothing,
)
from lens.selectors._graph import FollowedBy, PrecededBy, followed_by, preceded_by
from lens.selectors._ops import (
    Func,
    Index,
    Ordinal,
    Where,
    func,
    index,
    normalize_op_type,
    ordinal,
    where,
)
from lens.selectors._places import (
    InModule,
    Label,
    LabelContains,
    Module,
    Step,
    in_module,
    label,
    label_contains,
    module,
    split_call,
    step,
    steps,
)
from lens.selectors._protocol import TIMINGS, OpLike, Timing, latest
from lens.selectors.coercion import LABEL_PATTERN, coerce

__all__ = [
    # building selectors
    "func",
    "module",
    "in_module",
    "step",
    "steps",
    "label",
    "label_contains",
    "followed_by",
    "preceded_by",
    "where",
    "index",
    "ordinal",
    "everything",
    "nothing",
    "all_of",
    "any_of",
    "coerce",
    "ALL",
    "NONE",
    # types
    "Selector",
    "OpLike",
    "Timing",
    "And",
    "Or",
    "Not",
    "Everything",
    "Nothing",
    "Func",
    "Module",
    "InModule",
    "Step",
    "Label",
    "LabelContains",
    "FollowedBy",
    "PrecededBy",
    "Where",
    "Index",
    "Ordinal",
    # helpers for the capture engine and the trace
    "TIMINGS",
    "latest",
    "normalize_op_type",
    "split_call",
    "LABEL_PATTERN",
]
