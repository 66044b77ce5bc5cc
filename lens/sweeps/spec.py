"""What a sweep computes, as an immutable, picklable, hashable value."""

from __future__ import annotations

import hashlib
import json
import types
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..io._fingerprint import model_fingerprint
from .identity import code_identity
from .positions import describe as describe_positions

Kind = Literal["patching", "ablation", "attribution"]
# Version of the stored row format: 2 names sites as the user did (module address, facet,
# label) and adds layer and op; rows of version 1 (no "rows" key) named sites by op label.
ROW_SCHEMA = 2


@dataclass(frozen=True, eq=False)
class SweepSpec:
    """Everything that decides a sweep's rows (a result store refuses another spec)."""

    kind: Kind
    sites: Any  # a selector, or a list of labels
    metric: Any  # callable(output_tensor) -> scalar tensor
    inputs: tuple[Any, ...]  # (clean, corrupted) for patching; (inputs,) for ablation
    positions: Any = "each"  # 'each', a list of ints, None (whole tensor), or per row
    position_dim: int = 1
    action: Any = None  # ablation only
    output: str | None = None  # label of the output the metric reads (default: first)
    input_kwargs: dict[str, Any] = field(default_factory=dict)
    model_fn: Any = None  # picklable builder of the model (for remote workers)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description; its hash identifies the sweep."""
        return {
            "kind": self.kind,
            "sites": repr(self.sites),
            "metric": _qualname(self.metric),
            "metric_code": code_identity(self.metric),
            "rows": ROW_SCHEMA,
            "positions": describe_positions(self.positions),
            "position_dim": self.position_dim,
            "action": _describe_action(self.action),
            "action_code": None if self.action is None else code_identity(self.action),
            "output": self.output,
            "inputs": [_digest(x) for x in self.inputs],
            "input_kwargs": {k: _digest(v) for k, v in sorted(self.input_kwargs.items())},
        }

    def describe_with(self, model: Any) -> dict[str, Any]:
        """``describe()`` plus a fingerprint of the model, as stored in a result folder."""
        desc = self.describe()
        if model is not None:
            desc["model"] = _model_digest(model)
        return desc

    def digest(self, model: Any = None) -> str:
        return describe_digest(self.describe_with(model))


CODE_KEYS = ("metric_code", "action_code")


def describe_digest(desc: dict[str, Any]) -> str:
    blob = json.dumps(desc, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _describe_action(action: Any) -> str | None:
    """Actions describe themselves by repr; plain functions by qualified name (their repr
    holds a memory address, which would make a resumed sweep look like another one)."""
    if action is None:
        return None
    if isinstance(action, (types.FunctionType, types.BuiltinFunctionType)):
        return _qualname(action)
    return repr(action)


def _qualname(fn: Any) -> str:
    mod = getattr(fn, "__module__", "") or ""
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{mod}.{name}" if mod else str(name)


def _digest(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        h = hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return {"tensor": list(t.shape), "dtype": str(t.dtype), "sha": h.hexdigest()[:16]}
    if isinstance(x, dict):
        return {str(k): _digest(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
        return [_digest(v) for v in x]
    return repr(x)


def _model_digest(model: Any) -> str:
    """Parameter names, shapes, dtypes and sampled values (see ``model_fingerprint``)."""
    if not isinstance(model, torch.nn.Module):
        return _qualname(model)
    return model_fingerprint(model)
