"""lens: record every tensor op of a PyTorch forward pass, and edit it.

    import lens as tl
    trace = tl.trace(model, x)
    trace['conv2d_3_7'].out, trace['features.6'].out, trace[-1]

The public surface is exactly ``__all__``.
"""

from __future__ import annotations

from . import compat
from . import sweeps as sweep
from .bundles import Bundle, bundle
from .draw import show_graph
from .errors import (
    ArgumentTypeError,
    CaptureError,
    DrawError,
    FacetError,
    InterventionError,
    LensError,
    LoadError,
    LookupKeyError,
    MissingDependencyError,
    ModelTypeError,
    PayloadError,
    ReplayError,
    SaveError,
    SelectorError,
)
from .facets import Facets, FacetView, facet, find_facets
from .interventions import (
    Action,
    Fork,
    InterventionWarning,
    When,
    action,
    clamp,
    mean_ablate,
    noise,
    patch_from,
    project_off,
    project_onto,
    replace_with,
    resample_ablate,
    run,
    scale,
    splice_module,
    steer,
    swap_with,
    when,
    zero_ablate,
)
from .io import extract_dataset, load, load_dataset_activations, save, to_disk
from .selectors import (
    everything,
    followed_by,
    func,
    in_module,
    label,
    module,
    nothing,
    preceded_by,
    step,
    steps,
    where,
)
from .sweeps import RayExecutor, SweepResult
from .tracing import Layer, ModuleCall, ModuleRecord, Op, OpGroup, Trace, trace
from .tracing.record import Recording, pluck, record
from .tracing.shortcuts import summary
from .validation import ValidationReport, validate

__version__ = "0.1.0"

__all__ = [
    "FacetError",
    "FacetView",
    "Facets",
    "facet",
    "find_facets",
    "Action",
    "ArgumentTypeError",
    "Bundle",
    "CaptureError",
    "DrawError",
    "Fork",
    "InterventionError",
    "InterventionWarning",
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
    "RayExecutor",
    "Recording",
    "ReplayError",
    "SaveError",
    "SelectorError",
    "SweepResult",
    "Trace",
    "ValidationReport",
    "When",
    "__version__",
    "action",
    "bundle",
    "clamp",
    "compat",
    "everything",
    "extract_dataset",
    "followed_by",
    "func",
    "in_module",
    "label",
    "load",
    "load_dataset_activations",
    "mean_ablate",
    "module",
    "noise",
    "nothing",
    "patch_from",
    "pluck",
    "preceded_by",
    "step",
    "steps",
    "project_off",
    "project_onto",
    "record",
    "replace_with",
    "resample_ablate",
    "run",
    "save",
    "to_disk",
    "scale",
    "show_graph",
    "splice_module",
    "steer",
    "summary",
    "swap_with",
    "sweep",
    "trace",
    "validate",
    "when",
    "where",
    "zero_ablate",
]
