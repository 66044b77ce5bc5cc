"""``tl.bundle``: several traces of one model, aligned op by op, compared to a baseline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ArgumentTypeError, GraphMismatchError, LensError, LookupKeyError, expect
from ..selectors import Selector, coerce, everything
from ..tracing import Op, Trace
from .metrics import CHANGE, resolve

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


class Bundle:
    """Traces of the same model (same graph), keyed by name, with one baseline."""

    def __init__(self, traces: Mapping[str, Trace], baseline: str | None = None) -> None:
        expect(traces, Mapping, "tl.bundle",
               "a dict of traces by name, e.g. tl.bundle({'clean': t1, 'patched': t2})")
        if baseline is not None:
            expect(baseline, str, "tl.bundle(..., baseline=)", "the name of a member")
        if not traces:
            raise LensError("tl.bundle needs at least one trace, e.g. "
                            "tl.bundle({'clean': t1, 'patched': t2}, baseline='clean').")
        for name, tr in traces.items():
            if not isinstance(tr, Trace):
                raise ArgumentTypeError(f"Bundle member {name!r} is a {type(tr).__name__}, not a "
                                "Trace; pass the results of tl.trace(...).")
        self.traces = dict(traces)
        self.baseline = baseline if baseline is not None else next(iter(self.traces))
        if self.baseline not in self.traces:
            raise LookupKeyError(f"baseline={self.baseline!r} is not a member; members are "
                                 f"{list(self.traces)}.")
        base = self.traces[self.baseline]
        for name, tr in self.traces.items():
            if name != self.baseline:
                check_same_graph(self.baseline, base, name, tr)

    @property
    def names(self) -> list[str]:
        return list(self.traces)

    @property
    def others(self) -> list[str]:
        return [n for n in self.traces if n != self.baseline]

    def __getitem__(self, name: str) -> Trace:
        try:
            return self.traces[name]
        except KeyError:
            raise LookupKeyError(f"No member {name!r}; members are {self.names}.") from None

    def sites(self, selector: Any = None) -> list[Op]:
        """Baseline ops a selector matches that have payloads in every member."""
        base = self.traces[self.baseline]
        sel: Selector = everything() if selector is None else coerce(
            selector, module_addresses=set(base.modules))
        found = []
        for op in base.ops:
            if not sel(op):
                continue
            if all(tr.ops[op.index].payload is not None for tr in self.traces.values()):
                found.append(op)
        return found

    def compare_at(self, selector: Any = None, metric: Any = "cosine") -> pd.DataFrame:
        """One row per site, one column per member: ``metric(member, baseline)``."""
        import pandas as pd

        name, fn = resolve(metric)
        rows = []
        for op in self.sites(selector):
            b = op.out.detach()
            row: dict[str, Any] = {"site": op.label, "type": op.type, "module": op.module}
            for member in self.others:
                other = self.traces[member].ops[op.index].out.detach()
                row[member] = fn(other, b) if other.shape == b.shape else float("nan")
            rows.append(row)
        frame = pd.DataFrame(rows, columns=["site", "type", "module", *self.others])
        frame.attrs["metric"] = name
        return frame.set_index("site")

    def most_changed(self, k: int = 10, selector: Any = None, metric: Any = "relative_l2",
                     member: str | None = None) -> pd.DataFrame:
        """The ``k`` sites that differ most from the baseline (in ``member``, default: the
        member with the largest change at each site)."""
        name, _ = resolve(metric)
        frame = self.compare_at(selector, metric)
        cols = [member] if member is not None else self.others
        change = CHANGE.get(name, lambda v: v)
        score = frame[cols].apply(lambda col: col.map(change)).max(axis=1)
        return frame.assign(change=score).sort_values("change", ascending=False).head(k)

    def plot(self, selector: Any = None, metric: Any = "relative_l2", ax: Any = None
             ) -> Figure:
        from .plots import plot_bundle

        return plot_bundle(self, selector, metric, ax)

    def draw(self, path: str | None = None, member: str | None = None,
             metric: Any = "relative_l2", **options: Any) -> str:
        from .plots import draw_bundle

        return draw_bundle(self, path, member, metric, **options)

    def _repr_html_(self) -> str:
        """Jupyter's view: one row per member, then the baseline's summary table."""
        from ..tracing.html import table, trace_html

        rows: list[tuple[object, ...]] = [("member", "ops", "saved payloads", "baseline")]
        rows += [(n, len(t.ops), sum(op.payload is not None for op in t.ops),
                  "yes" if n == self.baseline else "") for n, t in self.traces.items()]
        base = self.traces[self.baseline]
        return (f"<div class='lens-bundle'>{table(rows, caption='Bundle members')}"
                f"{trace_html(base, None)}</div>")

    def __repr__(self) -> str:
        base = self.traces[self.baseline]
        return (f"<Bundle of {base.model_name}: {self.names} (baseline {self.baseline!r}), "
                f"{len(base.ops)} ops>")


def bundle(traces: Mapping[str, Trace], baseline: str | None = None) -> Bundle:
    """Group traces of the same model for side-by-side comparison."""
    return Bundle(traces, baseline)


def check_same_graph(base_name: str, base: Trace, name: str, tr: Trace) -> None:
    for a, b in zip(base.ops, tr.ops, strict=False):  # lengths are compared below
        if a.label != b.label or tuple(a.parent_labels) != tuple(b.parent_labels):
            raise GraphMismatchError(
                f"Bundle member {name!r} is a trace of a different graph than {base_name!r}: "
                f"the first difference is at op #{a.index}: {a.label} (parents "
                f"{a.parent_labels}) vs {b.label} (parents {b.parent_labels}). Bundle traces "
                "of the same model run on inputs that take the same path.")
    if len(base.ops) != len(tr.ops):
        short, n = (name, len(tr.ops)) if len(tr.ops) < len(base.ops) else (base_name,
                                                                            len(base.ops))
        extra = base.ops[n] if short == name else tr.ops[n]
        raise GraphMismatchError(
            f"Bundle member {name!r} has {len(tr.ops)} ops, {base_name!r} has "
            f"{len(base.ops)}; {short!r} ends before op #{n} ({extra.label}).")
