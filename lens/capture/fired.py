"""Which intervention rules edited an op: state written by ``lens.interventions``.

The interventions room owns this state (a live rule notes itself on the op it edits, a
fork notes the edits it replayed), but rooms to its left read it (``Op.fired``, the op
report in ``lens.tracing.fmt``) and so do its siblings (facets refuse to check an edited
op, ``lens.io`` saves and loads it), so its key and accessors live here, at the bottom.
Only ``lens.interventions`` writes it, and ``lens.io`` when it restores a saved trace.

The rules sit in the record's stash under :data:`FIRED` as a tuple, never mutated in
place: a fork's record starts from a copy of the source's stash that shares its values,
and noting an edit on the fork replaces the tuple instead of growing the source's. A
record no rule touched has no entry, and reading it makes no stash: capture without
interventions allocates nothing for it. The tuple holds rule specs only (or, loaded from
disk, their reprs), never a trace or an op view (tests/tracing/test_lifetime.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .records import OpRecord
from .stash import Stash, StashKey

FIRED = StashKey[tuple[Any, ...]]("interventions.fired")


def fired_on(record: OpRecord) -> list[Any]:
    """The rules that edited ``record``, in the order they fired (a new list; empty for
    an op no rule touched)."""
    stash: Stash | None = getattr(record, "_stash", None)  # don't make one to read it
    found = None if stash is None else stash.get(FIRED)
    return [] if found is None else list(found)


def note_fired(record: OpRecord, specs: Iterable[Any]) -> None:
    """Note that ``specs`` edited ``record``, after the rules already noted there."""
    new = tuple(specs)
    if new:
        stash = record.stash
        stash[FIRED] = (stash.get(FIRED) or ()) + new


def set_fired(record: OpRecord, specs: Iterable[Any]) -> None:
    """Replace the rules noted on ``record`` (a fork restoring its source's op, a trace
    loaded from disk); an empty ``specs`` leaves no entry."""
    new = tuple(specs)
    stash: Stash | None = getattr(record, "_stash", None)
    if new:
        record.stash[FIRED] = new
    elif stash is not None:
        stash.discard(FIRED)
