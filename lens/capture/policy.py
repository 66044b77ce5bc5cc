"""Save policies and halting driven by selectors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from ..errors import SelectorError
from ..selectors import Selector, coerce
from .interceptors import SavePolicy
from .known import check_names

# When each kind of selector can be decided; a selector is evaluated at the first stage
# whose rank reaches its timing's rank. 'lookahead' is both a selector timing (it reads an
# op's consumers) and the stage at which the engine asks, ``lookback`` ops later.
STAGE_RANK = {"live": 0, "module_exit": 1, "lookahead": 2, "final": 3}

PayloadPolicy = Literal["metadata_only", "detached_raw"]
PAYLOAD_POLICIES: tuple[PayloadPolicy, ...] = ("metadata_only", "detached_raw")


class SelectorPolicy(SavePolicy):
    """Keep the payloads of the ops a selector matches, deciding as early as possible.

    A selector that reads an op's consumers (``tl.followed_by``) is decided either on the
    finished pass (``lookback=0``: exact; every candidate's payload is held until the end)
    or ``lookback`` ops after the op. Until then, ``payload_policy='detached_raw'``
    holds each candidate's payload detached (and before ``device=``/``dtype=`` are
    applied), so at most ``lookback`` of them are alive at once; ``'metadata_only'`` holds
    none, which cannot save a lookahead match and is refused.
    """

    def __init__(self, selector: Selector, lookback: int = 0,
                 payload_policy: PayloadPolicy = "metadata_only") -> None:
        self.selector = selector
        self.rank = STAGE_RANK[selector.timing]
        # A lookahead selector with no lookback waits for the end of the pass (exact).
        self.lookback = lookback if self.rank == 2 else 0
        self.detach_pending = payload_policy == "detached_raw"
        if self.lookback and not self.detach_pending:
            raise SelectorError(
                f"save={selector!r} can only be decided after later ops run, and "
                f"lookback={lookback} with lookback_payload_policy='metadata_only' (the "
                "default) keeps no candidate payloads to save then. Pass "
                "lookback_payload_policy='detached_raw' to hold up to lookback candidate "
                "payloads, or leave lookback=None to decide on the finished pass (exact).")
        self._bound: Selector | None = None

    def decide(self, op: Any, stage: str) -> bool | None:
        rank = STAGE_RANK[stage]
        if rank == 2 and not self.lookback:
            return None
        if rank == 3:  # ``op`` is the finished trace's view (see Recorder.finish)
            return bool(self._final(op.trace.ops)(op))
        if rank >= self.rank:
            return bool(self.selector(op))
        return None

    def _final(self, ops: Any) -> Selector:
        """At the end ordinals (``-5``) can be bound to positions in the finished trace."""
        if self._bound is None:
            self._bound = self.selector.bind_ordinals(ops)
        return self._bound

    def __repr__(self) -> str:
        return f"SelectorPolicy({self.selector!r})"


def halt_predicate(spec: Any, addresses: set[str]) -> Callable[[Any], bool]:
    """A predicate for ``halt=``: selectors decidable while the model runs."""
    sel = coerce(spec, module_addresses=addresses)
    sel.validate(module_addresses=addresses)
    check_names(sel, addresses)
    if STAGE_RANK[sel.timing] > 1:
        raise SelectorError(
            f"halt={sel!r} needs information that only exists after the forward pass "
            f"(timing {sel.timing!r}); halting needs a selector decidable as ops run, "
            "such as tl.func(...), tl.in_module(...) or tl.module(...).")
    return sel
