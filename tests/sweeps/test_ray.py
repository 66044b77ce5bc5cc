"""The Ray executor on a local 2-CPU cluster gives exactly the local results."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from lens import sweeps
from tests.sweeps.conftest import BLOCKS, gpt2_small_config_model, logit_diff

ray = pytest.importorskip("ray")
ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    yield
    ray.shutdown()


def _inputs():
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50, (1, 6), generator=g)
    corrupted = clean.clone()
    corrupted[0, 2] = (clean[0, 2] + 7) % 50
    return clean, corrupted


def _local():
    pytest.importorskip("transformers")
    clean, corrupted = _inputs()
    return sweeps.patching(None, clean, corrupted, BLOCKS, metric=logit_diff, batch_size=2,
                           model_fn=gpt2_small_config_model, progress=False)


def test_ray_executor_equals_local(cluster):
    local = _local()
    clean, corrupted = _inputs()
    remote = sweeps.patching(None, clean, corrupted, BLOCKS, metric=logit_diff, batch_size=2,
                             model_fn=gpt2_small_config_model,
                             executor=sweeps.RayExecutor(workers=2))
    assert remote.rows == local.rows


class _KillOnce(sweeps.RayExecutor):
    """Kills the first worker's process right after the first batch comes back."""

    def map(self, job, batches):
        killed = False
        for rows in super().map(job, batches):
            yield rows
            if not killed:
                pid = ray.get(self.actors[0].pid.remote())
                os.kill(pid, signal.SIGKILL)
                killed = True


def test_killing_a_worker_still_yields_every_cell_once(cluster, tmp_path):
    local = _local()
    clean, corrupted = _inputs()
    out = tmp_path / "sweep"
    res = sweeps.patching(None, clean, corrupted, BLOCKS, metric=logit_diff, batch_size=2,
                          model_fn=gpt2_small_config_model, out=str(out),
                          executor=_KillOnce(workers=2))
    assert res.rows == local.rows
    stored = sweeps.ResultStore(out, {}, res.digest).load()
    keys = [(r["site"], r["position"]) for r in stored]
    assert len(keys) == len(set(keys)) == len(local.rows)
