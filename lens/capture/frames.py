"""Where an op was called from: the user's Python frames (``code_context=True``).

Only file, line and function name are taken while the model runs (a walk up the stack);
the source line is read from :mod:`linecache` when asked for.
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_LENS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# lens's own models are user code as far as a stack is concerned
_LENS_USER = (_LENS_DIR + "examples" + os.sep, _LENS_DIR + "demo.py")
MAX_FRAMES = 16

Site = tuple[str, int, str]  # (file, line number, function name), as stored on op.code


@dataclass(frozen=True)
class Frame:
    """One Python frame of an op's call stack: ``file``, ``line_number``, ``func_name``,
    and ``code``, the source line (stripped; ``''`` when the file cannot be read)."""

    file: str
    line_number: int
    func_name: str

    @property
    def code(self) -> str:
        return linecache.getline(self.file, self.line_number).strip()

    def __str__(self) -> str:
        return f"{self.file}:{self.line_number} in {self.func_name}(): {self.code}"


@functools.lru_cache(maxsize=4096)
def _internal(filename: str) -> int:
    """0: user code; 1: torch; 2: lens itself (the capture machinery and its callers)."""
    if filename.startswith(_TORCH_DIR):
        return 1
    if filename.startswith(_LENS_DIR) and not filename.startswith(_LENS_USER):
        return 2
    return 0


def user_stack() -> tuple[Site, ...]:
    """The user's frames running the current op, innermost first: torch and lens frames
    are skipped, and the walk ends at the lens frame that started the forward (the
    frames above it called ``tl.trace``, they are not part of the model)."""
    found: list[Site] = []
    f: FrameType | None = sys._getframe(1)
    while f is not None and len(found) < MAX_FRAMES:
        code = f.f_code
        kind = _internal(code.co_filename)
        if kind == 0:
            found.append((code.co_filename, f.f_lineno, code.co_name))
        elif kind == 2 and found:
            break
        f = f.f_back
    return tuple(found)


def frames(code: Any) -> list[Frame]:
    """``op.code`` as frames; also reads the single (file, line, function) of older saves."""
    if not code:
        return []
    sites = [code] if isinstance(code[0], str) else list(code)
    return [Frame(str(s[0]), int(s[1]), str(s[2])) for s in sites]
