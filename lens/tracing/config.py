"""Salient hyperparameters of an op (``func_config``) and its non-tensor arguments."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..capture.records import ParamRef, Ref

if TYPE_CHECKING:
    from .op import Op

# Positional parameter names of common functions whose Python signature torch hides.
_POSITIONAL: dict[str, tuple[str, ...]] = {
    "conv1d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "conv3d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "linear": ("input", "weight", "bias"),
    "max_pool2d": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                   "return_indices"),
    "max_pool1d": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                   "return_indices"),
    "avg_pool2d": ("input", "kernel_size", "stride", "padding", "ceil_mode",
                   "count_include_pad", "divisor_override"),
    "adaptive_avg_pool2d": ("input", "output_size"),
    "dropout": ("input", "p", "training", "inplace"),
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias", "training",
                   "momentum", "eps"),
    "group_norm": ("input", "num_groups", "weight", "bias", "eps"),
    "softmax": ("input", "dim", "_stacklevel", "dtype"),
    "log_softmax": ("input", "dim", "_stacklevel", "dtype"),
    "scaled_dot_product_attention": ("query", "key", "value", "attn_mask", "dropout_p",
                                     "is_causal", "scale"),
    "embedding": ("input", "weight", "padding_idx", "max_norm", "norm_type",
                  "scale_grad_by_freq", "sparse"),
    "gelu": ("input", "approximate"),
    "leaky_relu": ("input", "negative_slope", "inplace"),
}
_HIDDEN = frozenset({"_stacklevel", "inplace", "input", "return_indices"})


def _is_tensorish(v: Any) -> bool:
    if isinstance(v, (Ref, ParamRef)):
        return True
    return isinstance(v, (list, tuple)) and any(isinstance(x, (Ref, ParamRef)) for x in v)


def non_tensor_args(op: Op) -> dict[str, Any]:
    """Non-tensor arguments by name where known (``arg{i}`` otherwise) plus keywords."""
    names = _POSITIONAL.get(op.func_name, ())
    out: dict[str, Any] = {}
    for i, v in enumerate(op.args):
        if not _is_tensorish(v):
            out[names[i] if i < len(names) else f"arg{i}"] = v
    for k, v in op.kwargs.items():
        if not _is_tensorish(v):
            out[k] = v
    return out


def func_config(op: Op) -> dict[str, Any]:
    """Hyperparameters that shape the computation (kernel size, stride, p, eps, ...)."""
    cfg = {k: v for k, v in non_tensor_args(op).items()
           if k not in _HIDDEN and v is not None and not k.startswith("arg")}
    weights = [s for n, s in op.params_used if n.endswith("weight")]
    if weights and op.func_name.startswith("conv"):
        w = weights[0]
        cfg = {"out_channels": w[0], "in_channels": w[1], "kernel_size": tuple(w[2:]), **cfg}
    elif weights and op.func_name == "linear":
        cfg = {"out_features": weights[0][0], "in_features": weights[0][-1], **cfg}
    return cfg
