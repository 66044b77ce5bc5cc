"""Other libraries' names for facets: ``trace.with_aliases('transformer_lens')``.

    trace = tl.trace(model, ids).with_aliases('transformer_lens')
    trace['blocks.0.hook_resid_pre'].out          # an Op (the block input)
    trace['blocks.0.attn.hook_pattern'].out       # a FacetView: [batch, head, q, k]
    trace['blocks.0.attn.hook_z'].out             # [batch, pos, head, d_head], as in TL
    trace.fork().intervene('blocks.0.attn.hook_z', tl.zero_ablate().at[:, :, 3])

Blocks are the residual blocks lens found (in execution order, one per call), each holding
exactly one attention; nothing is read from class or module names, so GPT-2, Llama,
ViT-style and hand-written pre-norm transformers all get the same names. Per-position
attention facets use TransformerLens's layout (``[batch, pos, head, d]``); for rotary
models ``hook_q``/``hook_k`` are before the rotation and ``hook_rot_q``/``hook_rot_k``
after it. Aliases are off unless asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..capture.stash import StashKey
from ..errors import SelectorError
from ._mapping import facets_of
from ._providers import structure
from ._registry import Owner
from .selector import Facet, layout_perm

if TYPE_CHECKING:
    from ..tracing import Trace

SCHEMES = ("transformer_lens",)
_RESID = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


class FacetView:
    """A facet found by an alias: ``.out`` (in the alias's layout) and ``.selector``
    (to edit it: ``fork().intervene(view.selector, action)``, or the alias itself)."""

    def __init__(self, trace: Trace, owner: Owner, name: str, alias: str) -> None:
        self.trace = trace
        self.owner = owner
        self.name = name
        self.alias = alias

    @property
    def selector(self) -> Facet:
        return Facet(self.name, None, self.owner.key, "transformer_lens")

    @property
    def out(self) -> Tensor:
        value = facets_of(self.trace, self.owner)[self.name]
        perm = layout_perm("transformer_lens", "attention", self.name)
        return value.permute(perm) if perm else value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.out.shape)

    def __repr__(self) -> str:
        return f"<FacetView {self.alias!r}: facet {self.name!r} of {self.owner.name()}>"


def with_aliases(trace: Trace, scheme: str | None = "transformer_lens") -> Trace:
    """Turn on lookups by ``scheme``'s names (``None`` turns them off); returns the trace."""
    if scheme is not None and scheme not in SCHEMES:
        raise SelectorError(f"Unknown alias scheme {scheme!r}; known: {', '.join(SCHEMES)}.")
    trace.options = trace.options.but(aliases=scheme)
    return trace


_TABLE = StashKey[dict[str, tuple[Any, ...]]]("facets.aliases")


def table(trace: Trace) -> dict[str, tuple[Any, ...]]:
    """Alias -> ('op', call index) or ('facet', owner, name)."""
    found = trace.stash.get(_TABLE)
    if found is not None:
        return found
    found = {}
    index = structure(trace)
    attn_owners = index.owners("attention")
    for i, block in enumerate(b for b in index.owners("residual")
                              if "attn_out" in _names(index, b)):
        resid = next(g for g in index.of(block) if g.kind == "residual")
        ops = dict(resid.info())
        for name in _RESID:
            found[f"blocks.{i}.hook_{name}"] = ("op", ops[name])
        inside = [o for o in attn_owners if o.within(block.address) and
                  ops["resid_pre"] < _core(index, o) < ops["resid_mid"]]
        if len(inside) != 1:
            continue
        attn = inside[0]
        have = _names(index, attn)
        rotary = "q_pre_rotary" in have and "k_pre_rotary" in have
        pairs = {"hook_q": "q_pre_rotary" if rotary else "q",
                 "hook_k": "k_pre_rotary" if rotary else "k", "hook_v": "v", "hook_z": "z",
                 "hook_pattern": "pattern", "hook_attn_scores": "scores",
                 "hook_result": "result"}
        if rotary:
            pairs.update(hook_rot_q="q", hook_rot_k="k")
        for tl_name, ours in pairs.items():
            if ours in have:
                found[f"blocks.{i}.attn.{tl_name}"] = ("facet", attn, ours)
    trace.stash[_TABLE] = found
    return found


def _names(index: Any, owner: Owner) -> set[str]:
    return {n for g in index.of(owner) for n in g.names()}


def _core(index: Any, owner: Owner) -> int:
    for g in index.of(owner):
        if g.kind == "attention":
            return int(g.info()["core_op"])
    return -1


def resolve(trace: Trace, key: str) -> Any:
    """What an alias names in ``trace`` (an Op or a FacetView), or None."""
    if trace.options.aliases is None:
        return None
    hit = table(trace).get(key)
    if hit is None:
        return None
    if hit[0] == "op":
        return trace.op_at_call(hit[1])
    return FacetView(trace, hit[1], hit[2], key)


def alias_keys(trace: Trace) -> list[str]:
    if trace.options.aliases is None:
        return []
    return list(table(trace))
