"""What ``positions=`` may be, and the indices one cell edits.

``'each'`` (every position), ``None`` (the whole tensor), a list of ints, or a per-row
integer tensor for padded batches: ``[batch]`` (one cell: row ``b`` edited at position
``positions[b]``) or ``[batch, n]`` (``n`` cells; cell ``j`` edits row ``b`` at
``positions[b, j]``). With a tensor, a row's ``position`` is the column ``j``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InterventionError


def per_row(positions: Any) -> torch.Tensor | None:
    """``positions`` as a ``[batch, n]`` int64 tensor if it is a per-row tensor, else None."""
    if not isinstance(positions, torch.Tensor):
        return None
    if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
        raise InterventionError(
            f"positions= as a tensor holds integer positions, one per batch row; got dtype "
            f"{positions.dtype}. Pass e.g. torch.tensor([5, 3]) (a LongTensor [batch]).")
    if positions.dim() not in (1, 2) or positions.shape[0] == 0:
        raise InterventionError(
            f"positions= as a tensor is [batch] (one position per row) or [batch, n] (n "
            f"cells per site); got shape {tuple(positions.shape)}.")
    rows = positions.detach().cpu().to(torch.int64)
    return rows[:, None] if rows.dim() == 1 else rows


def describe(positions: Any) -> Any:
    """A JSON-able form (for the spec's digest)."""
    rows = per_row(positions)
    if rows is not None:
        return {"per_row": rows.tolist()}
    if positions is None or (isinstance(positions, str) and positions == "each"):
        return positions
    return [int(p) for p in positions]


def columns(positions: Any, size: int, batch: int | None, where: str,
            shape: tuple[int, ...], dim: int) -> list[int | None]:
    """The ``position`` value of each cell at one site (whose dimension ``dim`` has
    ``size`` entries): checked against that site first."""
    if positions is None:
        return [None]
    rows = per_row(positions)
    if rows is None:
        if isinstance(positions, str) and positions == "each":
            return list(range(size))
        return list(_checked(positions, size, where, shape, dim))
    if dim == 0:
        raise InterventionError(
            "positions= as a per-row tensor edits row b of the batch (dimension 0) at a "
            "position along position_dim, which must then be >= 1.")
    if batch != rows.shape[0]:
        raise InterventionError(
            f"positions= has {rows.shape[0]} rows but {where} has a batch of {batch} (shape "
            f"{shape}); give one position per batch row.")
    bad = rows[(rows < 0) | (rows >= size)]
    if bad.numel():
        raise InterventionError(
            f"positions: {int(bad[0])} is out of range at {where}, whose dimension {dim} "
            f"has size {size} (shape {shape}); use positions in 0..{size - 1}.")
    return list(range(rows.shape[1]))


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) < 60 else text[:57] + "..."


def _checked(positions: Any, size: int, where: str, shape: tuple[int, ...], dim: int
             ) -> list[int]:
    if isinstance(positions, (str, bytes)) or not hasattr(positions, "__iter__"):
        raise InterventionError(f"positions={_short(positions)}: use 'each', None, a list "
                                "of integer positions, or a per-row LongTensor [batch].")
    out: list[int] = []
    for p in positions:
        if isinstance(p, torch.Tensor) and p.dim() == 0 and not p.is_floating_point():
            p = int(p)
        if not isinstance(p, int) or isinstance(p, bool):
            raise InterventionError(f"positions: {p!r} is not an integer position.")
        if not 0 <= p < size:
            raise InterventionError(
                f"positions: {p} is out of range at {where}, whose dimension {dim} has "
                f"size {size} (shape {shape}); use positions in 0..{size - 1}.")
        if p in out:
            raise InterventionError(f"positions: {p} is listed twice; list each once.")
        out.append(p)
    return out


def cell_keys(positions: Any, position: int | None, pos_dim: int,
              head: int | None, head_dim: int | None) -> list[tuple[Any, ...]] | None:
    """The indices one cell edits (None: the whole tensor). A head keeps its axis."""
    dims: dict[int, Any] = {}
    if head is not None:
        assert head_dim is not None
        dims[head_dim] = slice(head, head + 1)
    if position is None:
        return [_index(dims)] if dims else None
    rows = per_row(positions)
    if rows is None:
        return [_index(dims | {pos_dim: position})]
    return [_index(dims | {0: b, pos_dim: int(rows[b, position])})
            for b in range(rows.shape[0])]


def _index(dims: dict[int, Any]) -> tuple[Any, ...]:
    return tuple(dims.get(d, slice(None)) for d in range(max(dims) + 1))
