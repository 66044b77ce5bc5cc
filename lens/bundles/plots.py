"""Pictures of a bundle: per-site differences (matplotlib) and the coloured graph."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._optional import new_figure
from .metrics import CHANGE, resolve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .core import Bundle


def plot_bundle(b: Bundle, selector: Any, metric: Any, ax: Any) -> Figure:
    """A line per member: the metric against the baseline at each site, in graph order."""
    name, _ = resolve(metric)
    frame = b.compare_at(selector, metric)
    if ax is None:
        fig, ax = new_figure((max(6.0, 0.12 * len(frame)), 3.5))
    else:
        fig = ax.figure
    xs = range(len(frame))
    for member in b.others:
        ax.plot(xs, frame[member].to_numpy(), marker=".", label=member)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(list(frame.index), rotation=90, fontsize=6)
    ax.set_ylabel(f"{name} vs {b.baseline}")
    ax.set_title(f"{b.traces[b.baseline].model_name}: difference from {b.baseline!r}")
    ax.legend()
    fig.tight_layout()
    return fig


def draw_bundle(b: Bundle, path: str | None, member: str | None, metric: Any,
                **options: Any) -> str:
    """The baseline's graph with each op filled by how much ``member`` changed it."""
    name, fn = resolve(metric)
    member = member or b.others[0]
    frame = b.compare_at(None, metric)
    change = frame[member].map(CHANGE.get(name, lambda v: v))
    finite = change[change.notna() & (change != float("inf"))]
    top = float(finite.max()) if len(finite) and finite.max() > 0 else 1.0
    colors = {}
    for site, value in change.items():
        v = 1.0 if value != value or value == float("inf") else min(float(value) / top, 1.0)
        red = 255
        other = int(255 * (1 - v))
        colors[str(site)] = f"#{red:02x}{other:02x}{other:02x}"
    base = b.traces[b.baseline]
    return base.draw(path, node_colors=colors, **options)
