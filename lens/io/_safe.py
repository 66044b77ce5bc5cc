"""Reading untrusted files without trusting them: the helpers every lens loader shares.

The one home of safe reading in lens: trace folders (``load.py``, ``_tensors.py``),
activation datasets (``_dataset_files.py``) and sweep result stores (``sweeps/store.py``)
all read through it. The API (everything raises :class:`LoadError` naming the file and
the field):

``plain_name(name, where)``
    A file name taken from a file must be one plain path component: no ``/``, ``\\``,
    ``..``, NUL, drive or absolute path. Returns it unchanged.
``read_regular(root, name, where, max_bytes=...)``
    The bytes of ``root/name``. ``root`` may itself be a symlink (the user chose it), but
    ``name`` must be a regular file inside it: a symlink, FIFO, socket, device or folder in
    its place is refused without being followed or opened in a blocking way
    (``os.lstat``, then ``O_NOFOLLOW | O_NONBLOCK`` and ``fstat`` before any read).
``loads_json(data, where, max_depth=MAX_JSON_DEPTH, ints=INT64, nonfinite=False)``
    Strict JSON: UTF-8 only, nesting refused past ``max_depth`` *before* parsing (so never
    a ``RecursionError``), duplicate keys, ``NaN``/``Infinity`` literals (unless
    ``nonfinite``: a file whose writer emits them for real values), numbers that
    overflow a float and integers outside ``ints`` refused, each with its JSON path.
    ``INT64`` (int64 and uint64 values) suits files holding user values; ``SAFE_INTS``
    (+-2**53, exact in every JSON reader) suits files holding only counts and sizes.
``safetensors_header(data, where)`` / ``read_safetensors(data, where)``
    The validated entries, or the tensors, of a safetensors file held in ``data``. The
    header is validated by lens first: its length is bounded and inside the file, each
    dtype is known, each shape's element count times the item size equals its byte span,
    the spans tile the data section exactly. Only then are tensors made (``tensors_at``
    for some of the entries), as fresh CPU allocations.

Nothing here allocates in proportion to a number read from a file before checking it
against the size of that file.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import stat
import sys
from collections.abc import Iterator
from io import BufferedReader
from pathlib import Path
from typing import Any

import torch

from ..errors import LoadError

MAX_JSON_DEPTH = 64
MAX_FILE_BYTES = 1 << 40  # refuse anything larger than 1 TiB outright
MAX_HEADER_BYTES = 100 << 20  # as safetensors itself
INT64 = (-(1 << 63), (1 << 64) - 1)  # int64 and uint64 values, bounds included
SAFE_INTS = (-(1 << 53), 1 << 53)  # integers every JSON reader holds exactly

_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


# ---------------------------------------------------------------------------- files
def plain_name(name: Any, where: str) -> str:
    """``name`` if it is a single plain file name, else :class:`LoadError`."""
    if (not isinstance(name, str) or not name or len(name) > 255 or name in (".", "..")
            or any(c in name for c in "/\\\0:") or Path(name).is_absolute()):
        raise LoadError(f"{where}: {name!r:.80} is not a plain file name inside the folder "
                        "(no paths, '..' or absolute names).")
    return name


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file"


@contextlib.contextmanager
def _open_regular(root: Path, name: str, where: str) -> Iterator[BufferedReader]:
    """``root/name`` opened for reading, if it is a regular file (never followed)."""
    path = root / plain_name(name, where)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise LoadError(f"{path} is missing.") from None
    except OSError as e:
        raise LoadError(f"{path} cannot be examined: {e.strerror}.") from None
    if not stat.S_ISREG(mode):
        raise LoadError(f"{path} is {_kind(mode)}, so it cannot be opened as a plain file: "
                        "lens refuses to follow or open it. Replace it with the file lens "
                        "wrote.")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:  # e.g. ELOOP: it became a link after the check
        raise LoadError(f"{path} cannot be opened as a plain file ({e.strerror}); links "
                        "are not followed.") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise LoadError(f"{path} is {_kind(st.st_mode)}, not a regular file.")
        yield f


def read_regular(root: Path, name: str, where: str,
                 max_bytes: int = MAX_FILE_BYTES) -> bytearray:
    """The whole content of the regular file ``root/name`` (see the module docstring)."""
    with _open_regular(root, name, where) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise LoadError(f"{root / name} is {size} bytes, more than the {max_bytes} "
                            "lens reads from such a file.")
        buf = bytearray(size)
        got = f.readinto(buf)
        del buf[got:]  # the file shrank while we read: parsing reports it truncated
        return buf


# ---------------------------------------------------------------------------- JSON
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """How deeply brackets nest in ``text`` (strings skipped), without recursion."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


class _Bad:
    """A value refused while parsing; reported with its JSON path after the parse."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def loads_json(data: bytes | bytearray | str, where: str, max_depth: int = MAX_JSON_DEPTH,
               ints: tuple[int, int] = INT64, nonfinite: bool = False) -> Any:
    """Strictly parsed JSON (see the module docstring)."""
    if isinstance(data, (bytes, bytearray)):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LoadError(f"{where} is not UTF-8 text: {e}") from None
    else:
        text = data
    depth = json_depth(text)
    if depth > max_depth:
        raise LoadError(f"{where} nests {depth} levels deep; lens reads at most {max_depth}.")
    bad: list[_Bad] = []

    def refuse(why: str) -> _Bad:
        bad.append(_Bad(why))
        return bad[-1]

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            out[k] = refuse(f"the key {k!r:.60} appears twice in one object") if k in out else v
        return out

    def integer(s: str) -> Any:
        v = int(s) if len(s) <= 21 else None  # never int() of a huge digit string
        if v is None or not ints[0] <= v <= ints[1]:
            fits = "64 bits" if ints == INT64 else f"{ints[0]}..{ints[1]}"
            return refuse(f"the integer {s:.30} is out of range (does not fit in {fits})")
        return v

    def number(s: str) -> Any:
        v = float(s)
        return v if math.isfinite(v) else refuse(f"{s:.30} overflows a float")

    def constant(s: str) -> Any:
        if nonfinite:
            return float(s)
        return refuse(f"{s} is not JSON (lens writes non-finite floats as strings)")

    import json

    try:
        doc = json.loads(text, object_pairs_hook=pairs, parse_int=integer,
                         parse_float=number, parse_constant=constant)
    except json.JSONDecodeError as e:
        raise LoadError(f"{where} is not valid JSON: {e}") from None
    except RecursionError:  # cannot happen after the depth check; never let it escape
        raise LoadError(f"{where} nests too deeply.") from None
    if bad:
        path, why = _first_bad(doc, "")
        raise LoadError(f"{where}{path}: {why}.")
    return doc


def _first_bad(v: Any, path: str) -> tuple[str, str]:
    """JSON path and reason of the first refused value (depth is bounded already)."""
    if isinstance(v, _Bad):
        return path, v.why
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        found = _first_bad(x, f"{path}.{k}" if isinstance(k, str) else f"{path}[{k}]")
        if found[1]:
            return found
    return path, ""


# ---------------------------------------------------------------------------- safetensors
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
    "I32": torch.int32, "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16,
    "F32": torch.float32, "F64": torch.float64, "C64": torch.complex64,
    **{k: v for k, v in (("U16", getattr(torch, "uint16", None)),
                         ("U32", getattr(torch, "uint32", None)),
                         ("U64", getattr(torch, "uint64", None)),
                         ("F8_E4M3", getattr(torch, "float8_e4m3fn", None)),
                         ("F8_E5M2", getattr(torch, "float8_e5m2", None))) if v is not None},
}
SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_MAX_DIMS = 64


Entry = tuple[torch.dtype, list[int], int, int]


def safetensors_header(data: bytes | bytearray, where: str) -> dict[str, Entry]:
    """Validated entries ``name -> (dtype, shape, start, end)`` of a safetensors file;
    ``start``/``end`` are offsets into ``data`` itself."""
    if len(data) < 8:
        raise LoadError(f"{where} is truncated: {len(data)} bytes, less than a header.")
    n = int.from_bytes(data[:8], "little")
    return _header(data[8:8 + n], n, len(data), where)


def _header(head_bytes: bytes | bytearray, n: int, size: int, where: str) -> dict[str, Entry]:
    """Entries of a header of ``n`` bytes (``head_bytes``) in a file of ``size`` bytes."""
    if n > min(MAX_HEADER_BYTES, size - 8) or len(head_bytes) != n:
        raise LoadError(f"{where}: header length {n} exceeds the file ({size} bytes) "
                        "or the safetensors limit; the file is truncated or corrupt.")
    head = loads_json(head_bytes, f"{where} header", max_depth=3)
    if not isinstance(head, dict):
        raise LoadError(f"{where} header: expected an object, got {type(head).__name__}.")
    base = 8 + n
    entries: dict[str, Entry] = {}
    for name, e in head.items():
        if name == "__metadata__":
            if not isinstance(e, dict) or not all(isinstance(x, str) for x in e.values()):
                raise LoadError(f"{where} header.__metadata__: expected string values.")
            continue
        entries[name] = _entry(e, f"{where} header.{name}", base)
    end = base
    for name, (_, _, start, stop) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
        if start != end:
            raise LoadError(f"{where} header.{name}: data starts at {start - base}, expected "
                            f"{end - base} (tensors must tile the data section).")
        end = stop
    if end != size:
        raise LoadError(f"{where}: the tensors cover {end - base} data bytes but the file "
                        f"holds {size - base}; it is truncated or padded.")
    return entries


def file_header(root: Path, name: str, where: str) -> tuple[dict[str, Entry], int]:
    """The validated entries of the safetensors file ``root/name`` and its size, reading
    only its header (a shard read lazily, tensor by tensor, with :func:`read_entry`)."""
    with _open_regular(root, name, where) as f:
        size = os.fstat(f.fileno()).st_size
        first = f.read(8)
        if len(first) < 8:
            raise LoadError(f"{where} is truncated: {size} bytes, less than a header.")
        n = int.from_bytes(first, "little")
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise LoadError(f"{where}: header length {n} exceeds the file ({size} bytes) "
                            "or the safetensors limit; the file is truncated or corrupt.")
        return _header(f.read(n), n, size, where), size


def read_entry(root: Path, name: str, entry: Entry, size: int, key: str,
               where: str) -> torch.Tensor:
    """One tensor of ``root/name`` by its validated ``entry``; the file must still be the
    ``size`` bytes its header was validated against."""
    dtype, shape, start, stop = entry
    with _open_regular(root, name, where) as f:
        now = os.fstat(f.fileno()).st_size
        if now != size:
            raise LoadError(f"{where} changed size ({size} -> {now} bytes) since lens read "
                            "its header; load the trace again.")
        f.seek(start)
        buf = bytearray(stop - start)
        got = f.readinto(buf)
    if got != len(buf):
        raise LoadError(f"{where} is truncated at tensor {key!r}.")
    return tensors_at(buf, {key: (dtype, shape, 0, len(buf))}, where)[key]


def _entry(e: Any, where: str, base: int) -> Entry:
    if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
        raise LoadError(f"{where}: expected dtype, shape and data_offsets.")
    dtype = SAFETENSORS_DTYPES.get(e["dtype"]) if isinstance(e["dtype"], str) else None
    if dtype is None:
        raise LoadError(f"{where}.dtype: unknown dtype {e['dtype']!r:.40}.")
    shape, offs = e["shape"], e["data_offsets"]
    if (not isinstance(shape, list) or len(shape) > _MAX_DIMS
            or not all(type(s) is int and s >= 0 for s in shape)):
        raise LoadError(f"{where}.shape: expected at most {_MAX_DIMS} sizes >= 0.")
    if (not isinstance(offs, list) or len(offs) != 2
            or not all(type(o) is int and o >= 0 for o in offs) or offs[0] > offs[1]):
        raise LoadError(f"{where}.data_offsets: expected [start, end] with start <= end.")
    span = offs[1] - offs[0]
    if math.prod(shape) * dtype.itemsize != span:
        raise LoadError(f"{where}: shape {shape} of {e['dtype']} needs "
                        f"{math.prod(shape) * dtype.itemsize} bytes, but its span is {span}.")
    return dtype, shape, base + offs[0], base + offs[1]


def read_safetensors(data: bytearray, where: str) -> dict[str, torch.Tensor]:
    """Tensors of the safetensors file held in ``data``, each a fresh CPU allocation."""
    return tensors_at(data, safetensors_header(data, where), where)


def tensors_at(data: bytearray, entries: dict[str, Entry], where: str) -> dict[str, torch.Tensor]:
    """The tensors of ``entries`` (validated by ``safetensors_header(data, ...)``)."""
    out: dict[str, torch.Tensor] = {}
    for name, (dtype, shape, start, end) in entries.items():
        if start == end:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(data, dtype=torch.uint8, count=end - start,
                                offset=start).clone()
        if sys.byteorder != "little" and dtype.itemsize > 1:
            flat = flat.view(-1, dtype.itemsize).flip(1).reshape(-1)
        if dtype == torch.bool and int(flat.max()) > 1:
            raise LoadError(f"{where} header.{name}: a bool tensor holds bytes other than 0/1.")
        out[name] = flat.view(dtype).reshape(shape)
    return out
