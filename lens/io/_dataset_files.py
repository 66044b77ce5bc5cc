"""An activation dataset's files, read as untrusted input through :mod:`lens.io._safe`.

Opening (no links, FIFOs or devices), strict JSON and safetensors header validation are
``_safe``'s; this module adds what is particular to datasets: the manifest's fields, and
that every shard holds exactly the sites, dtypes and shapes the manifest lists. Every
refusal is a ``LoadError`` naming the file and the field (or the shard and the site).

Integers: the manifest holds only counts, indices and sizes, so it is parsed with
``SAFE_INTS`` (at most 2**53, exact in every JSON reader). Shard headers are parsed as
safetensors defines them (64-bit sizes and offsets), then checked against the file's size
and the manifest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import LoadError
from ._safe import (
    SAFE_INTS,
    SAFETENSORS_DTYPES,
    SAFETENSORS_NAMES,
    loads_json,
    read_regular,
    safetensors_header,
    tensors_at,
)

MAX_JSON_BYTES = 256 * 2**20
MAX_DEPTH = 32  # a manifest nests 4 deep
MAX_INT = SAFE_INTS[1]
TORCH_DTYPES = {str(d): d for d in SAFETENSORS_DTYPES.values()}


def read_manifest_json(root: Path, name: str) -> Any:
    """The manifest ``root/name`` parsed (not yet checked: see ``check_manifest``)."""
    data = read_regular(root, name, str(root / name), MAX_JSON_BYTES)
    return loads_json(data, str(root / name), max_depth=MAX_DEPTH, ints=SAFE_INTS)


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


def shard_name(x: Any, field: str, where: str) -> str:
    """A shard file name inside the folder: no separators, no '..', no hidden or odd names."""
    ok = (isinstance(x, str) and 0 < len(x) <= 200 and re.fullmatch(r"[\w.\-]+", x)
          and not x.startswith(".") and x.endswith(".safetensors"))
    if not ok:
        raise LoadError(f"{where}: {field} must be a plain '*.safetensors' file name inside "
                        f"the folder, got {_show(x)}.")
    return str(x)


def _show(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def read_shard(root: Path, name: str, expect: dict[str, tuple[str, Sequence[int]]] | None,
               every: Sequence[str] | None) -> dict[str, torch.Tensor]:
    """Tensors of the shard ``root/name``, its header validated before any is built.

    ``every``: the sites the shard must hold, exactly (None: any). ``expect``: the ones to
    build, name -> (torch dtype string, shape), each checked against the header (None:
    all of them, unchecked)."""
    where = str(root / name)
    data = read_regular(root, name, where)
    entries = safetensors_header(data, where)
    if every is not None and sorted(entries) != sorted(every):
        raise LoadError(f"{where}: holds sites {_show(sorted(entries))} but the manifest "
                        f"lists {_show(sorted(every))}.")
    if expect is None:
        return tensors_at(data, entries, where)
    for site, (dtype, shape) in expect.items():
        if site not in entries:
            raise LoadError(f"{where}: site {site!r} is missing from this shard.")
        got, got_shape = entries[site][:2]
        if str(got) != dtype or got_shape != list(shape):
            raise LoadError(
                f"{where}: site {site!r} is {SAFETENSORS_NAMES[got]} {got_shape}, but the "
                f"manifest says {dtype} {list(shape)} for this shard.")
    return tensors_at(data, {site: entries[site] for site in expect}, where)


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
        name = shard_name(s.get("file"), f"{field}.file", where)
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
