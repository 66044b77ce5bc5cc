"""What a selector may ask of an op, and when the answer becomes known.

Selectors never see lens's concrete op classes: they evaluate anything shaped like
:class:`OpLike`. The capture engine's live records and the trace's finished ops both
qualify, and so does a ten-line dataclass in a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

Timing = Literal["live", "module_exit", "lookahead", "final"]
"""When a selector's answer for an op is decidable, earliest first.

- ``'live'``: as soon as the op runs (its function, module context, call order, parents).
- ``'module_exit'``: once the module call that returns the op's tensor has returned.
- ``'lookahead'``: once later ops have consumed the op's tensor (its children are needed).
- ``'final'``: only after postprocessing (final labels, positions in the finished trace).
"""

TIMINGS: tuple[Timing, ...] = ("live", "module_exit", "lookahead", "final")


def latest(*timings: Timing) -> Timing:
    """The latest of ``timings`` (``'live'`` when none are given)."""
    return max(timings, key=TIMINGS.index, default="live")


@runtime_checkable
class OpLike(Protocol):
    """The attributes of an op that selectors read (the capture engine guarantees them).

    Declared as read-only properties so that plain attributes, properties and frozen
    dataclass fields all satisfy the protocol.
    """

    @property
    def type(self) -> str:
        """Normalized op type: 'conv2d', 'add' (for ``__add__``), 'maxpool2d', 'input'."""

    @property
    def func_name(self) -> str:
        """Raw function name: 'max_pool2d', '__add__', 'relu'."""

    @property
    def index(self) -> int:
        """0-based position in execution (call) order."""

    @property
    def module_addresses(self) -> tuple[str, ...]:
        """Addresses of the modules containing the op, outermost first; () at top level."""

    @property
    def module_outputs(self) -> tuple[str, ...]:
        """Modules whose output is this op's tensor, bare ('fc') and per call ('fc:2')."""

    @property
    def parents(self) -> Sequence[OpLike]:
        """Ops whose tensors this op consumed."""

    @property
    def children(self) -> Sequence[OpLike]:
        """Ops that consumed this op's tensor (grows while later ops run)."""

    @property
    def labels(self) -> frozenset[str]:
        """Final lookup keys ('conv2d_3_7', 'conv2d_3', 'features.6', ...)."""

    @property
    def pass_num(self) -> int:
        """Which pass of its layer this op is (1-based)."""

    @property
    def step(self) -> int:
        """Which call of the top module the op ran inside (1-based; 0 outside any call):
        one decoding step when a bound method such as ``model.generate`` is traced."""
