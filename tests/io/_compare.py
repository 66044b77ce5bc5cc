"""Exact comparison of two traces (an original and its saved-and-loaded copy)."""

from __future__ import annotations

import math
from typing import Any

import torch

from lens.capture.engine import _tensor_leaves


def same_bits(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    x = a.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    y = b.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return bool(torch.equal(x, y))


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same type, recursively; NaN equals NaN; tensors by bits."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and same_bits(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, slice):
        return all(same_value(getattr(a, k), getattr(b, k)) for k in ("start", "stop", "step"))
    return bool(a == b)


OP_FIELDS = ("call_index", "index", "kind", "func_name", "type", "parent_idx", "child_idx",
             "shape", "dtype", "device", "requires_grad", "params", "elapsed", "out_index",
             "call_id", "mutates", "address", "code", "bool_used", "_saved", "label",
             "layer_label", "short_label", "pass_num", "num_passes", "labels",
             "module_addresses", "module_outputs", "module_call")


def assert_same_trace(a: Any, b: Any) -> None:
    assert b.labels == a.labels
    assert [layer.label for layer in b.layers] == [layer.label for layer in a.layers]
    assert [len(layer) for layer in b.layers] == [len(layer) for layer in a.layers]
    for x, y in zip(a.ops, b.ops, strict=True):
        for f in OP_FIELDS:
            assert same_value(getattr(x, f), getattr(y, f)), (x.label, f)
        assert y.func == x.func, x.label
        assert same_value(x.args, y.args) and same_value(x.kwargs, y.kwargs), x.label
        assert same_bits(x.payload, y.payload), x.label
        if x.payload is not None and x.payload.numel() > 1:
            assert x.payload.stride() == y.payload.stride(), x.label
        assert same_bits(x.grad, y.grad), x.label
        assert [c.key for c in y.module_ctx] == [c.key for c in x.module_ctx]
        assert [c.key for c in y.output_of] == [c.key for c in x.output_of]
        assert [repr(f) for f in y.fired] == [repr(f) for f in x.fired]
    for f in ("model_name", "halted", "elapsed", "module_info", "param_meta",
              "orphans_trimmed", "is_recurrent", "max_passes", "saved_nbytes"):
        assert same_value(getattr(a, f), getattr(b, f)), f
    assert a.param_values.keys() == b.param_values.keys()
    for name, p in a.param_values.items():
        assert same_bits(p, b.param_values[name]), name
    assert len(a.module_calls) == len(b.module_calls)
    for c, d in zip(a.module_calls, b.module_calls, strict=True):
        for f in ("key", "class_name", "first_op", "last_op", "input_ops", "output_ops",
                  "depth"):
            assert same_value(getattr(c, f), getattr(d, f)), (c.key, f)
        assert (c.parent is None) == (d.parent is None)
        assert c.parent is None or c.parent.key == d.parent.key
    leaves_a = [t for _, t in _tensor_leaves(a.output, ())]
    leaves_b = [t for _, t in _tensor_leaves(b.output, ())]
    assert len(leaves_a) == len(leaves_b)
    assert all(same_bits(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))
