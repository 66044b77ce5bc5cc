"""A result store that survives crashes: one JSON line per finished row, plus the spec.

Rows are appended (and fsynced) batch by batch, so a killed sweep loses at most the batch
in flight; re-running the same sweep against the same folder computes only the cells
whose rows are missing. A damaged line (a torn write, garbage, a value that is not a
row) is skipped and reported, and its cell is computed again; the file is never cut, so
no valid row is ever lost. Each append starts on a fresh line, so a torn write cannot
swallow the next row. A different sweep pointed at the folder is refused; one whose metric
or action code changed is refused unless ``resume='force'``. Writers hold the folder's
lock (``lens.io._lock.FolderLock``) while they use a store.

Both files are read as untrusted input through ``lens.io._safe`` (no links or FIFOs, strict
JSON). Rows may hold NaN/Infinity (a metric can be non-finite and ``json.dumps`` writes
them so); the spec may not. Integers may use 64 bits in both (they are user values).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from ..errors import LensError, LoadError, SpecMismatchError
from ..io._safe import loads_json, read_regular
from .spec import CODE_KEYS

SPEC_FILE = "spec.json"
ROWS_FILE = "rows.jsonl"
MAX_SPEC_BYTES = 16 * 2**20
Resume = bool | Literal["force"]
log = logging.getLogger("lens.sweeps")


class ResultStore:
    def __init__(self, directory: str | os.PathLike[str], description: dict[str, Any],
                 digest: str, resume: Resume = True) -> None:
        if resume not in (True, False, "force"):
            raise LensError(f"resume={resume!r}: use True, False or 'force'.")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.digest = digest
        self.damaged: list[str] = []
        spec_path = self.dir / SPEC_FILE
        has_rows = self.rows_path.exists() and self.rows_path.stat().st_size > 0
        if resume is False and (has_rows or spec_path.exists()):
            raise SpecMismatchError(
                f"{self.dir} already holds a sweep and resume=False: point out= at a new "
                "folder, or pass resume=True to complete that sweep.")
        if spec_path.exists():
            old = _read_spec(spec_path)
            if old["digest"] == digest:
                return
            _refuse_or_force(self.dir, old, description, digest, resume)
        elif has_rows and resume != "force":
            raise SpecMismatchError(
                f"{self.rows_path} exists but {spec_path} is missing, so its rows cannot be "
                "matched to this sweep. Point out= at a new folder, or, if the rows came "
                "from this very sweep, pass resume='force' to keep them.")
        tmp = spec_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"digest": digest, "spec": description}, indent=2,
                                  default=str))
        os.replace(tmp, spec_path)

    @property
    def rows_path(self) -> Path:
        return self.dir / ROWS_FILE

    def load(self) -> list[dict[str, Any]]:
        """Valid rows written so far, each cell once; damaged lines are listed in
        ``self.damaged`` (and logged) and left in the file untouched."""
        self.damaged = []
        if not self.rows_path.exists():
            return []
        rows: list[dict[str, Any]] = []
        seen: set[tuple[Any, ...]] = set()
        data = read_regular(self.dir, ROWS_FILE, str(self.rows_path))
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            row, why = _parse_row(line)
            if row is not None and cell_key(row) in seen:
                why = f"a second row for cell {cell_key(row)}"
                row = None
            if row is None:
                self.damaged.append(f"{self.rows_path} line {number}: {why}")
                continue
            seen.add(cell_key(row))
            rows.append(row)
        if self.damaged:
            log.warning("Skipped %d damaged line(s) of %s; their cells are computed again:"
                        " %s", len(self.damaged), self.rows_path, "; ".join(self.damaged))
        return rows

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        blob = "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows)
        _append_bytes(self.rows_path, blob.encode("utf-8"))


def cell_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["site"], row["op"], row["position"], row["head"])


def _parse_row(line: bytes | bytearray) -> tuple[dict[str, Any] | None, str]:
    try:
        row = loads_json(line, "the line", nonfinite=True)
    except LoadError as e:
        return None, f"a torn or garbled write ({e})"
    if not isinstance(row, dict):
        return None, f"a JSON {type(row).__name__}, not a row"
    ok = (isinstance(row.get("site"), str) and isinstance(row.get("op"), str)
          and _opt_int(row.get("position", 0)) and _opt_int(row.get("layer"))
          and _opt_int(row.get("head", 0)) and "position" in row and "head" in row
          and isinstance(row.get("value"), (int, float))
          and not isinstance(row.get("value"), bool))
    if not ok:
        return None, "not a row (needs site, op, layer, position, head and a numeric value)"
    return row, ""


def _opt_int(x: Any) -> bool:
    return x is None or (isinstance(x, int) and not isinstance(x, bool))


def _append_bytes(path: Path, blob: bytes) -> None:
    """Append on a fresh line (a torn earlier write must not merge with this one)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            blob = b"\n" + blob
        _write_fully(fd, blob)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_fully(fd: int, blob: bytes) -> None:
    view = memoryview(blob)
    while view:
        view = view[os.write(fd, view):]


def _read_spec(path: Path) -> dict[str, Any]:
    what_to_do = (f"Move {path.parent} aside and point out= at a new folder; or, if its rows "
                  f"came from this very sweep, delete {path} and rerun with resume='force'.")
    try:
        old = loads_json(read_regular(path.parent, path.name, str(path), MAX_SPEC_BYTES),
                         str(path))
    except LoadError as e:  # unreadable, too large, not strict JSON: named in e
        raise LoadError(f"{path} is damaged: {e} {what_to_do}") from None
    if not (isinstance(old, dict) and isinstance(old.get("digest"), str)
            and isinstance(old.get("spec"), dict)):
        raise LoadError(f"{path} is damaged: not a sweep spec (needs 'digest' and 'spec'). "
                        f"{what_to_do}")
    return old


def _refuse_or_force(folder: Path, old: dict[str, Any], description: dict[str, Any],
                     digest: str, resume: Resume) -> None:
    new = json.loads(json.dumps(description, default=str))
    if old["spec"].get("rows") != new.get("rows"):
        raise SpecMismatchError(
            f"{folder} holds rows in an older format (row schema "
            f"{old['spec'].get('rows', 1)}; this lens writes {new.get('rows')}: sites named "
            "as you gave them, plus layer and op columns), which cannot be resumed. Point "
            f"out= at a new folder, or delete {folder} to compute the sweep again.")
    before = {k: v for k, v in old["spec"].items() if k not in CODE_KEYS}
    after = {k: v for k, v in new.items() if k not in CODE_KEYS}
    if before != after:
        changed = sorted(k for k in before.keys() | after.keys()
                         if before.get(k) != after.get(k))
        raise SpecMismatchError(
            f"{folder} holds results of a different sweep (spec {old['digest']}, this one "
            f"is {digest}; differs in {changed}). Point out= at a new folder, or delete "
            f"{folder} to start over.")
    if resume != "force":
        which = [k.split("_")[0] for k in CODE_KEYS if old["spec"].get(k) != new.get(k)]
        raise SpecMismatchError(
            f"{folder} holds rows of a sweep whose {' and '.join(which)} had other code "
            "(same name, edited body, or another lambda; a new Python version counts too). "
            "Its rows may not mean what this run computes. Point out= at a new folder, or "
            "pass resume='force' if the change does not alter the results.")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return str(x)
