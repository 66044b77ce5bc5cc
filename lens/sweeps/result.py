"""``SweepResult``: tidy rows (site, layer, op, head, position, value, plus the spec),
tables and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._optional import new_figure, require
from ..errors import LensError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


COLUMNS = ("site", "layer", "op", "head", "position", "value", "baseline", "clean", "kind")


class SweepResult:
    """One row per cell: ``site`` as given (module address, ``'<module>.<facet>'``,
    label), ``layer`` (index of the repeated block it lies in), ``op`` (the label of the
    op edited), ``head``, ``position``, ``value`` (the metric), ``baseline``, ``clean``."""

    def __init__(self, rows: list[dict[str, Any]], spec: dict[str, Any], digest: str) -> None:
        self.rows = rows
        self.spec = spec
        self.digest = digest
        self.damaged: list[str] = []  # damaged store lines skipped (and recomputed)

    def __len__(self) -> int:
        return len(self.rows)

    def to_pandas(self) -> pd.DataFrame:
        import pandas as pd

        frame = pd.DataFrame(self.rows, columns=list(COLUMNS))
        for col in ("layer", "head", "position"):  # ints with gaps, not floats
            frame[col] = frame[col].astype("Int64")
        frame["metric"] = self.spec.get("metric")
        frame["spec"] = self.digest
        return frame

    def pivot(self, index: str | list[str] | None = None, columns: str | None = None
              ) -> pd.DataFrame:
        """A table of values. By default: layers down (sites, where a layer holds several
        or a site lies outside every block), positions across, or heads across when
        the sweep has heads (then per head and position when it has both)."""
        frame = self.to_pandas()
        varies = [c for c in ("head", "position") if frame[c].notna().any()]
        if columns is None:
            columns = varies[0] if varies else None
        if index is None:
            per_site = frame.drop_duplicates(["site", "op"])
            by_layer = (frame["layer"].notna().all()
                        and not per_site["layer"].duplicated().any())
            index = ["layer" if by_layer else "site"] + [c for c in varies if c != columns]
        keys = [index] if isinstance(index, str) else list(index)
        if columns is None:
            return frame.set_index(keys)[["value"]]
        try:
            table = frame.pivot(index=keys, columns=columns, values="value")
        except ValueError as e:
            raise LensError(
                f"SweepResult.pivot(index={keys}, columns={columns!r}): several rows share "
                f"a cell of that table ({e}); add a column to index=, e.g. index=['site', "
                "'head'].") from None
        order = list(dict.fromkeys(map(tuple, frame[keys].itertuples(index=False))))
        return table.loc[[o[0] for o in order] if len(keys) == 1 else order]

    def heatmap(self, ax: Any = None, cmap: str = "RdBu_r", title: str | None = None
                ) -> Figure:
        table = self.pivot()
        if ax is None:
            fig, ax = new_figure((max(4.0, 0.3 * table.shape[1] + 2),
                                  max(3.0, 0.3 * table.shape[0] + 1)))
        else:
            fig = ax.figure
        values = table.to_numpy(dtype=float)
        finite = np.abs(values[np.isfinite(values)])
        lim = float(finite.max()) if finite.size else 1.0
        im = ax.imshow(values, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
        ax.set_yticks(range(table.shape[0]))
        ax.set_yticklabels([_tick(i) for i in table.index], fontsize=7)
        ax.set_ylabel(" / ".join(str(n) for n in table.index.names if n))
        ax.set_xticks(range(table.shape[1]))
        ax.set_xticklabels([str(c) for c in table.columns], fontsize=7)
        ax.set_xlabel(str(table.columns.name or ""))
        ax.set_title(title or f"{self.spec.get('kind')} sweep: {self.spec.get('metric')}")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        return fig

    def save(self, path: str) -> str:
        """Write the table: ``.parquet``, ``.csv`` or JSON lines (anything else)."""
        p = Path(path)
        frame = self.to_pandas()
        if p.suffix == ".parquet":
            require("pyarrow")
            frame.to_parquet(p)
        elif p.suffix == ".csv":
            frame.to_csv(p, index=False)
        else:
            p.write_text("".join(json.dumps(r, default=str) + "\n" for r in self.rows))
        return str(p)

    def _repr_html_(self) -> str:
        """Jupyter's view: the pivot table and the heatmap (inline PNG)."""
        from ._html import sweep_html

        return sweep_html(self)

    def __repr__(self) -> str:
        return f"<SweepResult {self.spec.get('kind')}: {len(self.rows)} rows>"


def _tick(key: Any) -> str:
    return " / ".join(map(str, key)) if isinstance(key, tuple) else str(key)
