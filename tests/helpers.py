"""Shared test helpers: independent ground truth from plain PyTorch hooks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tests.models import ZOO, ZooCase

# Ops whose output is uninitialised memory: two runs (or a recomputation) give different
# bytes, so payload comparisons across runs skip them (their metadata still must agree).
UNINITIALISED = frozenset({"empty", "empty_like", "new_empty", "empty_strided"})


def regular_cases(irregular: bool = False) -> list[ZooCase]:
    """Every non-bench case a test may run several times on the same inputs; ``irregular``
    ones (input written in place, uninitialised or NaN payloads, see tests/models) only
    when asked for, by tests written for them."""
    odd = {"irregular", "mutates_input"}
    return [c for c in ZOO.values() if "bench" not in c.tags
            and (irregular or not c.tags & odd)]


def build(case: ZooCase) -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    if "hf" in case.tags:
        pytest.importorskip("transformers")
    return case.build()


def leaves(obj: Any) -> list[torch.Tensor]:
    """Tensors inside nested tuples/lists/dicts, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for x in obj for t in leaves(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in leaves(x)]
    return []


def hook_outputs(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 seed: int = 0) -> tuple[dict[str, list[list[torch.Tensor]]], Any]:
    """Outputs of every module call, captured with plain register_forward_hook (cloned,
    so later in-place ops cannot change them)."""
    found: dict[str, list[list[torch.Tensor]]] = {}
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(m: nn.Module, inp: Any, out: Any, name: str = name) -> None:
            found.setdefault(name, []).append([t.detach().clone() for t in leaves(out)])

        handles.append(mod.register_forward_hook(hook))
    try:
        torch.manual_seed(seed)
        out = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return found, out
