"""Kill-and-resume harness: jobs that the tests run whole, and a child that runs them and
dies by SIGKILL at a chosen step.

``python -m tests.sweeps._kill JOBS.json`` imports lens once, then forks one grandchild
per job (before any tensor work, so no thread pool is shared across the fork); each
grandchild installs its kill point, runs the job and SIGKILLs itself at that point. A job
whose kill point is never reached exits 3, and the test fails: a kill that did not happen
proves nothing. Prints ``{dir: outcome}`` as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

SITES = ["fc1", "fc2"]


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(x).cumsum(1))))


def toy() -> Toy:
    torch.manual_seed(0)
    return Toy().eval()


def toy_metric(out: torch.Tensor) -> torch.Tensor:
    return out[0, -1, 0] - out[0, -1, 1]


def sweep_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    clean = torch.tensor([[1, 2, 3, 4]])
    return clean, torch.tensor([[1, 7, 3, 4]])


def run_sweep_job(out: str | None, executor: Any = None) -> Any:
    from lens import sweeps

    clean, corrupted = sweep_inputs()
    return sweeps.patching(toy(), clean, corrupted, SITES, metric=toy_metric, batch_size=2,
                           out=out, progress=False, executor=executor or "local")


def extract_data() -> torch.Tensor:
    return torch.arange(32).reshape(8, 4) % 10


def run_extract_job(out: str, batches_per_shard: int = 1, on_batch: Any = None) -> Any:
    from lens.io import extract_dataset

    return extract_dataset(toy(), extract_data(), SITES, output_dir=out, batch_size=2,
                           batches_per_shard=batches_per_shard, on_batch=on_batch,
                           progress=False)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _nth(n: int, real: Any, before: Any) -> Any:
    """Wrap ``real``: at the n-th call, run ``before(*args)`` (which ends in a kill)."""
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            before(*args, **kwargs)
        return real(*args, **kwargs)
    return wrapped


def _install(kill: dict[str, Any]) -> Any:
    """Patch the step named by ``kill``; returns an on_batch hook (or None)."""
    step, n = kill["step"], kill["n"]
    if step == "replace":  # before or after the n-th os.replace (a tmp file renamed)
        real = os.replace
        if kill["when"] == "before":
            os.replace = _nth(n, real, lambda *a, **k: _die())
        else:
            os.replace = _nth(n, real, lambda *a, **k: (real(*a, **k), _die()))
    elif step == "append":  # the n-th rows append, torn after `cut` of its bytes
        from lens.sweeps import store

        real_write = store._write_fully

        def torn(fd: int, blob: bytes) -> None:
            real_write(fd, blob[:int(len(blob) * kill["cut"])])
            _die()
        store._write_fully = _nth(n, real_write, torn)
    elif step == "save":  # the n-th shard's tmp file written half, then killed
        import safetensors.torch as st

        real_save = st.save_file

        def half(tensors: Any, path: str, metadata: Any = None) -> None:
            real_save(tensors, path, metadata=metadata)
            os.truncate(path, os.path.getsize(path) // 2)
            _die()
        st.save_file = _nth(n, real_save, half)
    elif step == "batch":
        return lambda b, acts: _die() if b == n else None
    return None


def _child(job: dict[str, Any]) -> None:
    hook = _install(job["kill"])
    if job["kind"] == "sweep":
        run_sweep_job(job["dir"])
    else:
        run_extract_job(job["dir"], job.get("batches_per_shard", 1), hook)


def main(path: str) -> None:
    # Imported once, before the forks (imports only: no tensor work, so no thread pool
    # exists yet).
    import tqdm.auto  # noqa: F401

    import lens  # noqa: F401

    outcome = {}
    for job in json.loads(Path(path).read_text()):
        pid = os.fork()
        if pid == 0:
            try:
                _child(job)
            finally:
                os._exit(3)  # reached only if the kill point was never hit
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        outcome[job["dir"]] = "killed" if killed else f"status {status}"
    print(json.dumps(outcome))


if __name__ == "__main__":  # run the imported module's main: names must not be __main__.*
    from tests.sweeps._kill import main as imported_main

    imported_main(sys.argv[1])
