"""The providers of facets, one per kind of structure, and each trace's structure index.

The list is a constant: which providers exist does not depend on what was imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capture.stash import StashKey
from . import attention, recurrent, residual
from ._registry import Provider, StructureIndex

if TYPE_CHECKING:
    from ..tracing import Trace

PROVIDERS: tuple[Provider, ...] = (
    Provider("attention", attention.detect, (
        "q", "k", "v", "scores", "pattern", "z", "result", "k_expanded", "v_expanded",
        "q_pre_rotary", "k_pre_rotary")),
    Provider("recurrent", recurrent.detect, (
        "output", "h_n", "c_n", "h", "c", "i", "f", "g", "o", "r", "z", "n")),
    Provider("residual", residual.detect, (
        "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "branch1_out",
        "branch2_out")),
)

_STRUCTURE = StashKey[StructureIndex]("facets.structure")


def known_names() -> dict[str, tuple[str, ...]]:
    """Facet names by provider kind."""
    return {p.kind: p.names for p in PROVIDERS}


def structure(trace: Trace) -> StructureIndex:
    """The structure index of ``trace`` (built on first use, kept on the trace)."""
    return trace.stash.setdefault(_STRUCTURE, lambda: StructureIndex(trace, PROVIDERS))
