"""What a trace was captured with, as one frozen value (``trace.options``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class TraceOptions:
    """The capture options later steps need (replay, gradients, aliases, saving).

    - ``keep_orphans``: ops neither from an input nor feeding an output were kept.
    - ``detect_loops``: recurrent passes were grouped into layers.
    - ``intervention_ready``: every payload was kept so that forks can replay.
    - ``save_grads``: the ``save_grads=`` of the capture (True, False or a selector).
    - ``rng_state``: generator states at the start of the forward (``intervention_ready``
      only), so replay and rerun draw the same random numbers.
    - ``aliases``: the naming scheme ``trace.with_aliases`` turned on, or None.
    - ``sliced_payloads``: payloads were cut by ``save_at=``, so replay and validate refuse.
    """

    keep_orphans: bool = False
    detect_loops: bool = True
    intervention_ready: bool = False
    save_grads: Any = False
    rng_state: Mapping[str, Any] | None = None
    aliases: str | None = None
    sliced_payloads: bool = False

    def but(self, **changes: Any) -> TraceOptions:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)

    def items(self) -> list[tuple[str, Any]]:
        """``(name, value)`` for every field (what ``tl.save`` writes)."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)]

    @staticmethod
    def names() -> frozenset[str]:
        return frozenset(f.name for f in fields(TraceOptions))

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> TraceOptions:
        """From ``items()`` as read back; the caller checks the names first."""
        return cls(**dict(values))
