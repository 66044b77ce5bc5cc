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
(transformer blocks). ``trace.residual`` analyses the residual stream those blocks form
(lens.facets.resid_analysis). ``tl.facet(name, head=..., module=...)`` selects a facet for
interventions (``fork().intervene``, ``tl.when``) and sweeps.
"""

from __future__ import annotations

from typing import Any

from ..errors import ArgumentTypeError, FacetError, LookupKeyError, close_matches, expect
from ..tracing import Trace
from ._edits import FacetEdit, FacetSite
from ._mapping import Facets, facets_for, facets_of
from ._providers import PROVIDERS, known_names, structure
from ._registry import Carrier, FacetGroup, Owner, Provider
from .aliases import FacetView, alias_keys, with_aliases
from .aliases import resolve as resolve_alias
from .resid_analysis import ResidualStack, ResidualStream
from .selector import Facet, facet


def find_facets(trace: Any, kind: str | None = None) -> dict[str, Facets]:
    """Every module call of ``trace`` with facets (of ``kind``: ``'attention'``,
    ``'recurrent'``, ``'residual'``), in execution order, keyed by call (``'h.0.attn:1'``;
    ``''`` is the model's own forward)."""
    if not isinstance(trace, Trace):
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
    "PROVIDERS",
    "Provider",
    "ResidualStack",
    "ResidualStream",
    "alias_keys",
    "facet",
    "facets_for",
    "find_facets",
    "resolve_alias",
    "with_aliases",
]
