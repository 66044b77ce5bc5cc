"""Metrics comparing one op's payload in a member trace against the baseline's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import LensError

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).to(torch.float64)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors (1.0 = same direction)."""
    x, y = _flat(a), _flat(b)
    denom = x.norm() * y.norm()
    if denom == 0:
        return 1.0 if torch.equal(x, y) else 0.0
    return float((x @ y) / denom)


def l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Euclidean distance between the flattened tensors."""
    return float((_flat(a) - _flat(b)).norm())


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||baseline||`` (0 = unchanged); ``b`` is the baseline."""
    base = _flat(b).norm()
    diff = (_flat(a) - _flat(b)).norm()
    if base == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / base)


METRICS: dict[str, Metric] = {"cosine": cosine, "l2": l2, "relative_l2": relative_l2}
# How far a metric value is from "unchanged", so sites can be ranked by change.
CHANGE: dict[str, Callable[[float], float]] = {
    "cosine": lambda v: 1.0 - v, "l2": lambda v: v, "relative_l2": lambda v: v,
}


def resolve(metric: Any) -> tuple[str, Metric]:
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    if isinstance(metric, str) and metric in METRICS:
        return metric, METRICS[metric]
    raise LensError(
        f"Unknown metric {metric!r}. Use one of {sorted(METRICS)} or a callable "
        "f(member_tensor, baseline_tensor) -> float.")
