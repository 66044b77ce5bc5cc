"""A result store that survives crashes: one JSON line per finished row, plus the spec.

Rows are appended (and fsynced) batch by batch, so a killed sweep loses at most the batch
in flight; re-running the same sweep against the same directory computes only the cells
whose rows are missing. A different sweep pointed at the directory is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import LensError

SPEC_FILE = "spec.json"
ROWS_FILE = "rows.jsonl"


class SpecMismatchError(LensError, ValueError):
    """The output directory holds results of a different sweep."""


class ResultStore:
    def __init__(self, directory: str | os.PathLike[str], description: dict[str, Any],
                 digest: str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.digest = digest
        spec_path = self.dir / SPEC_FILE
        if spec_path.exists():
            old = json.loads(spec_path.read_text())
            if old.get("digest") != digest:
                raise SpecMismatchError(
                    f"{self.dir} holds results of a different sweep (spec {old.get('digest')}, "
                    f"this one is {digest}). Point out= at a new directory, or delete "
                    f"{self.dir} to start over.")
        else:
            tmp = spec_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"digest": digest, "spec": description}, indent=2,
                                      default=str))
            os.replace(tmp, spec_path)

    @property
    def rows_path(self) -> Path:
        return self.dir / ROWS_FILE

    def load(self) -> list[dict[str, Any]]:
        """Rows written so far; a torn last line (a crash mid-write) is dropped."""
        if not self.rows_path.exists():
            return []
        rows, good = [], 0
        with open(self.rows_path, "rb") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break
                good += len(line)
        if good != self.rows_path.stat().st_size:
            with open(self.rows_path, "r+b") as f:
                f.truncate(good)
        return rows

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        blob = "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows)
        with open(self.rows_path, "a", encoding="utf-8") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return str(x)
