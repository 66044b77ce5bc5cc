"""Issue 12: in-place handling is O(1) per in-place op (payloads indexed by storage).

A graph of 8,000 ops, half of them in place, captured with every payload kept, against
the same graph written out of place. Copy on write still clones each payload an in-place
op overwrites; what must not happen is a scan over all ops per write.
"""

from __future__ import annotations

from typing import Any

import torch

import lens as tl

from .common import Section, interleaved

N_OPS = 8_000


class _Chain(torch.nn.Module):
    """``N_OPS // 2`` iterations of a multiply and a sine, the sine in place or not."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(N_OPS // 2):
            x = x * 0.5
            x = x.sin_() if self.inplace else x.sin()
        return x


def run(models: dict[str, Any]) -> Section:
    sec = Section("in-place capture (issue 12)")
    x = torch.randn(4, 4)
    chains = {"out_of_place": _Chain(False), "in_place": _Chain(True)}

    def capture(model: torch.nn.Module) -> Any:
        with torch.no_grad():
            return tl.trace(model, x)

    fns = {name: (lambda m=m: capture(m)) for name, m in chains.items()}
    t = interleaved(fns, repeats=5, warmup=1)
    n = len(fns["in_place"]())
    sec.add(f"{n} ops, half in place: capture / out-of-place capture",
            t["in_place"] / t["out_of_place"], unit="ratio", target="<= 1.5",
            note=f"out of place {t['out_of_place'] * 1e3:.0f} ms")
    return sec
