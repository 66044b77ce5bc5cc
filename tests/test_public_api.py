"""The public surface is exactly lens.__all__, and rooms import one way only."""

from __future__ import annotations

import ast
from pathlib import Path

import lens

PUBLIC = {
    # capture, trace and validation
    "trace", "record", "Recording", "pluck", "validate", "ValidationReport", "Trace", "Op",
    "summary", "Layer", "OpGroup", "ModuleRecord", "ModuleCall", "show_graph",
    # selectors
    "func", "module", "in_module", "label", "followed_by", "preceded_by", "where",
    "everything", "nothing",
    # storage
    "save", "load", "extract_dataset", "load_dataset_activations",
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
}


def test_all_is_pinned():
    assert set(lens.__all__) == PUBLIC
    assert len(lens.__all__) == len(set(lens.__all__))
    for name in lens.__all__:
        assert hasattr(lens, name), name


# errors <- selectors <- capture <- trace <- replay <- (interventions, facets, draw, io)
# <- bundles <- sweeps <- lens/__init__ (and the top-level modules that use everything).
RANK = {"errors": 0, "selectors": 1, "capture": 2, "trace": 3, "replay": 4,
        "interventions": 5, "facets": 5, "draw": 5, "io": 5, "validate": 5,
        "bundles": 6, "sweeps": 7, "examples": 8, "cli": 8, "demo": 9}
ROOT = Path(lens.__file__).parent


def _room(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imported_rooms(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg[: len(pkg) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts] if node.module else [base + [a.name] for a in node.names]
            else:
                names = [node.module.split(".")] if node.module else []
            for parts in names:
                if parts[:1] == ["lens"] and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "lens" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_rooms_never_import_a_room_to_their_right():
    bad = []
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue
        room = _room(path)
        if room not in RANK:
            continue
        for other in _imported_rooms(path):
            if other in RANK and other != room and RANK[other] >= RANK[room]:
                bad.append(f"{path.relative_to(ROOT)} imports lens.{other}")
    assert not bad, bad


def test_one_version_string():
    import importlib.metadata
    import re

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    project = re.search(r"(?ms)^\[project\]$(.*?)^\[", pyproject)
    assert project and 'dynamic = ["version"]' in project.group(1)
    assert not re.search(r"(?m)^version\s*=", project.group(1)), "one version: lens/__init__"
    assert 'version = { attr = "lens.__version__" }' in pyproject
    assert importlib.metadata.version("lens") == lens.__version__
