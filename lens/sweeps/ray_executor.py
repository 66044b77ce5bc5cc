"""Spread sweep batches over Ray actors. Ray is imported only here, only when used.

Each actor builds the model once (from ``spec.model_fn``, or a copy shipped through Ray's
object store), traces the sweep's inputs once, then computes the batches it is given.
Ray's own fault tolerance (actor restarts, task retries) re-runs a batch whose worker died,
and each batch's rows are taken exactly once, when its result arrives.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .._optional import require
from .executors import Job
from .runner import Cell, SweepRunner
from .spec import SweepSpec


class _Worker:
    """The actor body: one model and one SweepRunner per worker process."""

    def __init__(self, spec: SweepSpec, model: Any, use_gpu: bool,
                 threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)  # same reduction order as the driver
        if model is None:
            model = spec.model_fn()
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        if self.device != "cpu":
            model = model.to(self.device)
            spec = _spec_to(spec, self.device)
        self.runner = SweepRunner(model, spec)

    def run(self, cells: Sequence[Cell]) -> list[dict[str, Any]]:
        return self.runner.run(cells)

    def pid(self) -> int:
        import os

        return os.getpid()


def _spec_to(spec: SweepSpec, device: str) -> SweepSpec:
    import dataclasses

    import torch

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, (tuple, list)):
            return type(x)(move(v) for v in x)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        return x

    return dataclasses.replace(spec, inputs=move(spec.inputs),
                               input_kwargs=move(spec.input_kwargs))


class RayExecutor:
    """Run a sweep on a Ray cluster (``address='auto'``) or a local one (``None``)."""

    def __init__(self, address: str | None = None, num_gpus_per_worker: float = 0,
                 workers: int | None = None, max_retries: int = 3,
                 in_flight_per_worker: int = 2, threads_per_worker: int | str | None = "driver"
                 ) -> None:
        self.address = address
        self.num_gpus_per_worker = num_gpus_per_worker
        self.workers = workers
        self.max_retries = max_retries
        self.in_flight = in_flight_per_worker
        # Matmul results depend on the thread count; matching the driver's makes a Ray
        # sweep reproduce a local one bit for bit. None leaves Ray's setting (1 per CPU).
        self.threads = threads_per_worker
        self.actors: list[Any] = []

    def _start(self, job: Job) -> list[Any]:
        ray = require("ray")
        if not ray.is_initialized():
            ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False)
        n = self.workers or max(1, int(ray.available_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, num_gpus=self.num_gpus_per_worker,
                            max_restarts=self.max_retries,
                            max_task_retries=self.max_retries)(_Worker)
        model = None if job.spec.model_fn is not None else ray.put(job.model)
        use_gpu = self.num_gpus_per_worker > 0
        import torch

        threads = torch.get_num_threads() if self.threads == "driver" else self.threads
        return [remote.remote(job.spec, model, use_gpu, threads) for _ in range(n)]

    def map(self, job: Job, batches: Sequence[Sequence[Cell]]
            ) -> Iterator[list[dict[str, Any]]]:
        ray = require("ray")
        self.actors = self._start(job)
        todo = list(enumerate(batches))
        pending: dict[Any, int] = {}  # object ref -> actor index
        load = [0] * len(self.actors)
        try:
            while todo or pending:
                for i, actor in enumerate(self.actors):
                    while todo and load[i] < self.in_flight:
                        _, batch = todo.pop(0)
                        pending[actor.run.remote(list(batch))] = i
                        load[i] += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    load[pending.pop(ref)] -= 1
                    yield ray.get(ref)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []

    def __repr__(self) -> str:
        return (f"RayExecutor(address={self.address!r}, "
                f"num_gpus_per_worker={self.num_gpus_per_worker}, workers={self.workers})")


__all__ = ["RayExecutor", "SweepRunner"]
