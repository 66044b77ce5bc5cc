"""Fuzzing tl.load: a real saved trace, mutated every way a crafted or damaged file can
be, either fails with LoadError naming what is wrong or loads as a consistent trace.

Most cases go through ``lens.io.loading.from_bytes`` (every check ``tl.load`` makes but the
file system's), a few hundred through real files with every ``open`` audited.
Hypothesis runs derandomized, so CI sees the same cases on every run.
"""

from __future__ import annotations

import json
import re
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lens as tl
from lens.io import load, save
from lens.io.loading import from_bytes
from lens.io.schema import JSON_NAME, TENSORS_NAME
from tests.models import ZOO

ROOT = Path("fuzzed")
# Every LoadError names a file, a field path or an op.
WHERE = re.compile(r"trace\.json|tensors\.safetensors|tensors\.t\d|ops\[\d+\]|op #\d+|"
                   r"layers|module_calls|module_info|params|options|output|save_spec")
SCALARS: list[Any] = [
    None, True, False, 0, 1, -1, 3, 2 ** 31, 2 ** 63 - 1, -(2 ** 63), 2 ** 64 - 1, 10 ** 30,
    -(10 ** 30), 0.5, -0.0, 1e308, "", "x", "t0", "t1", "t999", "float32", "F32", "int64",
    "../../../etc/passwd", "/etc/passwd", "..", "C:\\Windows", "nan", "inf", "\x00",
    "torch.from_file", "torch.nn.functional.linear", "linear", "lens-trace", "cuda:0",
    "meta", {"$": "tuple", "v": []}, {"$": "ref", "op": 0}, {"$": "ref", "op": 10 ** 12},
    {"$": "tensor", "key": "t0"}, {"$": "tensor", "key": "../t0"}, {"$": "param", "name": ""},
    {"$": "float", "v": "nan"}, {"$": "size", "v": [10 ** 20]}, {"$": "dtype", "v": "os"},
    {"$": "slice", "v": [None, 10 ** 30, 0]}, {"$": "opaque", "type": "x", "repr": "y"},
    {"$": "dict", "v": {"a": {"$": "ellipsis"}}}, [], {}, [0], [-1], [2 ** 40, 2 ** 40],
    ["a"], {"a": 1}, [[[[[]]]]],
]
VALUES = st.recursive(
    st.sampled_from(SCALARS) | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=5)
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MESSAGES: set[str] = set()


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes, tl.Trace]:
    model, args, kwargs = ZOO["mha"].build()  # params, views of stored tensors, tuples
    tr = tl.trace(model, *args, input_kwargs=kwargs)
    out = save(tr, tmp_path_factory.mktemp("fuzz") / "t")
    return (out / JSON_NAME).read_text(), (out / TENSORS_NAME).read_bytes(), tr


def _outcome(text: bytes | str, blob: bytes, opened: Any = None) -> str:
    """Load; a LoadError must say where, a success must be a consistent trace."""
    try:
        tr = (from_bytes(text.encode() if isinstance(text, str) else text, bytearray(blob),
                         ROOT) if opened is None else load(opened))
    except tl.LoadError as e:
        msg = str(e)
        assert WHERE.search(msg), msg
        MESSAGES.add(msg)
        return "refused"
    _check_consistent(tr)
    return "loaded"


def _check_consistent(tr: tl.Trace) -> None:
    for i, op in enumerate(tr.ops):
        assert op.index == i and op.layer is not None and op in op.layer.passes
        assert all(p.call_index < op.call_index for p in op.parents)
        assert all(c.call_index > op.call_index for c in op.children)
        if op.payload is not None:
            assert tuple(op.payload.shape) == op.shape
        assert tr[op.label] == op
    assert str(tr)


# ---------------------------------------------------------------------- JSON documents
def _paths(v: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [here]
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        found += _paths(x, (*here, k))
    return found


def _mutate(doc: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if how == "delete":
        del parent[key]
    elif how == "insert" and isinstance(parent, list):
        parent.insert(key, value)
    elif how == "rename" and isinstance(parent, dict):
        parent[f"{key}_"] = parent.pop(key)
    else:
        parent[key] = value
    return doc


def test_fuzzed_trace_documents_and_tensor_files_fail_with_load_error_or_load_consistently(
        original):
    text, blob, _ = original
    doc = json.loads(text)
    paths = _paths(doc)
    outcomes: list[str] = []

    @settings(max_examples=700, **SETTINGS)
    @given(path=st.sampled_from(paths), how=st.sampled_from(["set", "set", "delete",
                                                            "insert", "rename"]),
           value=VALUES)
    def fields(path: tuple[Any, ...], how: str, value: Any) -> None:
        mutated = _mutate(json.loads(text), path, how, value)
        outcomes.append(_outcome(json.dumps(mutated), blob))

    @settings(max_examples=250, **SETTINGS)
    @given(kind=st.sampled_from(["number", "key", "string", "cut", "byte"]),
           nth=st.integers(0, 10 ** 6), what=st.sampled_from(_TEXT_EDITS))
    def texts(kind: str, nth: int, what: str) -> None:
        outcomes.append(_outcome(_edit_text(text, kind, nth, what), blob))

    @settings(max_examples=250, **SETTINGS)
    @given(edit=_tensor_edits(blob))
    def tensors(edit: bytes) -> None:
        outcomes.append(_outcome(text, edit))

    fields()
    texts()
    tensors()
    print(f"\nfuzzed {len(outcomes)} cases: {outcomes.count('refused')} refused, "
          f"{outcomes.count('loaded')} loaded; {len(MESSAGES)} distinct error messages")
    assert len(outcomes) >= 1000 and outcomes.count("refused") > 500
    assert len(MESSAGES) > 100


_TEXT_EDITS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "123456789012345678901234",
               "[" * 65 + "]" * 65, "[" * 900 + "]" * 900, "[" * 100000 + "]" * 100000,
               "{\"a\":" * 70 + "1" + "}" * 70,
               "../../etc/passwd", "/etc/passwd", "\\u0000", "\ud800", "0.1e-999999"]


def _edit_text(text: str, kind: str, nth: int, what: str) -> bytes:
    """``text`` with one token changed: a number, a key (duplicated), a string's content,
    a cut, or an invalid UTF-8 byte."""
    if kind == "cut":
        return text[:nth % len(text)].encode()
    if kind == "byte":
        pos = nth % len(text)
        return text[:pos].encode() + b"\xff\xfe" + text[pos:].encode()
    pattern = {"number": r"(?<![\w\"])-?\d+(\.\d+)?(?![\w\"])", "key": r'"\w+": ',
               "string": r'(?<=: )"[^"\\]*"'}[kind]
    hits = list(re.finditer(pattern, text))
    m = hits[nth % len(hits)]
    if kind == "key":
        new = f"{m.group()}{what if what[0] in '[{' else 'null'}, {m.group()}"
    elif kind == "string":
        new = json.dumps(what)
    else:
        new = what
    return (text[:m.start()] + new + text[m.end():]).encode("utf-8", "surrogatepass")


def _tensor_edits(blob: bytes) -> st.SearchStrategy[bytes]:
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    names = sorted(k for k in header if k != "__metadata__")
    lies = st.sampled_from([None, -1, 0, 1, 7, 2 ** 31, 2 ** 62, 10 ** 30, "3", 1.5, [], {}])

    def rebuild(head: dict[str, Any], fix_length: bool, shift: int) -> bytes:
        raw = json.dumps(head).encode()
        length = len(raw) if fix_length else (n + shift) % 2 ** 64
        return struct.pack("<Q", length) + raw + blob[8 + n:]

    @st.composite
    def header_edit(draw: st.DrawFn) -> bytes:
        head = json.loads(blob[8:8 + n])
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry", "extra"]))
        if field == "dtype":
            head[name]["dtype"] = draw(st.sampled_from(["F64", "I8", "BOOL", "F8_E4M3", "X",
                                                        "", 3, None, "BF16", "U64"]))
        elif field == "shape":
            shape = head[name]["shape"]
            i = draw(st.integers(0, len(shape)))
            head[name]["shape"] = draw(st.sampled_from([
                [*shape, 1], shape[:i], [*shape[:i], draw(lies), *shape[i + 1:]],
                [2 ** 32] * 4, [0], list(reversed(shape))]))
        elif field == "data_offsets":
            a, b = head[name]["data_offsets"]
            head[name]["data_offsets"] = draw(st.sampled_from([
                [a + 1, b + 1], [a, b + 4], [b, a], [0, 0], [a, 2 ** 63], [draw(lies), b],
                [a], [a, b, b], [-4, b]]))
        elif field == "entry":
            del head[name]
        else:
            head[draw(st.sampled_from(["x", "../y", "__metadata__"]))] = draw(VALUES)
        return rebuild(head, draw(st.booleans()), draw(st.integers(-16, 16)))

    cuts = st.integers(0, len(blob) - 1).map(lambda c: blob[:c])
    lengths = st.sampled_from([0, 1, n - 1, n + 1, len(blob), 2 ** 63, 2 ** 64 - 1]).map(
        lambda k: struct.pack("<Q", k) + blob[8:])
    flips = st.integers(8, 8 + n - 1).map(lambda i: blob[:i] + bytes([blob[i] ^ 0x55])
                                          + blob[i + 1:])
    return header_edit() | cuts | lengths | flips


# ---------------------------------------------------------------------- real files
_AUDIT: list[list[str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _AUDIT and event == "open" and isinstance(args[0], (str, bytes, Path)):
        _AUDIT[-1].append(str(args[0]))


def test_fuzzed_trace_folders_are_read_only_inside_themselves(original):
    text, blob, _ = original
    if _audit not in _INSTALLED:
        sys.addaudithook(_audit)  # permanent, but silent unless _AUDIT holds a list
        _INSTALLED.append(_audit)
    outcomes: list[str] = []

    @settings(max_examples=60, **SETTINGS)
    @given(kind=st.sampled_from(["number", "key", "string", "cut"]), nth=st.integers(0, 10 ** 6),
           what=st.sampled_from(_TEXT_EDITS), tensor_edit=_tensor_edits(blob) | st.just(blob))
    def folders(kind: str, nth: int, what: str, tensor_edit: bytes) -> None:
        with tempfile.TemporaryDirectory() as d:
            root = Path(d) / "t"
            root.mkdir()
            (root / JSON_NAME).write_bytes(_edit_text(text, kind, nth, what))
            (root / TENSORS_NAME).write_bytes(tensor_edit)
            _AUDIT.append([])
            try:
                outcomes.append(_outcome(b"", b"", opened=root))
            finally:
                opened = _AUDIT.pop()
            assert all(Path(p).parent == root for p in opened), opened
            assert len(opened) <= 2

    folders()
    assert len(outcomes) == 60 and outcomes.count("refused") > 30


_INSTALLED: list[Any] = []


def test_the_unmutated_trace_loads_from_bytes_like_the_original(original):
    text, blob, tr = original
    loaded = from_bytes(text.encode(), bytearray(blob), ROOT)
    assert [op.label for op in loaded.ops] == [op.label for op in tr.ops]
    for op, lop in zip(tr.ops, loaded.ops, strict=True):
        if isinstance(op.payload, torch.Tensor):
            assert torch.equal(op.payload, lop.payload), op.label
