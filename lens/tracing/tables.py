"""pandas tables of a trace (pandas is imported only when a table is asked for)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from .traces import Trace


def ops_frame(trace: Trace) -> pd.DataFrame:
    """One row per op, in execution order."""
    import pandas as pd

    rows = []
    for op in trace.ops:
        rows.append({
            "index": op.index,
            "label": op.label,
            "layer": op.layer_label,
            "short_label": op.short_label,
            "type": op.type,
            "func_name": op.func_name,
            "kind": op.kind,
            "pass_num": op.pass_num,
            "num_passes": op.num_passes,
            "shape": tuple(op.shape),
            "dtype": str(op.dtype) if op.dtype is not None else None,
            "device": str(op.device) if op.device is not None else None,
            "nbytes": op.nbytes,
            "saved": op.has_payload,
            "parents": [p.label for p in op.parents],
            "children": [c.label for c in op.children],
            "module": op.module,
            "module_call": op.module_call,
            "module_outputs": list(op.module_outputs),
            "params": list(op.params),
            "num_params": op.num_params,
            "elapsed_s": op.elapsed,
        })
    return pd.DataFrame(rows)
