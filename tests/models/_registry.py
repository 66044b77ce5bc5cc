"""Registry for the test model zoo (re-exported by ``tests.models``).

Kept in its own module so the topical model files can import ``register``
without a circular import through the package ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

BuildFn = Callable[[], "tuple[nn.Module, tuple, dict]"]


@dataclass(frozen=True)
class ZooCase:
    """One model in the zoo.

    ``build()`` seeds ``torch.manual_seed`` itself, so two calls return
    identical weights and identical inputs.  The model is in eval mode.
    Cases tagged ``'random'`` call the RNG inside ``forward``: re-seed before
    each forward to compare runs.
    """

    name: str
    build: BuildFn
    tags: frozenset[str]

    def has(self, *tags: str) -> bool:
        return all(t in self.tags for t in tags)


ZOO: dict[str, ZooCase] = {}


def register(name: str, *tags: str) -> Callable[[BuildFn], BuildFn]:
    """Decorator: register a build function under ``name`` with ``tags``."""

    def deco(fn: BuildFn) -> BuildFn:
        if name in ZOO:
            raise ValueError(f"duplicate zoo case {name!r}")
        ZOO[name] = ZooCase(name=name, build=fn, tags=frozenset(tags))
        return fn

    return deco


def get(name: str) -> ZooCase:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"no zoo case {name!r}; known: {sorted(ZOO)}") from None


def cases(
    include: Iterable[str] = (),
    exclude: Iterable[str] = ("bench",),
) -> list[ZooCase]:
    """Cases having every tag in ``include`` and none in ``exclude``, by name."""
    inc, exc = frozenset(include), frozenset(exclude)
    return [c for _, c in sorted(ZOO.items()) if inc <= c.tags and not (exc & c.tags)]


def hf_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True
