"""Reading an activation dataset's files as untrusted input.

Every file is opened without following links and without blocking (a FIFO cannot stall
the reader), must be a regular file, and is read whole only after its size is checked.
JSON is parsed with a depth limit, without NaN/Infinity, duplicate keys or huge integers.
Safetensors headers are checked (dtypes, shapes, offsets within the file and consistent)
before any tensor is built, so no allocation follows a number that was not checked.
Every refusal is a ``LoadError`` naming the file and the field.

(The trace loader has the same needs; ``lens/io/_safe.py`` may later serve both.)
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import LoadError

MAX_JSON_BYTES = 256 * 2**20
MAX_DEPTH = 32
MAX_INT = 2**53
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
TORCH_DTYPES = {str(d): d for d in _ST_DTYPES.values()}
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(rb"[\[\]{}]")


def read_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file (no link, FIFO or device), at most ``limit`` of them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LoadError(f"{path} is missing.") from None
    except OSError as e:  # ELOOP: a symbolic link
        raise LoadError(f"{path} cannot be opened as a plain file ({e.strerror}); links "
                        "are not followed.") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LoadError(f"{path} is not a regular file; refusing to read it.")
        if st.st_size > limit:
            raise LoadError(f"{path} is {st.st_size} bytes, over the limit of {limit}.")
        chunks, left = [], st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 2**24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_json(data: bytes, where: str) -> Any:
    depth = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b"", data)):
        depth += 1 if bracket in b"[{" else -1
        if depth > MAX_DEPTH:
            raise LoadError(f"{where}: nested deeper than {MAX_DEPTH} levels.")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                          parse_constant=_no_constant, parse_int=_bounded_int,
                          parse_float=_finite_float)
    except LoadError as e:
        raise LoadError(f"{where}: {e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise LoadError(f"{where} is not valid JSON: {e}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise LoadError(f"key {k!r:.60} appears twice")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise LoadError(f"{name} is not allowed (not a JSON number)")


def _bounded_int(text: str) -> int:
    if len(text) > 17 or abs(int(text)) > MAX_INT:
        raise LoadError(f"integer {text[:20]}... is out of range")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise LoadError(f"number {text[:20]} is not finite")
    return value


def int_field(x: Any, field: str, where: str, low: int = 0) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not low <= x <= MAX_INT:
        raise LoadError(f"{where}: {field} must be an integer in {low}..2**53, got "
                        f"{_show(x)}.")
    return x


def shape_field(x: Any, field: str, where: str) -> list[int]:
    if not isinstance(x, list) or len(x) > 16:
        raise LoadError(f"{where}: {field} must be a list of at most 16 sizes, got "
                        f"{_show(x)}.")
    return [int_field(v, f"{field}[{i}]", where) for i, v in enumerate(x)]


def plain_name(x: Any, field: str, where: str) -> str:
    """A file name inside the folder: no separators, no '..', no hidden or odd names."""
    ok = (isinstance(x, str) and 0 < len(x) <= 200 and re.fullmatch(r"[\w.\-]+", x)
          and not x.startswith(".") and x.endswith(".safetensors"))
    if not ok:
        raise LoadError(f"{where}: {field} must be a plain '*.safetensors' file name inside "
                        f"the folder, got {_show(x)}.")
    return str(x)


def _show(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def read_safetensors(path: Path, expect: dict[str, tuple[str, Sequence[int]]],
                     every: Sequence[str]) -> dict[str, torch.Tensor]:
    """The tensors ``expect`` names (name -> (torch dtype string, shape)) from a shard whose
    header is checked against the file before anything is built; the shard must hold
    exactly the tensors ``every`` names."""
    data = read_file(path, 2**62)
    where = str(path)
    if len(data) < 8:
        raise LoadError(f"{where}: shorter than a safetensors header (truncated?).")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8 or n > 100 * 2**20:
        raise LoadError(f"{where}: header length {n} exceeds the file (truncated?).")
    header = parse_json(data[8:8 + n], f"{where} header")
    if not isinstance(header, dict):
        raise LoadError(f"{where}: header is not a JSON object.")
    body = len(data) - 8 - n
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        spans.append(_check_entry(name, entry, body, where))
    held = sorted(k for k in header if k != "__metadata__")
    if held != sorted(every):
        raise LoadError(f"{where}: holds sites {_show(held)} but the manifest lists "
                        f"{_show(sorted(every))}.")
    spans.sort()
    for (_, e0, n0), (b1, _, n1) in zip(spans, spans[1:], strict=False):
        if b1 < e0:
            raise LoadError(f"{where}: tensors {n0!r} and {n1!r} overlap (data_offsets).")
    out = {}
    for name, (dtype, shape) in expect.items():
        entry = header.get(name)
        if entry is None:
            raise LoadError(f"{where}: site {name!r} is missing from this shard.")
        if str(_ST_DTYPES[entry["dtype"]]) != dtype or list(entry["shape"]) != list(shape):
            raise LoadError(
                f"{where}: site {name!r} is {entry['dtype']} {entry['shape']}, but the "
                f"manifest says {dtype} {list(shape)} for this shard.")
        b, e = entry["data_offsets"]
        raw = bytearray(data[8 + n + b:8 + n + e])
        t = (torch.frombuffer(raw, dtype=_ST_DTYPES[entry["dtype"]]) if raw
             else torch.empty(0, dtype=_ST_DTYPES[entry["dtype"]]))
        out[name] = t.reshape(shape)
    return out


def _check_entry(name: str, entry: Any, body: int, where: str) -> tuple[int, int, str]:
    field = f"header[{name!r:.40}]"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise LoadError(f"{where}: {field} must hold exactly dtype, shape, data_offsets.")
    if not isinstance(entry["dtype"], str) or entry["dtype"] not in _ST_DTYPES:
        raise LoadError(f"{where}: {field}.dtype {_show(entry['dtype'])} is not supported.")
    shape = shape_field(entry["shape"], f"{field}.shape", where)
    offsets = entry["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise LoadError(f"{where}: {field}.data_offsets must be [begin, end].")
    b, e = (int_field(v, f"{field}.data_offsets", where) for v in offsets)
    numel = 1
    for s in shape:
        numel *= s
    size = numel * _ST_DTYPES[entry["dtype"]].itemsize
    if not b <= e <= body or e - b != size:
        raise LoadError(f"{where}: {field}.data_offsets [{b}, {e}] do not hold {size} bytes "
                        f"within the {body}-byte data area.")
    return b, e, name


# ---------------------------------------------------------------------------- manifest
FORMAT = "lens-activations"
VERSION = 1
MAX_SHARDS = 10**6


def check_manifest(m: Any, where: str) -> dict[str, Any]:
    """The manifest's fields, each checked by name; shard rows must tile 0..N exactly."""
    if not isinstance(m, dict):
        raise LoadError(f"{where} is not a lens activation manifest (a JSON object).")
    if m.get("format") != FORMAT:
        raise LoadError(f"{where}: format is {_show(m.get('format'))}; expected {FORMAT!r} "
                        "(not a lens activation manifest).")
    if m.get("version") != VERSION or isinstance(m.get("version"), bool):
        raise LoadError(f"{where}: version is {_show(m.get('version'))}; this lens reads "
                        f"version {VERSION}.")
    for key, kind in (("completed", bool), ("spec_hash", str), ("sites", dict),
                      ("shards", list)):
        if not isinstance(m.get(key), kind):
            raise LoadError(f"{where}: {key} must be a {kind.__name__}, got "
                            f"{_show(m.get(key))}.")
    for name, site in m["sites"].items():
        field = f"sites[{name!r:.40}]"
        if not (isinstance(site, dict) and isinstance(site.get("dtype"), str)
                and site["dtype"] in TORCH_DTYPES):
            raise LoadError(f"{where}: {field}.dtype must be one of {sorted(TORCH_DTYPES)}, "
                            f"got {_show(site)}.")
        shape_field(site.get("shape"), f"{field}.shape", where)
    if m["shards"] and not m["sites"]:
        raise LoadError(f"{where}: sites is empty but {len(m['shards'])} shards are listed.")
    if len(m["shards"]) > MAX_SHARDS:
        raise LoadError(f"{where}: shards lists {len(m['shards'])} entries, over {MAX_SHARDS}.")
    _check_shards(m["shards"], where)
    end = m["shards"][-1]["stop"] if m["shards"] else 0
    if ("rows" in m or m["completed"]) and int_field(m.get("rows"), "rows", where) != end:
        raise LoadError(f"{where}: rows is {m['rows']} but the listed shards end at row "
                        f"{end} (a shard entry missing or added?).")
    return m


def _check_shards(shards: list[Any], where: str) -> None:
    files: set[str] = set()
    for i, s in enumerate(shards):
        field = f"shards[{i}]"
        if not isinstance(s, dict):
            raise LoadError(f"{where}: {field} must be an object, got {_show(s)}.")
        name = plain_name(s.get("file"), f"{field}.file", where)
        if name in files:
            raise LoadError(f"{where}: {field}.file: shard {name} is listed twice.")
        files.add(name)
        if int_field(s.get("index"), f"{field}.index", where) != i:
            raise LoadError(f"{where}: {field}.index of shard {name} is {s['index']}; "
                            f"expected {i} (shards listed in order, none missing).")
        start = int_field(s.get("start"), f"{field}.start", where)
        stop = int_field(s.get("stop"), f"{field}.stop", where)
        previous = shards[i - 1]["stop"] if i else 0
        if start != previous:
            gap = "a gap" if start > previous else "an overlap"
            raise LoadError(f"{where}: {field}.start of shard {name} is {start} but the rows "
                            f"before it end at {previous} ({gap} in the row ranges).")
        if stop <= start:
            raise LoadError(f"{where}: {field}.stop of shard {name} is {stop}, not after its "
                            f"start {start}.")
