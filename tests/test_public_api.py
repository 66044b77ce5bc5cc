"""The public surface is exactly lens.__all__ (import direction: tests/test_structure.py)."""

from __future__ import annotations

from pathlib import Path

import lens

PUBLIC = {
    # capture, trace and validation
    "trace", "record", "Recording", "pluck", "validate", "ValidationReport", "Trace", "Op",
    "summary", "Layer", "OpGroup", "ModuleRecord", "ModuleCall", "show_graph",
    # selectors
    "func", "module", "in_module", "label", "followed_by", "preceded_by", "where",
    "everything", "nothing", "step", "steps",
    # storage
    "save", "load", "to_disk", "extract_dataset", "load_dataset_activations",
    # interventions
    "when", "When", "run", "Action", "action", "Fork", "InterventionWarning", "zero_ablate",
    "mean_ablate", "resample_ablate", "steer", "scale", "clamp", "noise", "project_onto",
    "project_off", "swap_with", "replace_with", "splice_module", "patch_from",
    # bundles and sweeps
    "bundle", "Bundle", "sweep", "SweepResult", "RayExecutor",
    # errors
    "LensError", "ArgumentTypeError", "LookupKeyError", "SelectorError", "CaptureError",
    "ModelTypeError",
    "PayloadError", "ReplayError", "InterventionError", "LoadError",
    "MissingDependencyError", "DrawError", "SaveError",
    "__version__",
    # facets
    "facet", "find_facets", "Facets", "FacetView", "FacetError",
    # compatibility
    "compat",
}


def test_all_is_pinned():
    assert set(lens.__all__) == PUBLIC
    assert len(lens.__all__) == len(set(lens.__all__))
    for name in lens.__all__:
        assert hasattr(lens, name), name


def test_one_version_string():
    import importlib.metadata
    import re

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    project = re.search(r"(?ms)^\[project\]$(.*?)^\[", pyproject)
    assert project and 'dynamic = ["version"]' in project.group(1)
    assert not re.search(r"(?m)^version\s*=", project.group(1)), "one version: lens/__init__"
    assert 'version = { attr = "lens.__version__" }' in pyproject
    assert importlib.metadata.version("lens") == lens.__version__
