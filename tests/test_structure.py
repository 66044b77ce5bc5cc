"""The rooms of lens/ have no back doors: read from the source, not from running it.

Rules (each test below is one):

1. Imports point one way: errors <- selectors <- capture <- tracing <- replay <- (interventions,
   facets, draw, io, validation) <- bundles <- sweeps <- the top-level modules. A room may name
   a room to its right only (a) under ``if TYPE_CHECKING:`` (types, never run), or (b) in a
   *delegating method* of the object model (``lens/tracing``): a function whose body is its
   docstring, one ``from ..room import name`` of a public name, and one statement that calls
   ``name(self, ...)``. That is how ``trace.fork()`` reaches ``lens.interventions.forking``.
2. No string-keyed dispatch: no function named ``register*``, no ``call("name", ...)``, and
   no module-level dict, list or set that functions write into (a registry or a cache keyed
   by objects), except the few listed in ``GLOBAL_STATE`` with the reason.
3. No private reach-ins across rooms: ``x._name`` where ``_name`` is defined (an attribute,
   slot or method) only in other rooms' modules, and ``from ..room.mod import _name`` from
   another room, are errors.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import lens

ROOT = Path(lens.__file__).parent
RANK = {"errors": 0, "selectors": 1, "capture": 2, "tracing": 3, "replay": 4,
        "interventions": 5, "facets": 5, "draw": 5, "io": 5, "validation": 5,
        "bundles": 6, "sweeps": 7, "examples": 8, "cli": 8, "compat": 8, "demo": 9}

# Module-level mutable state written from functions, each with why it is not a registry.
GLOBAL_STATE = {
    ("capture/modes.py", "_INTERNED"): "interns immutable Mode values (a value cache, "
                                       "not keyed by any object)",
    ("capture/funcs.py", "_CACHE"): "facts about torch callables (immutable values keyed "
                                    "by torch's own functions, not by lens objects)",
    ("tracing/api.py", "_GC_PAUSED"): "how many traces run now, for pausing the garbage "
                                    "collector once across threads (guarded by a lock)",
    ("tracing/structure.py", "_CACHES"): "each model's postprocessed structures, weakly "
                                         "keyed by the model (attributes are never set on "
                                         "a user's model); bounded, guarded by a lock",
}


def _files() -> Iterator[tuple[Path, str, ast.Module]]:
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel == Path("__init__.py"):
            continue
        room = rel.parts[0].removesuffix(".py")
        if room in RANK:
            yield path, room, ast.parse(path.read_text())


def _target_rooms(path: Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    pkg = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    found: set[str] = set()
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = list(pkg[: len(pkg) - node.level + 1])
            parts = base + (node.module.split(".") if node.module else [])
            names = [parts] if node.module else [base + [a.name] for a in node.names]
        else:
            names = [node.module.split(".")] if node.module else []
    else:
        names = [a.name.split(".") for a in node.names]
    for parts in names:
        if parts[:1] == ["lens"] and len(parts) > 1:
            found.add(parts[1])
    return found


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                    "typing.TYPE_CHECKING"):
            inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def _delegating(fn: ast.FunctionDef, imp: ast.ImportFrom) -> bool:
    """docstring?, ``from ..room import name`` (public, one name), ``[return] name(self, ...)``."""
    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if len(body) != 2 or body[0] is not imp or len(imp.names) != 1:
        return False
    name = imp.names[0].asname or imp.names[0].name
    last = body[1]
    call = last.value if isinstance(last, (ast.Return, ast.Expr)) else None
    return (not name.startswith("_") and isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name) and call.func.id == name
            and bool(call.args) and isinstance(call.args[0], ast.Name)
            and call.args[0].id == "self")


def test_rooms_import_one_way():
    bad = []
    for path, room, tree in _files():
        typing_only = _type_checking_blocks(tree)
        methods = {id(stmt): fn for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
                   for stmt in fn.body}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in typing_only:
                continue
            for other in _target_rooms(path, node):
                if other not in RANK or other == room or RANK[other] < RANK[room]:
                    continue
                fn = methods.get(id(node))
                if (room == "tracing" and isinstance(node, ast.ImportFrom) and fn is not None
                        and _delegating(fn, node)):
                    continue
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports lens.{other}")
    assert not bad, bad


def test_the_delegation_rule_rejects_more_than_a_delegation():
    """The exception in rule 1 is narrow: logic after the import is a back door."""
    src = ("def fork(self):\n    from ..interventions import fork\n    return fork(self)\n"
           "def bad(self):\n    from ..interventions import fork\n    x = fork(self)\n"
           "    return x\n"
           "def private(self):\n    from ..interventions import _impl\n    return _impl(self)\n")
    fns = [n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)]
    verdicts = [_delegating(fn, fn.body[0]) for fn in fns]  # type: ignore[arg-type]
    assert verdicts == [True, False, False]


def _module_mutables(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 \
            else node.target if isinstance(node, ast.AnnAssign) else None
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if not isinstance(target, ast.Name) or value is None:
            continue
        if isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp)) or (
                isinstance(value, ast.Call) and ast.unparse(value.func).split(".")[-1] in
                ("dict", "list", "set", "WeakKeyDictionary", "WeakValueDictionary",
                 "WeakSet", "defaultdict", "OrderedDict")):
            names.add(target.id)
    return names


_WRITES = {"append", "add", "update", "setdefault", "pop", "extend", "clear", "discard",
           "__setitem__", "insert"}


def _written_in_functions(tree: ast.Module, names: set[str]) -> set[str]:
    written = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) \
                    else [node.target]
                for t in targets:
                    if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) \
                            and t.value.id in names:
                        written.add(t.value.id)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in _WRITES and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id in names:
                written.add(node.func.value.id)
    return written


def test_no_string_dispatch_and_no_registries():
    bad = []
    for path, _room, tree in _files():
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and node.name.lstrip("_").startswith("register"):
                bad.append(f"{rel}:{node.lineno} defines {node.name} (a registry)")
            if isinstance(node, ast.Call):
                fname = ast.unparse(node.func).split(".")[-1]
                first = node.args[0] if node.args else None
                if fname in ("call", "dispatch", "register") and isinstance(
                        first, ast.Constant) and isinstance(first.value, str):
                    bad.append(f"{rel}:{node.lineno} dispatches on the string {first.value!r}")
        for name in sorted(_written_in_functions(tree, _module_mutables(tree))):
            if (rel, name) not in GLOBAL_STATE:
                bad.append(f"{rel}: module-level {name} is written by functions (a registry "
                           "or a cache; keep it on the object it describes)")
    assert not bad, bad


def _defined_private_names(tree: ast.Module) -> set[str]:
    """Private attributes a module defines: ``self._x =``, slots, methods, class fields."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            found.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.add(stmt.name)
                elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    found.add(stmt.target.id)
                elif isinstance(stmt, ast.Assign):
                    for t in stmt.targets:
                        if isinstance(t, ast.Name) and t.id == "__slots__" \
                                and isinstance(stmt.value, (ast.Tuple, ast.List)):
                            found.update(e.value for e in stmt.value.elts
                                         if isinstance(e, ast.Constant))
                        elif isinstance(t, ast.Name):
                            found.add(t.id)
    return {n for n in found if n.startswith("_") and not n.startswith("__")}


def test_no_room_reads_another_rooms_private_attributes():
    files = list(_files())
    defined: dict[str, set[str]] = {}
    for _path, room, tree in files:
        defined.setdefault(room, set()).update(_defined_private_names(tree))
    bad = []
    for path, room, tree in files:
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and node.attr not in defined[room]:
                owners = sorted(r for r, names in defined.items() if node.attr in names)
                if owners:
                    bad.append(f"{rel}:{node.lineno} reads .{node.attr} of {'/'.join(owners)}")
            if isinstance(node, ast.ImportFrom):
                rooms = _target_rooms(path, node) - {room}
                private = [a.name for a in node.names if a.name.startswith("_")]
                if rooms and private:
                    bad.append(f"{rel}:{node.lineno} imports {private} from lens.{rooms.pop()}")
    assert not bad, "\n".join(bad)


def test_no_module_is_shadowed_by_a_name_its_package_exports():
    """``import lens.x.y`` and ``lens.x.y`` reach the same module: no package exports a
    function (or anything else) under the name of one of its modules (``tl.trace`` is the
    function; the object model is ``lens.tracing``)."""
    import importlib
    import pkgutil

    shadowed = []

    def walk(pkg: object) -> None:
        for info in pkgutil.iter_modules(pkg.__path__):  # type: ignore[attr-defined]
            full = f"{pkg.__name__}.{info.name}"  # type: ignore[attr-defined]
            mod = importlib.import_module(full)
            if getattr(pkg, info.name, None) is not mod:
                shadowed.append(full)
            if info.ispkg:
                walk(mod)

    walk(lens)
    assert not shadowed, shadowed


def test_exceptions_and_warnings_are_defined_in_errors_only():
    """One place lists everything lens raises or warns (``lens.errors``); rooms import
    their exceptions from there. (``Halt`` is the engine's private control flow.)"""
    found = []
    for path, room, tree in _files():
        if room == "errors":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(b, ast.Name) and b.id.endswith(("Error", "Warning", "Exception"))
                    for b in node.bases):
                found.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert found == ["capture/engine.py:Halt"], found


def test_required_dependencies_are_exactly_what_lens_imports():
    """pyproject's required dependencies are the third-party packages lens/ imports (the
    extras are imported through lens._optional.require, so they are not counted)."""
    import re
    import sys

    pyproject = (ROOT.parent / "pyproject.toml").read_text()
    block = re.search(r"(?ms)^dependencies = \[(.*?)\]", pyproject)
    assert block is not None
    required = {re.split(r"[<>=\[ ]", d.strip().strip('",'))[0]
                for d in block.group(1).splitlines() if d.strip()}
    imported = set()
    for _path, _room, tree in _files():
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                     and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "lens":
                    imported.add(top)
    assert imported - {"matplotlib", "transformers", "ray", "pyarrow"} == required, imported
