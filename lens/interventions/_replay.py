"""Replaying a fork: recompute what the edits change, from recorded functions only.

:class:`ForkInterpreter` extends the replay interpreter with what edits need: versions.
An edit made at a module's exit is seen only by ops that ran after the module returned
(ops inside the module consumed the unedited value, as with a forward hook), so a site's
value depends on which op asks for it. Random ops and modes need nothing here: the base
:class:`~lens.replay.interpreter.Interpreter` runs every op from the generator state and
under the mode recorded for it at capture, so ops downstream of an edit draw what they
drew at capture.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from ..capture import storage
from ..capture.records import OpRecord
from ..errors import ReplayError
from ..replay.interpreter import Interpreter
from ..replay.steps import prepare
from ..tracing import Op, Trace
from ._sites import describe

_INF = float("inf")


class ForkInterpreter(Interpreter):
    """An :class:`Interpreter` whose edited sites hold several versions (see module doc)."""

    def __init__(self, trace: Trace, values: Mapping[int, Tensor] | None = None) -> None:
        super().__init__(trace, values)
        self.versions: dict[int, list[tuple[float, Tensor]]] = {}
        self.current = -1  # call index of the op being computed

    def seen_by(self, ci: int, consumer: int) -> Tensor:
        """The value of op ``ci`` as op ``consumer`` sees it."""
        versions = self.versions.get(ci)
        if versions is not None:
            for boundary, value in versions:
                if consumer <= boundary:
                    return value
        return self.value(ci)

    def changed_for(self, ci: int, consumer: int, base: Mapping[int, Tensor]) -> bool:
        return self.changed((ci,), consumer, base)

    def changed(self, parents: Iterable[int], consumer: int, base: Mapping[int, Tensor]
                ) -> bool:
        """Whether any of ``parents`` has, for op ``consumer``, a value other than the
        source trace's: recomputed, or an edited version other than the source's value."""
        env, versions = self.env, self.versions
        for p in parents:
            if p in env or (p in versions and self.seen_by(p, consumer) is not base[p]):
                return True
        return False

    def run_record(self, rec: OpRecord) -> Tensor:
        """:meth:`run_op` for a record, with no op view made (one is made only to name
        the op in an error)."""
        self.current = rec.call_index
        try:
            return self.run_step(prepare(rec))
        finally:
            self.current = -1

    def value(self, call_index: int) -> Tensor:
        if call_index in self.versions and self.current >= 0:
            return self.seen_by(call_index, self.current)
        return super().value(call_index)

    def run_op(self, op: Op) -> Tensor:
        self.current = op.call_index
        try:
            return super().run_op(op)
        finally:
            self.current = -1


def refuse_severing_edits(trace: Trace, edited: Iterable[int]) -> None:
    """Refuse edits replay cannot reproduce: a view that a later write goes through (a live
    edit hands the model a new tensor, which the write then misses), or a refresh op."""
    records = list(trace.record_table)
    for ci, refresh_ci in storage.severing_edits(records, edited):
        rec, ref = records[ci], records[refresh_ci]
        if ci == refresh_ci:
            why = (f"{describe(rec)} is lens's record of a tensor after a write through "
                   "another view of its storage, not a call the model made")
        else:
            why = (f"{describe(rec)} is a view that ties {describe(ref)} to a storage written "
                   "in place: an edit replaces the view with a new tensor, so the write "
                   "would no longer reach it, which replay cannot reproduce")
        raise ReplayError(
            f"Cannot replay this edit: {why}. Edit the in-place write itself, the op that "
            "made the storage, or an op that reads the tensor after the write.")


def output_structure(source_output: Any, trace: Trace, values: Mapping[int, Tensor]) -> Any:
    """``source_output`` with the tensors of replayed output ops swapped in."""
    from ..capture.template import rebuild, tensor_leaves

    outs = [op for op in trace.ops if op.is_output]
    leaves = list(tensor_leaves(source_output, ()))
    if len(outs) != len(leaves):
        return source_output
    replaced = {path: values[op.call_index] for (path, _), op in zip(leaves, outs, strict=True)
                if op.call_index in values}
    if not replaced:
        return source_output
    return rebuild(source_output, (), replaced)


__all__ = ["ForkInterpreter", "output_structure", "_INF"]
