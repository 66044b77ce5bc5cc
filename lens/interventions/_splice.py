"""``tl.splice_module``: replace a site's value with a module's output (an SAE, a
transcoder), recording the module's ops under an address of its own.

Live (``tl.trace`` / ``tl.run``), the module runs with recording on: its calls are
recorded under ``splice.<site>`` (``<site>`` is the module address of a module site,
``name=`` when given, else the op's type), its submodules under
``splice.<site>.<name>``, its parameters under those addresses. Its latents are then
ordinary ops of the trace: addressable (``trace['splice.transformer.h.0.encoder']``),
savable (``save=tl.module(...)``), editable in the same run (``tl.when``) and by replay.
The model's consumers read the splice's own output op, so the graph stays the computation
that ran, and the site's op keeps the value the model computed there.

With ``error_term=True`` the value is ``value.detach() + (module(x) - clean)``, where
``clean`` is the module's output on the same input computed without recording or edits:
the model's output is unchanged (bit for bit) unless something inside the module is
edited, gradients reach the input through the module only (as
``module(x) + (x - module(x)).detach()``), and an edit inside the module changes the
value by exactly what it changes the module's output (SAELens's error term).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..capture.records import CONSTANT
from ..capture.splice import ForwardHook, recording_module
from ..capture.stash import StashKey
from ..errors import ArgumentTypeError, InterventionError, ReplayError, expect
from ..selectors import Func, Module, Selector, split_call
from ._base import Action, Path, cut
from ._sites import Site, describe

ERROR_SOURCES = StashKey[tuple[int, ...]]("interventions.splice_error_sources")
"""On the constant holding a splice's clean output: the ops it was computed from."""

_ON = ("output", "inputs")


@dataclass(frozen=True, eq=False, repr=False)
class SpliceModule(Action):
    module: Callable[..., Tensor]
    error_term: bool = False
    on: str = "output"
    name: str | None = None

    def edit(self, value: Tensor, site: Site, path: Path = ()) -> Tensor:
        args = [value] if self.on == "output" else site.inputs()
        recorder = getattr(site, "recorder", None)
        if recorder is None:  # by hand, or in a replay: run it, nothing to record
            clean = self._clean(args) if self.error_term else None
            new: Tensor = self._finish(self.module(*args), value, clean, site, path)
            return new
        clean = self._clean(args) if self.error_term else None
        hook: ForwardHook | None = None
        if clean is not None and isinstance(self.module, nn.Module):
            hook = lambda m, a, out: self._finish(out, value, clean, site, path)  # noqa: E731
        with recording_module(recorder, self.module, self.address(site), hook):
            out = self.module(*args)
            if hook is None:
                out = self._finish(out, value, clean, site, path)
        if clean is not None:
            hit = recorder.tensor_map.get(id(clean))
            if hit is not None and hit[1]() is clean:
                sources = (site.call_index, *_input_ops(site))
                recorder.ops[hit[0]].stash[ERROR_SOURCES] = sources
        return out

    def _clean(self, args: list[Tensor]) -> Tensor:
        """The module's output on ``args`` with nothing recorded or edited."""
        with torch._C.DisableTorchFunction(), torch.no_grad():
            out = self.module(*[a.detach() for a in args])
        if not isinstance(out, Tensor):
            raise InterventionError(f"{self!r}: the module returned {type(out).__name__}; a "
                                    "spliced module must return one tensor.")
        return out

    def _finish(self, out: Any, value: Tensor, clean: Tensor | None, site: Site,
                path: Path) -> Any:
        if (self.on == "inputs" and path and isinstance(out, Tensor)
                and out.shape == site.full.shape):
            out = cut(out, path)
            clean = None if clean is None else cut(clean, path)
        if clean is None or not isinstance(out, Tensor):
            return out
        return value.detach() + (out - clean)

    def address(self, site: Site) -> str:
        """``splice.<site>``: the address the module's calls are recorded under."""
        if self.name is not None:
            return f"splice.{self.name}"
        call = site.exit_call
        if call is not None and hasattr(call, "address"):
            return f"splice.{call.address}"
        return f"splice.{getattr(site.op, 'type', 'op')}"

    def addresses(self, site: Any, model_addresses: Iterable[str]) -> set[str]:
        """Every address this splice can record under when applied at ``site`` (a rule's
        site spec), so selectors may name them before the run."""
        known = set(model_addresses)
        bases = [self.name] if self.name is not None else list(_bases(site, known))
        subs = ([n for n, _ in self.module.named_modules() if n]
                if isinstance(self.module, nn.Module) else [])
        out = set()
        for b in bases:
            out.add(f"splice.{b}")
            out.update(f"splice.{b}.{s}" for s in subs)
        return out

    def __repr__(self) -> str:
        m = self.module
        name = type(m).__name__ if isinstance(m, nn.Module) else getattr(m, "__qualname__", m)
        extra = "".join([", error_term=True" if self.error_term else "",
                         f", on={self.on!r}" if self.on != "output" else "",
                         f", name={self.name!r}" if self.name is not None else ""])
        return f"tl.splice_module({name}{extra})"


def _bases(site: Any, known: set[str]) -> Iterable[str]:
    if isinstance(site, str):
        try:
            base, _ = split_call(site)
        except Exception:  # noqa: BLE001 - a label, not an address
            return
        if base in known:
            yield base
    elif isinstance(site, (list, tuple)):
        for s in site:
            yield from _bases(s, known)
    elif isinstance(site, Selector):
        for node in site.walk():
            if isinstance(node, Module):
                yield split_call(node.address)[0]
            elif isinstance(node, Func):
                yield from node.types


def _input_ops(site: Site) -> tuple[int, ...]:
    call = site.exit_call
    if call is not None and hasattr(call, "input_ops"):
        return tuple(call.input_ops)
    return tuple(getattr(site.op, "parent_idx", ()))


def check_error_sources(op: Any, changed: Callable[[int], bool]) -> None:
    """Refuse to replay a splice's error term whose input changed: its clean output is a
    constant of the trace, so the replay would mix the old error with the new value."""
    if op.kind != CONSTANT:
        return
    sources = op.record.stash.get(ERROR_SOURCES)
    if sources and any(changed(s) for s in sources):
        raise ReplayError(
            f"Cannot replay this edit: it changes the value a splice with error_term=True "
            f"read ({describe(op)} holds the module's clean output on the old value). Edit "
            "inside the spliced module, or run the edit live: tl.run(model, x, "
            "intervene=[tl.when(site, tl.splice_module(...)), tl.when(...)]) or "
            "fork.rerun(model, x).")


def splice_module(module: Callable[..., Tensor], error_term: bool = False, *,
                  on: str = "output", name: str | None = None) -> SpliceModule:
    """Replace the value with ``module(value)`` (an SAE spliced into the residual stream).

    ``error_term=True``: add back what the module misses, so the model's output is
    unchanged unless the module is edited (its latents ablated, patched, steered).
    ``on='inputs'``: run the module on the site's inputs instead, replacing the module
    at a module site (a transcoder spliced over an MLP), or the op at an op site.
    ``name``: record under ``splice.<name>`` (default: the site's module address, or the
    op's type). Live, the module's ops are recorded there (see :mod:`._splice`).
    """
    if not callable(module):
        raise ArgumentTypeError(f"tl.splice_module takes a module or function to run on the "
                                f"site's value; got {type(module).__name__}.")
    expect(error_term, bool, "tl.splice_module(..., error_term=)", "True or False")
    if on not in _ON:
        raise ArgumentTypeError(f"tl.splice_module(..., on=) takes 'output' (run the module "
                                f"on the site's value) or 'inputs'; got {on!r}.")
    if name is not None:
        expect(name, str, "tl.splice_module(..., name=)", "a string")
    return SpliceModule(module, error_term, on, name)
