"""Executors: one small interface — take batches of cells, give back rows as they finish.

``LocalExecutor`` (the default) computes in this process with a progress bar;
``RayExecutor`` (in ``ray_executor.py``) spreads batches over Ray actors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from .runner import Cell, SweepRunner
from .spec import SweepSpec


class Job:
    """What an executor needs: the spec, and the model (or how to build it)."""

    def __init__(self, spec: SweepSpec, model: Any, runner: SweepRunner | None = None) -> None:
        self.spec = spec
        self.model = model
        self._runner = runner

    def local_runner(self) -> SweepRunner:
        if self._runner is None:
            self._runner = SweepRunner(self.model, self.spec)
        return self._runner


class Executor(Protocol):
    def map(self, job: Job, batches: Sequence[Sequence[Cell]]
            ) -> Iterator[list[dict[str, Any]]]:
        """Rows of each batch, yielded as each batch finishes (any order)."""
        ...


class LocalExecutor:
    """Runs every batch in this process, in order, with a tqdm progress bar."""

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def map(self, job: Job, batches: Sequence[Sequence[Cell]]
            ) -> Iterator[list[dict[str, Any]]]:
        from tqdm.auto import tqdm

        runner = job.local_runner()
        total = sum(len(b) for b in batches)
        with tqdm(total=total, desc=f"{job.spec.kind} sweep", unit="cell",
                  disable=not self.progress) as bar:
            for batch in batches:
                rows = runner.run(batch)
                bar.update(len(batch))
                yield rows

    def __repr__(self) -> str:
        return "LocalExecutor()"


def resolve_executor(executor: Any) -> Executor:
    if executor is None or executor == "local":
        return LocalExecutor()
    if executor == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor()
    if hasattr(executor, "map"):
        return executor  # type: ignore[no-any-return]
    raise ValueError(f"executor={executor!r}: use 'local', 'ray', tl.RayExecutor(...) or an "
                     "object with a map(job, batches) method.")
