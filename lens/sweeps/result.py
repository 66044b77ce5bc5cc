"""``SweepResult``: tidy rows (site, position, head, value, plus the spec), tables and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._optional import new_figure, require

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


class SweepResult:
    def __init__(self, rows: list[dict[str, Any]], spec: dict[str, Any], digest: str) -> None:
        self.rows = rows
        self.spec = spec
        self.digest = digest
        self.damaged: list[str] = []  # damaged store lines skipped (and recomputed)

    def __len__(self) -> int:
        return len(self.rows)

    def to_pandas(self) -> pd.DataFrame:
        import pandas as pd

        frame = pd.DataFrame(self.rows, columns=["site", "position", "head", "value",
                                                 "baseline", "clean", "kind"])
        frame["metric"] = self.spec.get("metric")
        frame["spec"] = self.digest
        return frame

    def pivot(self) -> pd.DataFrame:
        """Sites down, positions (or heads) across."""
        frame = self.to_pandas()
        column = "head" if frame["head"].notna().any() else "position"
        if frame[column].isna().all():
            return frame.set_index("site")[["value"]]
        order = list(dict.fromkeys(frame["site"]))
        table = frame.pivot_table(index="site", columns=column, values="value", sort=False)
        return table.loc[order]

    def heatmap(self, ax: Any = None, cmap: str = "RdBu_r", title: str | None = None
                ) -> Figure:
        table = self.pivot()
        if ax is None:
            fig, ax = new_figure((max(4.0, 0.3 * table.shape[1] + 2),
                                  max(3.0, 0.3 * table.shape[0] + 1)))
        else:
            fig = ax.figure
        values = table.to_numpy(dtype=float)
        lim = float(abs(values[values == values]).max()) if values.size else 1.0
        im = ax.imshow(values, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
        ax.set_yticks(range(table.shape[0]))
        ax.set_yticklabels(list(table.index), fontsize=7)
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
