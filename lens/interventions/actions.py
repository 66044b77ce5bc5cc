"""The built-in actions: what to do to a site's value.

Each is a frozen dataclass (immutable, picklable, printed as the code that builds it);
those holding tensors, traces or modules compare and hash by identity. Every action can
be restricted to part of the value with ``.at[...]``; randomness comes from a private
``torch.Generator`` seeded by the action (the global RNG is never touched), so live runs,
replays and reruns draw the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ArgumentTypeError, InterventionError, expect
from ..tracing import Trace
from ._base import Action, Path, call_user, cut, fmt_tensor, like
from ._sites import Site, same_site
from ._splice import SpliceModule as SpliceModule
from ._splice import splice_module as splice_module


def _is_trace(obj: Any) -> bool:
    return isinstance(obj, Trace)


def _source(source: Any, x: Tensor, site: Site, path: Path, what: str) -> Tensor:
    """The region of ``source`` matching ``x``: the same site of a trace, or a tensor
    (cut like ``x`` when it has the shape of the whole value, else used as given)."""
    if _is_trace(source):
        read = getattr(site, "value_in", None)  # a facet's site reads the source's facet
        return cut(read(source, what) if read is not None else same_site(source, site.op, what),
                   path)
    if isinstance(source, Tensor):
        if path and source.shape == site.full.shape:
            return cut(source, path)
        return source
    raise InterventionError(f"{what}: the source must be a Trace or a tensor, got "
                            f"{type(source).__name__}.")


_NUMBER = (int, float)


def _source_arg(source: Any, what: str, tensor_ok: bool = True) -> Any:
    """A trace of the same model (or, if ``tensor_ok``, a tensor), else an error."""
    if _is_trace(source) or (tensor_ok and isinstance(source, Tensor)):
        return source
    expected = "a trace of the same model" + (" or a tensor" if tensor_ok else "")
    raise ArgumentTypeError(f"{what} takes {expected} as its source; got "
                            f"{type(source).__name__}.")


def _same_kind(src: Tensor, x: Tensor, what: str, site: Site) -> Tensor:
    if src.dtype != x.dtype:
        raise InterventionError(
            f"{what} at {site.name()}: the source has dtype {src.dtype} but the value is "
            f"{x.dtype}; convert the source first (e.g. source.to({x.dtype})).")
    return src.to(x.device)


# ---------------------------------------------------------------------------- ablations
@dataclass(frozen=True, repr=False)
class ZeroAblate(Action):
    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        return torch.zeros_like(value)

    def __repr__(self) -> str:
        return "tl.zero_ablate()"


def zero_ablate() -> ZeroAblate:
    """Replace the value with zeros."""
    return ZeroAblate()


@dataclass(frozen=True, eq=False, repr=False)
class MeanAblate(Action):
    over: tuple[int, ...] = (0,)
    source: Any = None

    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        if isinstance(self.source, Tensor):
            mean = _same_kind(self.source, value, repr(self), site)
        else:
            base = value if self.source is None else _same_kind(
                _source(self.source, value, site, path, repr(self)), value, repr(self), site)
            if not base.is_floating_point():
                raise InterventionError(
                    f"{self!r} at {site.name()}: a mean needs floating-point values, got "
                    f"{base.dtype}.")
            mean = base.mean(dim=self.over, keepdim=True)
        try:
            return like(value, mean.expand(value.shape))
        except RuntimeError as e:
            raise InterventionError(
                f"{self!r} at {site.name()}: a mean of shape {tuple(mean.shape)} cannot "
                f"fill a value of shape {tuple(value.shape)} ({e}).") from None

    def __repr__(self) -> str:
        if isinstance(self.source, Tensor):
            return f"tl.mean_ablate(source={fmt_tensor(self.source)})"
        over = self.over[0] if len(self.over) == 1 else self.over
        src = "" if self.source is None else f", source={self.source!r}"
        return f"tl.mean_ablate(over={over!r}{src})"


def mean_ablate(over: int | tuple[int, ...] = 0, source: Any = None) -> MeanAblate:
    """Replace the value with a mean, broadcast back to its shape.

    ``over``: the dimensions averaged (default the batch, 0) — of the value itself, or of
    the same site in ``source`` when that is a trace (e.g. a reference data set's trace).
    ``source`` may also be a tensor: then it is the mean itself, broadcast as given.
    """
    dims = (over,) if isinstance(over, int) else over
    if not isinstance(dims, tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise ArgumentTypeError(f"tl.mean_ablate(over=) takes a dimension (int) or a tuple "
                                f"of them; got {over!r}.")
    if source is not None:
        _source_arg(source, "tl.mean_ablate")
    return MeanAblate(dims, source)


@dataclass(frozen=True, eq=False, repr=False)
class ResampleAblate(Action):
    source: Any
    seed: int = 0

    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        pool = _same_kind(_source(self.source, value, site, path, repr(self)), value,
                          repr(self), site)
        if value.dim() == 0 or pool.dim() != value.dim() or pool.shape[1:] != value.shape[1:]:
            raise InterventionError(
                f"{self!r} at {site.name()}: rows of a pool of shape {tuple(pool.shape)} "
                f"cannot replace a value of shape {tuple(value.shape)}; they must agree "
                "in every dimension but the first (the batch).")
        gen = torch.Generator().manual_seed(self.seed)
        rows = torch.randint(pool.shape[0], (value.shape[0],), generator=gen)
        return like(value, pool[rows.to(pool.device)])

    def __repr__(self) -> str:
        return f"tl.resample_ablate(source={fmt_tensor(self.source)}, seed={self.seed})"


def resample_ablate(source: Any, seed: int = 0) -> ResampleAblate:
    """Replace each batch row with a row drawn (with replacement, reproducibly from
    ``seed``) from ``source``: the same site of another trace, or a tensor pool."""
    _source_arg(source, "tl.resample_ablate")
    expect(seed, int, "tl.resample_ablate(..., seed=)", "an int")
    return ResampleAblate(source, seed)


# ---------------------------------------------------------------------------- arithmetic
@dataclass(frozen=True, eq=False, repr=False)
class Steer(Action):
    direction: Tensor
    alpha: float = 1.0
    dim: int = -1

    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        d = self.direction.to(device=value.device, dtype=value.dtype)
        if d.dim() == 1 and value.dim() > 0:
            if d.shape[0] != value.shape[self.dim]:
                raise InterventionError(
                    f"{self!r} at {site.name()}: the direction has {d.shape[0]} entries but "
                    f"dimension {self.dim} of the value has {value.shape[self.dim]} "
                    f"(shape {tuple(value.shape)}).")
            shape = [1] * value.dim()
            shape[self.dim] = -1
            d = d.reshape(shape)
        return value + self.alpha * d

    def __repr__(self) -> str:
        dim = "" if self.dim == -1 else f", dim={self.dim}"
        return f"tl.steer({fmt_tensor(self.direction)}, alpha={self.alpha!r}{dim})"


def steer(direction: Any, alpha: float = 1.0, dim: int = -1) -> Steer:
    """Add ``alpha * direction`` along dimension ``dim`` (a vector), or broadcast as is."""
    direction = _numeric_tensor(direction, "tl.steer", "a direction")
    expect(alpha, (*_NUMBER, Tensor), "tl.steer(..., alpha=)", "a number")
    expect(dim, int, "tl.steer(..., dim=)", "a dimension (int)")
    return Steer(direction, alpha, dim)


def _numeric_tensor(value: Any, what: str, noun: str) -> Tensor:
    try:
        t = value if isinstance(value, Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.dtype == torch.bool:
        raise ArgumentTypeError(f"{what} takes {noun} as a tensor (or a number or list of "
                                f"numbers); got {value!r} ({type(value).__name__}).")
    return t


@dataclass(frozen=True, repr=False)
class Scale(Action):
    factor: float

    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        return value * self.factor

    def __repr__(self) -> str:
        return f"tl.scale({self.factor!r})"


def scale(factor: float) -> Scale:
    """Multiply the value by ``factor``."""
    expect(factor, (*_NUMBER, Tensor), "tl.scale", "a number (or a tensor to broadcast)")
    return Scale(factor)


@dataclass(frozen=True, repr=False)
class Clamp(Action):
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.min is None and self.max is None:
            raise InterventionError("tl.clamp() needs min=, max= or both.")

    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        return value.clamp(min=self.min, max=self.max)

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in (("min", self.min), ("max", self.max))
                 if v is not None]
        return f"tl.clamp({', '.join(parts)})"


def clamp(min: float | None = None, max: float | None = None) -> Clamp:  # noqa: A002
    """Clamp the value to ``[min, max]`` (either bound may be left out)."""
    for name, bound in (("min", min), ("max", max)):
        if bound is not None:
            expect(bound, _NUMBER, f"tl.clamp({name}=)", "a number or None")
    return Clamp(min, max)


@dataclass(frozen=True, repr=False)
class Noise(Action):
    std: float
    seed: int = 0

    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        # One private generator per site: (seed, call index) fixes the draw, so live,
        # replay and rerun agree and different sites get different noise.
        gen = torch.Generator(device=value.device)
        gen.manual_seed((self.seed * 1_000_003 + site.call_index) % (2**63))
        eps = torch.randn(value.shape, generator=gen, dtype=value.dtype, device=value.device)
        return value + self.std * eps

    def __repr__(self) -> str:
        return f"tl.noise({self.std!r}, seed={self.seed})"


def noise(std: float, seed: int = 0) -> Noise:
    """Add Gaussian noise of standard deviation ``std`` (private generator, seeded by
    ``seed`` and the op's call index; the global RNG is untouched)."""
    expect(std, _NUMBER, "tl.noise", "a standard deviation (a number)")
    expect(seed, int, "tl.noise(..., seed=)", "an int")
    return Noise(std, seed)


# ---------------------------------------------------------------------------- subspaces
@dataclass(frozen=True, eq=False, repr=False)
class _Projection(Action):
    directions: Tensor
    dim: int = -1

    def _project(self, value: Tensor, site: Site) -> tuple[Tensor, Tensor]:
        d = self.directions
        x = value.movedim(self.dim, -1)
        n = x.shape[-1]
        if d.shape[-1] != n:
            raise InterventionError(
                f"{self!r} at {site.name()}: directions of size {d.shape[-1]} do not fit "
                f"dimension {self.dim} of the value (size {n}, shape {tuple(value.shape)}).")
        work = value.dtype if value.dtype in (torch.float32, torch.float64) else torch.float32
        q, _ = torch.linalg.qr(d.reshape(-1, n).to(device=value.device, dtype=work).T)
        q = q.to(value.dtype)
        return x, (x @ q) @ q.T

    def _name(self) -> str:
        dim = "" if self.dim == -1 else f", dim={self.dim}"
        return f"{fmt_tensor(self.directions)}{dim}"


@dataclass(frozen=True, eq=False, repr=False)
class ProjectOnto(_Projection):
    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        x, p = self._project(value, site)
        return p.movedim(-1, self.dim).contiguous()

    def __repr__(self) -> str:
        return f"tl.project_onto({self._name()})"


@dataclass(frozen=True, eq=False, repr=False)
class ProjectOff(_Projection):
    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        x, p = self._project(value, site)
        return (x - p).movedim(-1, self.dim).contiguous()

    def __repr__(self) -> str:
        return f"tl.project_off({self._name()})"


def _directions(directions: Any) -> Tensor:
    d = directions if isinstance(directions, Tensor) else torch.as_tensor(directions)
    if d.dim() not in (1, 2) or not d.is_floating_point():
        raise InterventionError(
            "Directions are one float vector (n,) or several as rows (k, n); got "
            f"{tuple(d.shape)} {d.dtype}.")
    return d


def project_onto(directions: Any, dim: int = -1) -> ProjectOnto:
    """Keep only the component in the span of ``directions`` ((n,) or (k, n)), along
    dimension ``dim``."""
    return ProjectOnto(_directions(directions), dim)


def project_off(directions: Any, dim: int = -1) -> ProjectOff:
    """Remove the component in the span of ``directions`` ((n,) or (k, n)), along
    dimension ``dim``."""
    return ProjectOff(_directions(directions), dim)


# ---------------------------------------------------------------------------- replacements
@dataclass(frozen=True, eq=False, repr=False)
class SwapWith(Action):
    source: Any

    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        src = _same_kind(_source(self.source, value, site, path, repr(self)), value,
                         repr(self), site)
        if src.shape != value.shape:
            raise InterventionError(
                f"{self!r} at {site.name()}: the source value has shape "
                f"{tuple(src.shape)}, the value {tuple(value.shape)}.")
        return like(value, src)

    def __repr__(self) -> str:
        return f"tl.swap_with({fmt_tensor(self.source)})"


def swap_with(source: Any) -> SwapWith:
    """Replace the value with ``source``: the same site of another trace, or a tensor."""
    return SwapWith(_source_arg(source, "tl.swap_with"))


@dataclass(frozen=True, eq=False, repr=False)
class PatchFrom(SwapWith):
    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        if not _is_trace(self.source):
            raise InterventionError(f"tl.patch_from() takes a trace of the same model; got "
                                    f"{type(self.source).__name__}. Use tl.swap_with(tensor).")
        return super().edit(value, site, path)

    def __repr__(self) -> str:
        return f"tl.patch_from({self.source!r})"


def patch_from(source: Any) -> PatchFrom:
    """Take the same site's value from ``source``, another trace of the same model (e.g.
    the clean run when patching into a corrupted one), matched by call order."""
    return PatchFrom(_source_arg(source, "tl.patch_from", tensor_ok=False))


@dataclass(frozen=True, eq=False, repr=False)
class ReplaceWith(Action):
    value: Any

    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        v = self.value
        if callable(v) and not isinstance(v, Tensor):
            return call_user(v, value, site.op)
        if isinstance(v, Tensor):
            v = _same_kind(v, value, repr(self), site)
            return like(value, v)
        return torch.full_like(value, v)

    def __repr__(self) -> str:
        v = self.value
        name = getattr(v, "__qualname__", None) if callable(v) else None
        return f"tl.replace_with({name or fmt_tensor(v)})"


def replace_with(value: Any) -> ReplaceWith:
    """Replace the value with a constant (a number, or a tensor broadcast to its shape),
    or with ``fn(value, op)`` / ``fn(value)`` for a callable."""
    if not callable(value):
        expect(value, (*_NUMBER, complex, Tensor), "tl.replace_with",
               "a number, a tensor, or a function fn(value, op) -> tensor")
    return ReplaceWith(value)
