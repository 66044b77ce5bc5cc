"""Running the Graphviz program: find it, bound its time, fall back to faster layouts.

``dot`` draws module boxes and a clean top-to-bottom flow, but its layout time grows
steeply with size (measured on a chain of residual blocks: 1,000 nodes 0.5 s, 2,000
nodes 2-6 s, 3,000 nodes 25 s with module boxes / 6-8 s without, 5,000 nodes 20-45 s),
while ``sfdp -Goverlap=scale`` lays out 5,000 nodes in about 2.5 s (no module boxes, no
up/down direction). So:

- every run has a wall-clock limit (``subprocess.run(timeout=...)``);
- the attempts depend on the node count (:func:`layouts_for`): full ``dot`` up to
  :data:`DOT_MAX` nodes, then ``dot`` without module boxes and with reduced effort up to
  :data:`FLAT_MAX`, then ``sfdp``;
- an attempt that runs out of its share of the time (:data:`SHARE` of what is left when a
  faster attempt follows) gives way to the next one.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import DrawError, MissingDependencyError

# Node counts above which dot runs without module boxes, and above which sfdp is used.
DOT_MAX = 2000
FLAT_MAX = 4000

# Cairo output (pdf, png) of a large layout spends most of its time on the page size
# (10,000 nodes by sfdp: 81 s as laid out, 11 s scaled to fit 100 inches); large layouts
# are scaled down to fit BIG_PAGE inches.
CAIRO = frozenset({"pdf", "png"})
BIG_PAGE = 100

# Share of the remaining time an attempt gets when a faster attempt follows it.
SHARE = 0.6

INSTALL_HINT = (
    "Install Graphviz: `sudo apt-get install graphviz` (Debian/Ubuntu), "
    "`brew install graphviz` (macOS), `conda install -c conda-forge graphviz`, or see "
    "https://graphviz.org/download/. Tracing does not need it; only drawing does. "
    "draw(format='dot') writes the graph source without running Graphviz.")


@dataclass(frozen=True)
class Layout:
    """One attempt: a Graphviz program, how to write the source, extra flags."""

    program: str  # "dot", "sfdp", ...
    fast: bool = False  # reduced dot effort (lens.draw.dot.FAST_DOT)
    clusters: bool = True  # draw module boxes
    extra: tuple[str, ...] = ()  # command-line flags such as -Goverlap=scale


FULL = Layout("dot")
FLAT = Layout("dot", fast=True, clusters=False)
SFDP = Layout("sfdp", clusters=False, extra=("-Goverlap=scale", "-Gsplines=false"))


def find_program(name: str) -> str:
    """Path of a Graphviz program, or a :class:`MissingDependencyError` saying how to get it."""
    path = shutil.which(name)
    if path is None:
        raise MissingDependencyError(
            f"Drawing needs the Graphviz program `{name}`, which was not found on PATH. "
            + INSTALL_HINT)
    return path


def run(source: Callable[[Layout], str], fmt: str, layouts: list[Layout], timeout: float,
        out_path: str | None = None) -> bytes:
    """Render ``source(layout)``; try each layout in turn while time remains.

    Writes ``out_path`` when given (and returns b""), else returns the rendered bytes.
    """
    deadline = time.monotonic() + timeout
    tried: list[str] = []
    for i, layout in enumerate(layouts):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if i < len(layouts) - 1:  # keep time for the faster fallbacks
            left *= SHARE
        exe = find_program(layout.program)
        cmd = [exe, f"-T{fmt}", *layout.extra]
        if fmt in CAIRO and layout != FULL:
            cmd.append(f"-Gsize={BIG_PAGE},{BIG_PAGE}")
        if out_path is not None:
            cmd += ["-o", out_path]
        try:
            done = subprocess.run(cmd, input=source(layout).encode(), capture_output=True,
                                  timeout=left, check=False)
        except subprocess.TimeoutExpired:
            tried.append(f"{layout.program} timed out")
            continue
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip()[-2000:]
            raise DrawError(
                f"Graphviz `{layout.program} -T{fmt}` failed (exit {done.returncode}): "
                f"{err}\nSave the source with draw(format='dot') to inspect it.")
        return done.stdout if out_path is None else b""
    raise DrawError(
        f"Graphviz did not finish within {timeout:.0f} s ({'; '.join(tried) or 'no time'}). "
        "Draw less: draw(vis_mode='rolled') shows each repeated layer once, draw(depth=1) "
        "folds every top-level module into one node; or allow more time with "
        "draw(timeout=...).")


def layouts_for(num_nodes: int, layout: str | None) -> list[Layout]:
    """The attempts for a graph of ``num_nodes`` nodes (``layout`` forces one program)."""
    if layout is not None:
        return [FULL if layout == "dot" else Layout(layout, clusters=False)]
    if num_nodes <= DOT_MAX:
        return [FULL, FLAT, SFDP]
    if num_nodes <= FLAT_MAX:
        return [FLAT, SFDP]
    return [SFDP]
