"""Facets: named views of a module call, read from the recorded graph.

    f = trace.modules['transformer.h.0.attn'].facets      # or .calls[k].facets
    f.keys()     # q, k, v, scores, pattern, z, result
    f['pattern'] # [batch, head, q_seq, k_seq], reconstructed for fused attention
    trace.modules['lstm'].facets['c']     # [layer, direction, batch, time, hidden]
    trace.modules['transformer.h.3'].facets['resid_mid']
    trace.facets                          # the model's own forward (outside submodules)

Providers, one per kind of structure, find facets from the ops (not class names):
``attention`` (fused ``scaled_dot_product_attention``, matmul-softmax-matmul chains,
``nn.MultiheadAttention``), ``recurrent`` (``nn.LSTM``/``GRU``/``RNN``) and ``residual``
(transformer blocks). ``tl.facet(name, head=..., module=...)`` selects a facet for
interventions (``fork().intervene``, ``tl.when``) and sweeps.
"""

from __future__ import annotations

from typing import Any

from ..errors import ArgumentTypeError, LookupKeyError, close_matches, expect
from ..trace import ext
from . import aliases as _aliases
from . import attention as _attention
from . import recurrent as _recurrent
from . import residual as _residual
from ._edits import FacetEdit, FacetSite
from ._graph import FacetError
from ._mapping import Facets, facets_for, facets_of
from ._registry import (
    Carrier,
    FacetGroup,
    Owner,
    known_names,
    register_provider,
    structure,
)
from .aliases import FacetView, with_aliases
from .selector import Facet, facet

register_provider("attention", _attention.detect, (
    "q", "k", "v", "scores", "pattern", "z", "result", "k_expanded", "v_expanded",
    "q_pre_rotary", "k_pre_rotary"))
register_provider("recurrent", _recurrent.detect, (
    "output", "h_n", "c_n", "h", "c", "i", "f", "g", "o", "r", "z", "n"))
register_provider("residual", _residual.detect, (
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "branch1_out",
    "branch2_out"))

ext.register("facets", facets_for)
ext.register("with_aliases", with_aliases)
ext.register("alias", _aliases.resolve)
ext.register("alias_keys", _aliases.alias_keys)


def find_facets(trace: Any, kind: str | None = None) -> dict[str, Facets]:
    """Every module call of ``trace`` with facets (of ``kind``: ``'attention'``,
    ``'recurrent'``, ``'residual'``), in execution order, keyed by call (``'h.0.attn:1'``;
    ``''`` is the model's own forward)."""
    if not hasattr(trace, "layer_list") or not hasattr(trace, "module_calls"):
        raise ArgumentTypeError(
            f"tl.find_facets takes a trace (from tl.trace(model, x)); got "
            f"{type(trace).__name__}.")
    if kind is not None:
        expect(kind, str, "tl.find_facets(trace, kind=)",
               "a kind of facet such as 'attention', 'recurrent' or 'residual', or None")
        kinds = known_names()
        if kind not in kinds:
            near = close_matches(kind, kinds)
            hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
            raise LookupKeyError(f"tl.find_facets: no kind of facet is called {kind!r}.{hint} "
                                 f"Kinds: {', '.join(map(repr, sorted(kinds)))}.")
    index = structure(trace)
    return {o.key: facets_of(trace, o) for o in index.owners(kind)}


__all__ = [
    "Carrier",
    "Facet",
    "FacetEdit",
    "FacetError",
    "FacetGroup",
    "FacetSite",
    "FacetView",
    "Facets",
    "Owner",
    "facet",
    "find_facets",
    "register_provider",
    "with_aliases",
]
