"""Selectors on where an op sits: the output of a module (:func:`module`), anywhere inside
a module (:func:`in_module`), inside a call of the top module (:func:`step`,
:func:`steps`), or under a final label (:func:`label`, :func:`label_contains`)."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from lens.errors import SelectorError, close_matches
from lens.selectors._base import Selector
from lens.selectors._protocol import OpLike, Timing

# 'features.6' or 'fc:2' (the second call of fc).
ADDRESS = re.compile(r"^(?P<address>[^:\s]+)(?::(?P<call>[1-9][0-9]*))?$")

_ADDRESS_HELP = (
    "Module addresses are the names from model.named_modules(), e.g. 'features.6' or "
    "'transformer.h.0.attn'"
)
_LABEL_HELP = (
    "Labels are the trace's lookup keys, e.g. 'conv2d_3_7', 'conv2d_3', 'conv2d_3_7:2' "
    "or a module address like 'features.6'"
)


def split_call(address: str) -> tuple[str, int | None]:
    """``'fc:2'`` -> ``('fc', 2)``; ``'fc'`` -> ``('fc', None)``."""
    found = ADDRESS.match(address)
    if found is None:
        raise SelectorError(
            f"{address!r} is not a module address. {_ADDRESS_HELP}, optionally with a "
            "call number such as 'fc:2'."
        )
    call = found.group("call")
    return found.group("address"), None if call is None else int(call)


def _did_you_mean(name: str, pool: Collection[str]) -> str:
    hits = close_matches(name, pool)
    if hits:
        return "Did you mean " + ", ".join(map(repr, hits)) + "?"
    examples = sorted(pool)[:8]
    if not examples:
        return "There are none to choose from."
    return "Some that exist: " + ", ".join(map(repr, examples)) + "."


def _require_str(kind: str, value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise SelectorError(f"{kind}() needs a non-empty string {what}, got {value!r}.")
    return value


def _check_address(sel: Selector, address: str, module_addresses: frozenset[str] | None) -> None:
    if module_addresses is None:
        return
    base, _ = split_call(address)
    if base not in module_addresses:
        raise SelectorError(
            f"{sel!r} names no module of this model: there is no module {base!r}. "
            f"{_did_you_mean(base, module_addresses)} {_ADDRESS_HELP}; fix the address "
            "or remove this selector."
        )


@dataclass(frozen=True, slots=True, repr=False)
class Module(Selector):
    """Matches the op(s) whose tensor a module returns (one call of it, given ``'fc:2'``)."""

    address: str

    def __post_init__(self) -> None:
        split_call(_require_str("tl.module", self.address, "module address"))

    def matches(self, op: OpLike) -> bool:
        return self.address in op.module_outputs

    @property
    def timing(self) -> Timing:
        return "module_exit"

    def _check(
        self, module_addresses: frozenset[str] | None, labels: frozenset[str] | None
    ) -> None:
        _check_address(self, self.address, module_addresses)

    def __repr__(self) -> str:
        return f"tl.module({self.address!r})"


def module(address: str) -> Module:
    """The output op(s) of a module: ``tl.module('features.6')``; ``tl.module('fc:2')``
    selects the output of its second call only."""
    return Module(address)


@dataclass(frozen=True, slots=True, repr=False)
class InModule(Selector):
    """Matches every op run inside a module (at any depth) and the module's output ops."""

    address: str

    def __post_init__(self) -> None:
        _, call = split_call(_require_str("tl.in_module", self.address, "module address"))
        if call is not None:
            base = self.address.partition(":")[0]
            raise SelectorError(
                f"tl.in_module({self.address!r}): ops record the modules around them "
                "without call numbers, so in_module() takes a bare address. Use "
                f"tl.in_module({base!r}) for every call, or tl.module({self.address!r}) "
                "for that call's output."
            )

    def matches(self, op: OpLike) -> bool:
        # The output clause only adds ops outside the subtree (a module returning a
        # tensor it did not compute); those are known once the call has returned.
        return self.address in op.module_addresses or self.address in op.module_outputs

    @property
    def timing(self) -> Timing:
        return "live"

    def _check(
        self, module_addresses: frozenset[str] | None, labels: frozenset[str] | None
    ) -> None:
        _check_address(self, self.address, module_addresses)

    def __repr__(self) -> str:
        return f"tl.in_module({self.address!r})"


def in_module(address: str) -> InModule:
    """Every op inside a module's subtree, plus its output ops: ``tl.in_module('encoder')``."""
    return InModule(address)


@dataclass(frozen=True, slots=True, repr=False)
class Step(Selector):
    """Matches every op run inside calls ``first`` .. ``last`` (inclusive, 1-based) of the
    top module; ``last=None``: every call from ``first`` on."""

    first: int
    last: int | None = None

    def __post_init__(self) -> None:
        for name, value in (("first", self.first), ("last", self.last)):
            if value is None and name == "last":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SelectorError(
                    f"tl.step/tl.steps take 1-based call numbers of the top module (1 is the "
                    f"first call, e.g. the first decoding step); got {name}={value!r}.")
        if self.last is not None and self.last < self.first:
            raise SelectorError(
                f"tl.steps({self.first}, {self.last}): the last step comes before the "
                f"first. Both ends are included: tl.steps(2, 4) is steps 2, 3 and 4.")

    def matches(self, op: OpLike) -> bool:
        step = op.step
        return step >= self.first and (self.last is None or step <= self.last)

    @property
    def timing(self) -> Timing:
        return "live"

    def __repr__(self) -> str:
        if self.last == self.first:
            return f"tl.step({self.first})"
        if self.last is None:
            return f"tl.steps({self.first})"
        return f"tl.steps({self.first}, {self.last})"


def step(k: int) -> Step:
    """Every op of the ``k``-th call (1-based) of the top module: one decoding step of
    ``tl.run(model.generate, ...)``. ``tl.step(3) & tl.module('transformer.h.1')`` is
    block 1's output at step 3. Ops the traced callable runs between calls (the argmax,
    the concatenation of the new token) belong to no step."""
    return Step(k, k)


def steps(first: int, last: int | None = None) -> Step:
    """Every op of calls ``first`` .. ``last`` of the top module, both ends included
    (``tl.steps(2, 4)``: steps 2, 3, 4); without ``last``, every step from ``first`` on."""
    return Step(first, last)


@dataclass(frozen=True, slots=True, repr=False)
class Label(Selector):
    """Matches ops that carry any of ``labels`` among their final lookup keys."""

    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.labels, tuple) or not self.labels:
            raise SelectorError("tl.label() needs at least one label, e.g. 'conv2d_3_7'.")
        for name in self.labels:
            _require_str("tl.label", name, "label")
        object.__setattr__(self, "labels", tuple(dict.fromkeys(self.labels)))

    def matches(self, op: OpLike) -> bool:
        return any(name in op.labels for name in self.labels)

    @property
    def timing(self) -> Timing:
        return "final"

    def _check(
        self, module_addresses: frozenset[str] | None, labels: frozenset[str] | None
    ) -> None:
        if labels is None:
            return
        for name in self.labels:
            if name not in labels:
                raise SelectorError(
                    f"{self!r}: no op has the label {name!r}. "
                    f"{_did_you_mean(name, labels)} {_LABEL_HELP}."
                )

    def __repr__(self) -> str:
        return f"tl.label({', '.join(map(repr, self.labels))})"


def label(*labels: str) -> Label:
    """Ops by final label: ``tl.label('conv2d_3_7', 'relu_2')``. Decidable only after
    postprocessing; interventions resolve it through an earlier trace's call order."""
    return Label(labels)


@dataclass(frozen=True, slots=True, repr=False)
class LabelContains(Selector):
    """Matches ops with a lookup key containing ``substring`` (``'linear'`` in
    ``'linear_2_20'``)."""

    substring: str

    def __post_init__(self) -> None:
        _require_str("tl.label_contains", self.substring, "substring")

    def matches(self, op: OpLike) -> bool:
        return any(self.substring in key for key in op.labels)

    @property
    def timing(self) -> Timing:
        return "final"

    def _check(
        self, module_addresses: frozenset[str] | None, labels: frozenset[str] | None
    ) -> None:
        if labels is not None and not any(self.substring in key for key in labels):
            raise SelectorError(
                f"{self!r} matches no op: no label contains {self.substring!r}. "
                f"{_did_you_mean(self.substring, labels)} {_LABEL_HELP}."
            )

    def __repr__(self) -> str:
        return f"tl.label_contains({self.substring!r})"


def label_contains(substring: str) -> LabelContains:
    """Ops with any lookup key containing ``substring``: ``tl.label_contains('linear')``."""
    return LabelContains(substring)
