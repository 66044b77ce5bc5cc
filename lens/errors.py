"""The lens error tree.

Every error lens raises is a :class:`LensError`; each concrete class also subclasses the
builtin a caller would naturally catch (``KeyError`` for lookups, ``ValueError`` for bad
arguments, ...), so ``except KeyError`` keeps working for code that predates lens.
Messages say what was attempted, what was seen, and what to do.
"""

from __future__ import annotations


class LensError(Exception):
    """Base class of every error raised by lens."""


class LookupKeyError(LensError, KeyError):
    """A label, module address or ordinal that names no op of the trace."""

    def __str__(self) -> str:  # KeyError repr()s its message; show it plainly instead
        return str(self.args[0]) if self.args else ""


class SelectorError(LensError, ValueError):
    """A selector that cannot be built or names something the model does not have."""


class CaptureError(LensError, RuntimeError):
    """Tracing could not run: unsupported model or inputs that do not fit ``forward``."""


class ArgumentTypeError(LensError, TypeError):
    """A public function was given an argument of the wrong type; the message says what
    it expected."""


def expect(value: object, types: type | tuple[type, ...], what: str, expected: str) -> None:
    """Raise :class:`ArgumentTypeError` unless ``value`` is one of ``types`` (bools are
    not numbers here: ``True`` is refused where an int or float is expected)."""
    kinds = types if isinstance(types, tuple) else (types,)
    refused_bool = isinstance(value, bool) and bool not in kinds
    if refused_bool or not isinstance(value, kinds):
        raise ArgumentTypeError(f"{what} takes {expected}; got {value!r} "
                                f"({type(value).__name__}).")


class ModelTypeError(LensError, TypeError):
    """The object given as a model is not something lens can trace."""


class PayloadError(LensError, RuntimeError):
    """An activation was asked for that was not saved, or is ambiguous (several passes)."""


class ReplayError(LensError, RuntimeError):
    """Re-executing a recorded op failed; the message names the op and its capture site."""


class InterventionError(LensError, ValueError):
    """An intervention could not be applied (wrong shape/dtype/device, no site matched)."""


class LoadError(LensError, ValueError):
    """A saved trace or dataset could not be read safely."""


class SaveError(LensError, ValueError):
    """A trace could not be saved there: a wrong argument, or a file or folder that is not
    a lens trace in the way (``overwrite=True`` writes over it)."""


class MissingDependencyError(LensError, ImportError):
    """An optional dependency is needed; the message names the pip extra to install."""


class DrawError(LensError, ValueError):
    """A graph could not be drawn: bad drawing options, or Graphviz failed or timed out."""


class GraphMismatchError(LensError, ValueError):
    """Bundle members are traces of different graphs."""


class FacetError(LensError, RuntimeError):
    """A facet could not be reconstructed: the values lens recomputed from the recorded
    inputs do not reproduce what the model computed (an option lens does not model)."""


class InterventionWarning(UserWarning):
    """A rule given ``strict=False`` matched no op."""


class SpecMismatchError(LensError, ValueError):
    """The output directory holds results of a different sweep."""


class FolderBusyError(LensError, RuntimeError):
    """Another live process (or another run in this one) is writing into this folder."""


def close_matches(word: str, candidates: object, n: int = 5) -> list[str]:
    """The candidates closest to ``word``, for "did you mean" hints in error messages."""
    import difflib

    pool = [str(c) for c in candidates]  # type: ignore[attr-defined]
    hits = difflib.get_close_matches(str(word), pool, n=n, cutoff=0.5)
    if not hits:
        hits = [c for c in pool if str(word) in c][:n]
    return hits
