"""After the forward pass: trim orphans, group ops into layers (passes), assign labels.

All steps are linear (or near-linear) in the number of ops and run once per trace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..capture.records import INPUT, OUTPUT, OpRecord
from ..capture.stash import StashKey
from .layer import LayerInfo
from .op import Op

# whether a trace records a division with a rounding mode (type 'div'): then 'div_k_n'
# names that op, not a true division
_HAS_DIV = StashKey[bool]("trace.has_div")

# A grouping function returns, for each kept op (in order), the index of its layer's
# first op: ops sharing that value are passes of one layer.
Grouper = Callable[[Sequence[OpRecord]], list[int]]


def kept_ops(ops: Sequence[OpRecord], keep_orphans: bool) -> list[OpRecord]:
    """Drop orphans: ops neither computed from an input nor feeding an output.

    Whatever is kept stays closed under parents, so every kept op can be recomputed.
    """
    if keep_orphans:
        return list(ops)
    n = len(ops)
    from_input = [False] * n
    seen = from_input.__getitem__
    for op in ops:  # ops are in call order, so parents come first
        if op.kind == INPUT or any(map(seen, op.parent_idx)):
            from_input[op.call_index] = True
    # Backwards: feeding an output, and what is kept closed under parents.
    to_output = [False] * n
    feeds = to_output.__getitem__
    keep = from_input
    kept_ = keep.__getitem__
    for op in reversed(ops):
        if op.kind == OUTPUT or any(map(feeds, op.child_idx)):
            to_output[op.call_index] = keep[op.call_index] = True
        elif not keep[op.call_index]:
            continue
        parents = op.parent_idx
        if not all(map(kept_, parents)):
            for p in parents:
                keep[p] = True
    kept = [op for op in ops if keep[op.call_index]]
    if len(kept) < n:
        for op in kept:
            children = op.child_idx
            if children and not all(map(kept_, children)):
                op.child_idx = [c for c in children if keep[c]]
    return kept


def singleton_groups(ops: Sequence[OpRecord]) -> list[int]:
    """No grouping: every op is its own layer (one pass)."""
    return list(range(len(ops)))


def assign_labels(ops: Sequence[OpRecord], groups: list[int]) -> list[LayerInfo]:
    """Create layers and number them: ``{type}_{type_num}_{total_num}``.

    Numbers follow first appearance in execution order; ``total_num`` counts every layer
    (inputs, buffers and outputs included), so the first op after one input is ``_1``.
    """
    layers: list[LayerInfo] = []
    by_first: dict[int, LayerInfo] = {}
    type_counts: dict[str, int] = {}
    for i, (op, first) in enumerate(zip(ops, groups, strict=True)):
        op.pos = i
        info = by_first.get(first)
        if info is None:
            type_ = op.type
            n = type_counts[type_] = type_counts.get(type_, 0) + 1
            total = len(layers)
            short = f"{type_}_{n}"
            info = by_first[first] = LayerInfo(
                short if op.kind in _SHORT_KINDS else f"{short}_{total}", short, type_, total)
            layers.append(info)
            info.passes.append(op.call_index)
            op.layer_idx = total
            op.pass_num = 1
        else:
            passes = info.passes
            passes.append(op.call_index)
            op.layer_idx = info.total_num
            op.pass_num = len(passes)
    return layers


# Sources and sinks are labelled by their short form (``input_1``, ``output_1``).
_SHORT_KINDS = frozenset({INPUT, OUTPUT, "buffer"})


def op_keys(op: Op) -> frozenset[str]:
    """The string lookup keys of one op."""
    layer = op.trace.layer_table[op.record.layer_idx]
    multi = len(layer.passes) > 1
    k = op.pass_num
    # The layer's own labels find every pass (trace['linear_1_1'] is the Layer), so
    # save='linear_1_1' / tl.label('linear_1_1') select all passes.
    keys = {f"{layer.label}:{k}", f"{layer.short_label}:{k}", layer.label, layer.short_label}
    if layer.label == layer.short_label:  # sources/sinks also answer to the full form
        full = f"{layer.short_label}_{layer.total_num}"
        keys.update((f"{full}:{k}",) if multi else (full, f"{full}:{k}"))
    if op.kind == INPUT and op.address:
        keys.add(f"input.{op.address}")
    for call in op.output_of:
        keys.add(call.key)
    keys.update(op.trace._sole_outputs.get(op.call_index, ()))  # bare module addresses
    if op.type == "truediv" and not op.trace.stash.setdefault(
            _HAS_DIV, lambda: any(o.type == "div" for o in op.trace.kept)):
        # 'div_1_8' still finds what older lens labelled so (unless a real div op of
        # this trace could own the name)
        keys.update("div" + k[7:] for k in list(keys) if k.startswith("truediv_"))
    return frozenset(keys)
