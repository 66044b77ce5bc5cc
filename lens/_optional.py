"""Optional dependencies, imported on first use, each named by the pip extra that brings it.

Everything here sits left of every room (it imports only :mod:`lens.errors`), so any room
may use it. Plots are made on a bare :class:`matplotlib.figure.Figure`: pyplot is never
imported and the user's matplotlib backend and global state are never changed.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .errors import MissingDependencyError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# module -> (pip extra, what needs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "matplotlib": ("plot", "Plots need"),
    "pyarrow": ("parquet", "Writing .parquet tables needs"),
    "transformers": ("hf", "HuggingFace models need"),
    "ray": ("ray", "The Ray executor needs"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming its pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra, what = EXTRAS.get(top, (None, "This feature needs"))
        hint = (f"pip install 'lens[{extra}]' (or pip install {top})" if extra
                else f"pip install {top}")
        raise MissingDependencyError(f"{what} {top}, which is not installed: {hint}."
                                     ) from e


def new_figure(figsize: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure and one axes, drawn with the Agg canvas, outside pyplot's global state."""
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)
