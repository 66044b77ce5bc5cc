"""Interventions: edit ops live (``tl.when``) or after the fact (``trace.fork()``).

    tl.trace(model, x, intervene=tl.when(tl.func('relu'), tl.zero_ablate()))
    tl.run(model, x, intervene=tl.when('fc', tl.scale(0.5)))          # output only
    f = trace.fork().intervene('relu_1_2', tl.zero_ablate().at[:, 5]).replay()
    f.rerun(model, x)                                                  # same edits, live

Actions are immutable values; ``action.at[...]`` restricts one to an index of the tensor.
"""

from __future__ import annotations

from ..errors import InterventionWarning
from ._base import Action, FnAction, Restricted, action
from .actions import (
    clamp,
    mean_ablate,
    noise,
    patch_from,
    project_off,
    project_onto,
    replace_with,
    resample_ablate,
    scale,
    splice_module,
    steer,
    swap_with,
    zero_ablate,
)
from .forking import Edit, Fork, find_sites, fork
from .live import run
from .rules import LiveRule, When, when

__all__ = [
    "Action",
    "Edit",
    "FnAction",
    "Fork",
    "InterventionWarning",
    "LiveRule",
    "Restricted",
    "When",
    "action",
    "clamp",
    "find_sites",
    "fork",
    "mean_ablate",
    "noise",
    "patch_from",
    "project_off",
    "project_onto",
    "replace_with",
    "resample_ablate",
    "run",
    "scale",
    "splice_module",
    "steer",
    "swap_with",
    "when",
    "zero_ablate",
]
