"""lens.selectors is pure Python: it imports only the standard library and lens.errors,
and nothing in it can run as a script (it would shadow the stdlib's ``selectors``)."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import pytest

import lens.selectors as tl

ROOT = Path(tl.__file__).parent
FILES = sorted(ROOT.glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_imports_only_stdlib_errors_and_itself(path: Path) -> None:
    for name in imported_modules(path):
        top = name.partition(".")[0]
        allowed = (
            top in sys.stdlib_module_names
            or name == "lens.errors"
            or name == "lens.selectors"
            or name.startswith("lens.selectors.")
        )
        assert allowed, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_main_blocks(path: Path) -> None:
    assert "__main__" not in path.read_text()


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name, v in vars(tl).items()  # submodules are not exported names
              if not name.startswith("_") and not isinstance(v, types.ModuleType)}
    public -= {"annotations"}
    assert sorted(public) == sorted(tl.__all__)
    assert len(tl.__all__) == len(set(tl.__all__))
