"""lens: record every tensor op of a PyTorch forward pass, and edit it.

    import lens as tl
    trace = tl.trace(model, x)
    trace['conv2d_3_7'].out, trace['features.6'].out, trace[-1]

The public surface is exactly ``__all__``.
"""

from __future__ import annotations

from . import sweeps as sweep
from .bundles import Bundle, bundle
from .draw import show_graph
from .io import extract_dataset, load, load_dataset_activations, save
from .trace.record import Recording, pluck, record
from .errors import (
    CaptureError,
    DrawError,
    InterventionError,
    LensError,
    LoadError,
    LookupKeyError,
    MissingDependencyError,
    ModelTypeError,
    PayloadError,
    ReplayError,
    SelectorError,
)
from .selectors import (
    everything,
    followed_by,
    func,
    in_module,
    label,
    module,
    nothing,
    preceded_by,
    where,
)
from .sweeps import RayExecutor, SweepResult
from .trace import Layer, ModuleCall, ModuleRecord, Op, OpGroup, Trace, trace
from .validate import ValidationReport, validate

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "CaptureError",
    "DrawError",
    "InterventionError",
    "Layer",
    "LensError",
    "LoadError",
    "LookupKeyError",
    "MissingDependencyError",
    "ModelTypeError",
    "ModuleCall",
    "ModuleRecord",
    "Op",
    "OpGroup",
    "PayloadError",
    "Recording",
    "RayExecutor",
    "ReplayError",
    "SelectorError",
    "SweepResult",
    "Trace",
    "ValidationReport",
    "__version__",
    "bundle",
    "everything",
    "extract_dataset",
    "followed_by",
    "func",
    "in_module",
    "label",
    "load",
    "load_dataset_activations",
    "module",
    "nothing",
    "pluck",
    "preceded_by",
    "record",
    "save",
    "show_graph",
    "sweep",
    "trace",
    "validate",
    "where",
]
