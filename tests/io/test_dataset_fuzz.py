"""Fuzzing activation-dataset folders: every mutation of the manifest, of a shard's
safetensors header, or of the files themselves either loads exactly the original
activations (the mutation was harmless) or is refused with a ``LoadError`` that names the
field, the shard or the offending JSON token. Never another exception, never other data.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lens as tl
from lens.io import load_dataset_activations
from lens.io.dataset import MANIFEST
from tests.sweeps._kill import run_extract_job

SHARDS = [f"shard_{i:06d}.safetensors" for i in range(4)]
# The refusals of lens.io._safe.loads_json, one phrase each (each also names the JSON path).
PARSE_REFUSALS = ("is not JSON (lens writes non-finite", "levels deep; lens reads at most",
                  "is out of range", "not valid JSON", "appears twice", "overflows a float",
                  "is not UTF-8 text")


@dataclass
class Case:
    what: str
    apply: Any  # folder -> None
    names: tuple[str, ...]  # any of these in the message names the field


def _deep(n: int) -> Any:
    v: Any = 0
    for _ in range(n):
        v = [v]
    return v


BAD = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.sampled_from(["../manifest.json", "/etc/passwd", "a/b.safetensors", "..", "",
                     ".x.safetensors", "x\x00.safetensors", "C:\\x.safetensors",
                     "shard_000000.safetensors", "shard_000009.safetensors", "torch.int64",
                     "F64", "lens-activations"]),
    st.lists(st.integers(-3, 10), max_size=4), st.dictionaries(st.text(max_size=3),
                                                               st.integers(), max_size=2),
    st.integers(2, 60).map(_deep))


def _paths(m: dict[str, Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [(k,) for k in ("format", "version", "completed",
                                                 "spec_hash", "sites", "shards", "rows")]
    for name, site in m["sites"].items():
        out += [("sites", name), ("sites", name, "dtype"), ("sites", name, "shape")]
        out += [("sites", name, "shape", i) for i in range(len(site["shape"]))]
    for i, _ in enumerate(m["shards"]):
        out += [("shards", i)] + [("shards", i, k) for k in ("file", "index", "start", "stop")]
    return out


def _names(path: tuple[Any, ...]) -> tuple[str, ...]:
    if path[0] == "sites" and len(path) > 1:
        return (repr(path[1]),)
    if path[0] == "shards" and len(path) > 1:
        i = path[1]
        return (f"shards[{i}]", f"shards[{i + 1}]", SHARDS[i], "rows is")
    if path[0] == "completed":
        return ("completed",)
    return (path[0],)


def _set(m: Any, path: tuple[Any, ...], value: Any, delete: bool) -> None:
    for k in path[:-1]:
        m = m[k]
    if delete:
        del m[path[-1]]
    else:
        m[path[-1]] = value


def _rewrite_manifest(d: Path, fn: Any) -> None:
    m = json.loads((d / MANIFEST).read_text())
    fn(m)
    (d / MANIFEST).write_text(json.dumps(m))


@st.composite
def field_case(draw: Any, manifest: dict[str, Any]) -> Case:
    path = draw(st.sampled_from(_paths(manifest)))
    delete = draw(st.booleans()) and path[0] != "sites" or len(path) == 1 and draw(
        st.booleans())
    value = draw(BAD)
    return Case(f"{'delete' if delete else 'set'} {path} = {value!r:.40}",
                lambda d: _rewrite_manifest(d, lambda m: _set(m, path, value, delete)),
                _names(path) + PARSE_REFUSALS)  # NaN, huge ints, deep values: the token


@st.composite
def text_case(draw: Any) -> Case:
    kind = draw(st.sampled_from(["duplicate", "nan", "deep", "huge", "utf8", "cut", "empty"]))
    n = draw(st.integers(0, 10**6))

    def apply(d: Path) -> None:
        text = (d / MANIFEST).read_bytes()
        if kind == "duplicate":
            text = b'{"format": "lens-activations", ' + text[1:]
        elif kind == "nan":
            text = text.replace(b'"stop": 2', b'"stop": ' + [b"NaN", b"Infinity",
                                                            b"-Infinity"][n % 3], 1)
        elif kind == "deep":
            depth = 33 + n % 3000
            text = text.replace(b'"version": 1', b'"version": ' + b"[" * depth
                                + b"]" * depth, 1)
        elif kind == "huge":
            text = text.replace(b'"version": 1', b'"version": 1' + b"0" * (16 + n % 5000), 1)
        elif kind == "utf8":
            cut = n % len(text)
            text = text[:cut] + b"\xff\xfe" + text[cut:]
        elif kind == "cut":
            text = text[:n % (len(text) - 1)]
        else:
            text = b""
        (d / MANIFEST).write_bytes(text)
    return Case(f"text {kind} {n}", apply, PARSE_REFUSALS)


@st.composite
def header_case(draw: Any) -> Case:
    k = draw(st.integers(0, 3))
    target = draw(st.sampled_from(["length", "dtype", "shape", "data_offsets", "extra",
                                   "entry"]))
    value = draw(BAD)
    length = draw(st.integers(0, 2**64 - 1))

    def apply(d: Path) -> None:
        f = d / SHARDS[k]
        data = f.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        if target == "length":
            (f).write_bytes(struct.pack("<Q", length) + data[8:])
            return
        if target == "extra":
            header["extra"] = value
        elif target == "entry":
            header["fc1"] = value
        else:
            header["fc2"][target] = value
        blob = json.dumps(header).encode()
        f.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n:])
    return Case(f"header {SHARDS[k]} {target} {value!r:.40} {length}", apply, (SHARDS[k],))


@st.composite
def file_case(draw: Any) -> Case:
    k = draw(st.integers(0, 4))  # 4: the manifest
    kind = draw(st.sampled_from(["link out", "link in", "fifo", "folder", "missing",
                                 "truncated"]))
    cut = draw(st.integers(0, 600))
    name = SHARDS[k] if k < 4 else MANIFEST

    def apply(d: Path) -> None:
        p = d / name
        outside = d.parent / "outside"
        shutil.copy(p, outside)
        if kind == "truncated":
            os.truncate(p, min(cut, p.stat().st_size - 1))
            return
        p.unlink()
        if kind == "link out":
            p.symlink_to(outside)
        elif kind == "link in":
            p.symlink_to(d / (SHARDS[(k + 1) % 4]))
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind == "folder":
            p.mkdir()
    names = (name, "not valid JSON") if k == 4 else (name,)
    return Case(f"file {name} {kind} {cut}", apply, names)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good") / "d"
    run_extract_job(str(d))
    return d


def test_fuzzed_dataset_folders_load_exactly_or_are_refused_naming_the_field(good):
    reference = load_dataset_activations(good)
    manifest = json.loads((good / MANIFEST).read_text())
    cases = st.one_of(field_case(manifest), text_case(), header_case(), file_case())
    messages: set[str] = set()
    counted = {"refused": 0, "harmless": 0}

    @settings(max_examples=400, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(case=cases)
    def check(case: Case) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / "d"
            shutil.copytree(good, d)
            case.apply(d)
            try:
                got = load_dataset_activations(d)
            except tl.LoadError as e:
                text = str(e)
                assert any(n in text for n in case.names), (case.what, text)
                messages.add(text.replace(tmp, "<dir>"))
                counted["refused"] += 1
                return
            assert list(got) == list(reference), case.what
            assert all(torch.equal(got[k], reference[k]) for k in got), case.what
            counted["harmless"] += 1

    check()
    assert counted["refused"] >= 300 and len(messages) >= 50, (counted, len(messages))
