"""Per-step edits of a fused ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` call.

An edit of a state or gate at time step ``t`` cannot be made on the fused op's outputs:
it changes every later step, and every layer above. :class:`StepRewrite` reruns the
recurrence (:func:`~lens.facets._rnn_math.unroll`, every layer and direction) with the
action applied to the facet as each edited step is computed, then takes the fused op's
outputs (``output``, ``h_n``, ``c_n``) from that run where the edit changed them and keeps
the fused kernel's values, bit for bit, everywhere else.

The action sees one step of the facet in its documented layout, ``[layer, direction,
batch, 1, hidden]``, once per layer and direction (the recurrence computes them one after
the other; entries of the slice not computed yet hold their unedited values), and only
the entry of the layer and direction being computed is used. A fused call has one carrier
op per output; the rerun happens at the first of them and the others take their part from
the step's memo, so the action runs once per call.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import InterventionError
from ._rnn_math import OUTPUTS, RnnSpec, unroll

Edit = Callable[..., Tensor]


class StepRewrite:
    """Rerun the recurrence with an edit of a per-step facet; ``part`` is which output of
    the fused call (0 ``output``, 1 ``h_n``, 2 ``c_n``) this carrier op holds."""

    stepwise = True

    def __init__(self, spec: RnnSpec, part: int) -> None:
        self.spec = spec
        self.part = part

    def apply_steps(self, value: Tensor, site: Any, step: Any, edit: Edit
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The new value of this output, and the edited facets (if computed here)."""
        inputs = site.inputs()
        memo = step.memo
        key = memo.get("key")
        if (self.part in memo.get("left", {}) and key is not None and len(key) == len(inputs)
                and all(r() is t for r, t in zip(key, inputs, strict=True))):
            edited, changed = memo["left"].pop(self.part)
            return torch.where(changed, edited, value), {}
        outs, stages = self._rerun(inputs, site, step, edit)
        memo.clear()
        memo["key"] = tuple(weakref.ref(t) for t in inputs)
        memo["left"] = {p: outs[p] for p in range(self.part + 1, len(self.spec.outputs))}
        edited, changed = outs[self.part]
        return torch.where(changed, edited, value), stages

    def _rerun(self, inputs: list[Tensor], site: Any, step: Any, edit: Edit
               ) -> tuple[dict[int, tuple[Tensor, Tensor]], dict[str, Tensor]]:
        s = self.spec
        x, hx = inputs[0], list(inputs[1:])
        params = site.params()
        weights = [params[n] for n in s.params]
        # the same grad mode as the edited run: matmul picks its kernel by it, and positions
        # the edit does not reach must compare equal
        base = {n: t.detach() for n, t in unroll(s, x, hx, weights).items()}
        steps = base[step.name].shape[3]
        chosen = _steps(step, steps)
        shown: dict[int, Tensor] = {}  # per edited step: the slice the action sees

        def hook(name: str, value: Tensor, layer: int, direction: int, t: int) -> Tensor:
            if name != step.name or t not in chosen:
                return value
            key = (slice(None), slice(None), slice(None), slice(t, t + 1))
            cur = shown.setdefault(t, base[name][key].clone())
            now = cur.clone()
            now[layer, direction, :, 0] = value
            # a fresh tensor: a view at an offset in the slice can take another matmul
            # kernel, so unedited values would drift from the fused op's by rounding
            new = edit(now, (key,), base[name])[layer, direction, :, 0].clone()
            cur[layer, direction, :, 0] = new.detach()
            return new

        found = unroll(s, x, hx, weights, hook)
        outs = {p: (found[n], found[n] != base[n]) for p, n in enumerate(OUTPUTS)
                if p < len(s.outputs)}
        return outs, {n: t for n, t in found.items() if n not in OUTPUTS}


def _steps(step: Any, steps: int) -> frozenset[int]:
    """The time steps ``step.step`` names (all if None), negative ones from the end."""
    if step.step is None:
        return frozenset(range(steps))
    wanted = (step.step,) if isinstance(step.step, int) else step.step
    bad = [t for t in wanted if not -steps <= t < steps]
    if bad:
        raise InterventionError(
            f"{step.describe()}: the sequence has {steps} time steps (0 to {steps - 1}, or "
            f"negative from the end), so step {bad[0]} does not exist.")
    return frozenset(t % steps for t in wanted)
