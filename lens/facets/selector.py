"""``tl.facet(name, head=..., module=...)``: a selector for facet sites.

    tl.facet('z', head=3) & tl.in_module('transformer.h.0')    # one head's z, block 0
    tl.facet('pattern', head=[0, 2], module='transformer.h.1.attn')
    tl.facet('resid_post', module='transformer.h.4')

As a selector it matches the op where the facet is edited (its *carrier*): the op holding
it (``q`` of a fused attention, an eager attention's softmax for ``pattern``), the fused
attention call when the facet exists only inside it (``pattern`` under SDPA, decomposed
for that call when edited), or the output projection for ``result``. ``module=`` keeps the
facets of module calls at or inside that address (``'h.0:2'``: that call only); ``&
tl.in_module(...)`` filters carrier ops like any selector. Given to ``tl.when`` or
``fork().intervene``, the action edits only the facet's slice (``head``), through
:func:`adapt_action`; the action receives that slice in the facet's documented layout,
with the head axis kept (size 1 for ``head=3``), so ``tl.mean_ablate(over=(0, 2))`` on
``z`` (``[batch, head, pos, d_head]``) averages over batch and position. ``step=t`` edits a
recurrent state or gate at time step ``t`` as the recurrence runs (see :func:`facet`):

    tl.facet('h', module='lstm', step=3)   # with tl.zero_ablate().at[..., 5]: unit 5 Decided on a
finished trace (timing ``'final'``): live rules resolve it against a reference trace of
the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..capture.stash import StashKey
from ..errors import InterventionError, SelectorError, close_matches
from ..selectors import Not, Selector
from ..selectors._protocol import OpLike, Timing
from ._edits import FacetEdit, Step
from ._providers import known_names, structure
from ._registry import Carrier, FacetGroup, Owner

if TYPE_CHECKING:
    from ..tracing import Trace

LAYOUTS = ("lens", "transformer_lens")
# lens layout -> TransformerLens layout ([batch, pos, head, d] for per-position tensors)
_TL = {n: (0, 2, 1, 3) for n in ("q", "k", "v", "z", "result", "k_expanded", "v_expanded",
                                 "q_pre_rotary", "k_pre_rotary")}


def layout_perm(layout: str, kind: str, name: str) -> tuple[int, ...] | None:
    if layout == "transformer_lens" and kind == "attention":
        return _TL.get(name)
    return None


@dataclass(frozen=True, slots=True, repr=False)
class Facet(Selector):
    """Matches the carrier op of facet ``name`` (see module doc)."""

    name: str
    head: int | tuple[int, ...] | str | None = None  # 'each': one sweep cell per head
    module: str | None = None
    layout: str = "lens"
    step: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SelectorError(f"tl.facet() needs a facet name such as 'z', got {self.name!r}.")
        head = self.head
        if head == "each":
            pass
        elif isinstance(head, (list, tuple, range)):
            head = tuple(head)
            if not head or not all(isinstance(h, int) and not isinstance(h, bool)
                                   for h in head):
                raise SelectorError(f"tl.facet({self.name!r}, head=...) takes an int or a "
                                    f"non-empty list of ints, got {self.head!r}.")
            object.__setattr__(self, "head", head)
        elif head is not None and (not isinstance(head, int) or isinstance(head, bool)):
            raise SelectorError(f"tl.facet({self.name!r}, head=...) takes an int, a list "
                                f"of ints or 'each', got {self.head!r}.")
        object.__setattr__(self, "step", _ints(self.name, "step", self.step))
        if self.layout not in LAYOUTS:
            raise SelectorError(f"tl.facet(layout=...) is one of {LAYOUTS}, got {self.layout!r}.")
        if self.module is not None and not isinstance(self.module, str):
            raise SelectorError(f"tl.facet(module=...) takes a module address, got "
                                f"{self.module!r}.")

    @property
    def timing(self) -> Timing:
        return "final"

    def matches(self, op: OpLike) -> bool:
        trace = getattr(op, "trace", None)
        if trace is None:
            raise SelectorError(
                f"{self!r} is decided on a finished trace (facets are read from the whole "
                "graph); use it in trace.find_sites, fork().intervene, or tl.when (which "
                "resolves it against a reference trace).")
        return bool(self.sites(trace, op.call_index))  # type: ignore[attr-defined]

    def sites(self, trace: Trace, ci: int) -> list[tuple[Owner, FacetGroup, Carrier]]:
        """The (owner, group, carrier) of this facet carried by op ``ci`` of ``trace``."""
        found = []
        for owner, name, group, carrier in carriers(trace).get(ci, ()):
            if name == self.name and (self.module is None or owner.within(self.module)):
                found.append((owner, group, carrier))
        return found

    def _check(self, module_addresses: frozenset[str] | None,
               labels: frozenset[str] | None) -> None:
        names = {n for ns in known_names().values() for n in ns}
        if names and self.name not in names:
            near = close_matches(self.name, names)
            hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
            raise SelectorError(
                f"{self!r}: no provider defines a facet {self.name!r}.{hint} Facets: "
                f"{', '.join(sorted(names))}.")
        if module_addresses is not None and self.module:
            base = self.module.partition(":")[0]
            if base and base not in module_addresses:
                near = close_matches(base, module_addresses)
                hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
                raise SelectorError(f"{self!r} names no module of this model.{hint}")

    # ------------------------------------------------------------------ editing
    def adapt_action(self, trace: Trace, selector: Selector, found: Sequence[Any],
                     action: Any) -> Any:
        """The action for the ops ``selector`` found in ``trace``: on carriers of facets
        it names, edit only the facet (the slice of ``head``); elsewhere as given."""
        nodes = facet_nodes(selector)
        plan: dict[int, tuple[Step, ...]] = {}
        memos: dict[tuple[int, Owner], dict[str, Any]] = {}  # one per facet, shared by its carriers
        for op in found:
            ci = op.call_index
            steps = [node.make_step(trace, owner, group, carrier,
                                    memos.setdefault((id(node), owner), {}))
                     for node in nodes for owner, group, carrier in node.sites(trace, ci)]
            if steps:
                plan[op.call_index] = tuple(steps)
        if not plan:
            for node in nodes:
                node.editable(trace)
        return FacetEdit(action, plan) if plan else action

    def editable(self, trace: Trace) -> None:
        """Raise if this facet exists in ``trace`` but cannot be edited."""
        index = structure(trace)
        for owner in index.owners():
            if self.module is not None and not owner.within(self.module):
                continue
            for group in index.of(owner):
                if self.name in group.names() and group.carrier(trace, self.name) is None:
                    can = [n for n in group.names() if group.carrier(trace, n) is not None]
                    raise InterventionError(
                        f"{self!r}: facet {self.name!r} of {owner.name()} "
                        f"({group.describe()}) is rebuilt from the model's weights and "
                        f"cannot be edited; editable facets there: {', '.join(can)}.")

    def make_step(self, trace: Trace, owner: Owner, group: FacetGroup, carrier: Carrier,
                  memo: dict[str, Any] | None = None) -> Step:
        perm = layout_perm(self.layout, group.kind, self.name)
        if self.step is not None and group.step_dim(self.name) is None:
            raise InterventionError(
                f"{self!r}: facet {self.name!r} of {owner.name()} ({group.describe()}) is "
                "not computed step by step; leave out step= (restrict the action with "
                ".at[...] to edit part of it).")
        keys: tuple[Any, ...] = ()
        if self.head == "each":
            raise InterventionError(
                f"{self!r}: head='each' makes one sweep cell per head (tl.sweep.patching, "
                "tl.sweep.ablation); an intervention edits one slice: pass head=None for "
                "every head together, an int, or a list of heads.")
        if self.head is not None:
            assert not isinstance(self.head, str)
            dim = group.head_dim(self.name)
            if dim is None:
                raise InterventionError(
                    f"{self!r}: facet {self.name!r} of {owner.name()} ({group.describe()}) "
                    "has no head dimension; leave out head=.")
            pos = perm.index(dim) if perm else dim
            keys = ((slice(None),) * pos + (_keep_axis(self.head),),)
        return Step(owner, self.name, self.layout, keys, perm, carrier, self.head, self.step,
                    memo if memo is not None else {})

    def __repr__(self) -> str:
        parts = [repr(self.name)]
        if self.head is not None:
            head = self.head if isinstance(self.head, (int, str)) else list(self.head)
            parts.append(f"head={head!r}")
        if self.module is not None:
            parts.append(f"module={self.module!r}")
        if self.layout != "lens":
            parts.append(f"layout={self.layout!r}")
        if self.step is not None:
            parts.append(f"step={self.step if isinstance(self.step, int) else list(self.step)!r}")
        return f"tl.facet({', '.join(parts)})"


def _keep_axis(head: int | tuple[int, ...]) -> slice | list[int]:
    """The index of ``head`` that keeps the head axis (size 1 for one head), so an action
    sees the facet's documented layout and ``mean_ablate(over=...)`` means what it says."""
    if isinstance(head, int):
        return slice(head, head + 1 if head != -1 else None)
    return list(head)


def _ints(name: str, what: str, value: Any) -> Any:
    """``value`` as an int, a non-empty tuple of ints, or None; else a SelectorError."""
    if isinstance(value, (list, tuple, range)):
        value = tuple(value)
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return value
    elif value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise SelectorError(f"tl.facet({name!r}, {what}=...) takes an int or a non-empty list "
                        f"of ints, got {value!r}.")


def facet(name: str, head: int | Sequence[int] | str | None = None,
          module: str | None = None, layout: str = "lens",
          step: int | Sequence[int] | None = None) -> Facet:
    """Select facet ``name`` (of ``head``, in module calls at or inside ``module``) for
    interventions and sweeps: ``tl.facet('z', head=3) & tl.in_module('transformer.h.0')``.
    ``module=':1'`` keeps only the model's own forward (facets outside every submodule).
    ``layout='transformer_lens'`` presents per-position facets as ``[batch, pos, head,
    d]`` to the action (as TransformerLens hooks do). In a sweep, ``head='each'`` gives
    one cell per head (and a list, one cell per listed head).

    ``step=t`` (an int or a list) edits a recurrent facet (``h``, ``c``, the gates) at time
    step ``t`` only, as the recurrence runs: later steps and layers see the edit. The action
    is called once per step, layer and direction with that step's slice of the facet,
    ``[layer, direction, batch, 1, hidden]`` (time axis kept), so ``.at[..., 3]`` names unit
    3 and ``.at[0, 1, :, :, 3]`` unit 3 of layer 0's reverse direction only; without
    ``step=`` every step is edited so. The fused op's outputs are recomputed where the edit
    changed them and keep the fused kernel's values elsewhere."""
    keep = head is None or isinstance(head, (int, str))
    return Facet(name, head if keep else tuple(head), module, layout,  # type: ignore[arg-type]
                 step if step is None or isinstance(step, int) else tuple(step))


def facet_nodes(selector: Selector) -> list[Facet]:
    """The facet selectors inside ``selector``; facets under ``~`` are refused (the
    complement of one head's slice is not a set of ops)."""
    nodes: list[Facet] = []

    def walk(sel: Selector, negated: bool) -> None:
        if isinstance(sel, Facet):
            if negated:
                raise SelectorError(
                    f"{sel!r} appears under ~: a facet is part of an op's value, so its "
                    "complement is not a set of sites. Select the facets to edit instead.")
            nodes.append(sel)
        for part in sel.operands:
            walk(part, negated or isinstance(sel, Not))

    walk(selector, False)
    return nodes


_CARRIERS = StashKey[dict[int, list[tuple[Owner, str, FacetGroup, Carrier]]]](
    "facets.carriers")


def carriers(trace: Trace) -> dict[int, list[tuple[Owner, str, FacetGroup, Carrier]]]:
    """Op call index -> the facets edited at that op (owner, name, group, carrier)."""
    table = trace.stash.get(_CARRIERS)
    if table is None:
        table = {}
        index = structure(trace)
        for owner in index.owners():
            for group in index.of(owner):
                for name in group.names():
                    for c in group.carriers(trace, name):
                        table.setdefault(c.op, []).append((owner, name, group, c))
        trace.stash[_CARRIERS] = table
    return table

